"""``gearstash token sign|fetch``: opaque job tokens for browsers."""

from __future__ import annotations

import json

import click

from gearstash.cli.common import (
    client_for,
    describe,
    server_option,
    store_option,
)
from gearstash.client.tokens import TokenSigner
from gearstash.errors import ConfigError
from gearstash.model.records import JobRef


@click.group()
def token() -> None:
    """Opaque, signed job tokens for browsers (the secret comes from $GEARSTASH_TOKEN_SECRET,
    $GEARSTASH_TOKEN_SECRET_FILE or token_secret in the config file — never from an option)."""


def _signer() -> TokenSigner:
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx is not None else None
    return TokenSigner.from_config(config=obj.get("config") if isinstance(obj, dict) else None)


@token.command("sign")
@click.option(
    "--ttl", type=click.FloatRange(min=0, min_open=True), default=3600.0, show_default=True,
    help="Seconds the token stays valid.",
)  # fmt: skip
@click.argument("ref")
def token_sign(ttl: float, ref: str) -> None:
    """Print a token for the job REF (a job reference, as `submit --background` prints it).

    REF must be full (HANDLE@SERVER#UNIQUE): a bare handle, or one without its unique, would
    name whatever job gets that handle next (gearmand reuses handles after a restart).
    """
    job = JobRef.parse(ref)
    if not (job.handle and job.server and job.unique is not None):
        raise ConfigError(
            f"token sign needs a full job reference, HANDLE@SERVER#UNIQUE as `submit "
            f"--background` prints it (`fetch --json` shows the ref), not {ref!r}: it could "
            "name another job later"
        )
    click.echo(_signer().sign(job, ttl=ttl))


@token.command("fetch")
@server_option
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print the job as one JSON object.")
@click.argument("token_text", metavar="TOKEN")
def token_fetch(
    servers: tuple[str, ...], store: str | None, as_json: bool, token_text: str
) -> None:
    """Verify TOKEN, then show its job like `fetch` (exit 1 if the token is refused)."""
    signer = _signer()
    ref = signer.verify(token_text)  # before any server or store is asked anything
    with client_for(servers, store) as client:
        view = client.fetch(ref)
    if as_json:
        click.echo(json.dumps(view.to_json(), ensure_ascii=False))
    else:
        click.echo(describe(view))
