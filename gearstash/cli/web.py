"""``gearstash web``: serve the web face with uvicorn; ``gearstash web hash-password``.

Secrets never come from options: the store URL may (it warns, like every command), the token
secret and the admin credential only from the environment or the config file
(:mod:`gearstash.config`).
"""

from __future__ import annotations

import sys

import click

from gearstash.cli.common import server_option, settings_for, store_option
from gearstash.errors import ConfigError
from gearstash.transport.connection import listening_socket

DEFAULT_LISTEN = "127.0.0.1:8470"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise click.BadParameter(f"expected HOST:PORT, like {DEFAULT_LISTEN}: {text!r}")
    return host.strip("[]"), int(port)


@click.group(invoke_without_command=True)
@click.option(
    "--listen",
    default=DEFAULT_LISTEN,
    show_default=True,
    metavar="HOST:PORT",
    help="Where to listen (loopback unless told otherwise).",
)
@click.option(
    "--public", is_flag=True, help="Let non-loopback clients list and read jobs without logging in."
)
@click.option("--allow-submit", is_flag=True, help="Let a logged-in admin submit jobs.")
@server_option
@store_option
@click.pass_context
def web(
    ctx: click.Context,
    listen: str,
    public: bool,
    allow_submit: bool,
    servers: tuple[str, ...],
    store: str | None,
) -> None:
    """Serve the web face (pages, JSON API, events, metrics); needs gearstash[web].

    The admin credential comes from $GEARSTASH_WEB_ADMIN, $GEARSTASH_WEB_ADMIN_FILE or web_admin
    in the config file (without one the server is read-only); the token secret as for `token`.
    """
    if ctx.invoked_subcommand is not None:
        return
    host, port = _listen(listen)
    try:
        import uvicorn

        from gearstash.web.app import create_app
    except ImportError as exc:  # pragma: no cover - the extra is missing
        raise ConfigError(
            f"gearstash web needs the web extra (pip install 'gearstash[web]'): {exc}"
        ) from None
    root = ctx.find_root().obj or {}
    settings = settings_for(servers, store)
    app = create_app(
        store=settings.store_url,
        servers=settings.servers,
        public=public,
        allow_submit=allow_submit,
        config_file=root.get("config"),
    )
    if allow_submit and app.state.face.admin is None:
        click.echo(
            "gearstash: warning: --allow-submit does nothing without an admin credential "
            "($GEARSTASH_WEB_ADMIN, $GEARSTASH_WEB_ADMIN_FILE or web_admin in the config file): "
            "only a logged-in admin may submit",
            err=True,
        )
    if host not in LOOPBACK_HOSTS and not public and app.state.face.admin is None:
        click.echo(
            f"listening on {host}: other hosts get 403 (read-only, no admin credential, no --public)",
            err=True,
        )
    # bound here, not by uvicorn: a taken port is one `gearstash: error:` line and exit 1
    sock = listening_socket(host, port)
    face = app.state.face
    click.echo(
        f"gearstash web: {_url(host, port)}; store {face.store.url}; job servers "
        + ", ".join(face.servers)
        + ("" if face.admin is not None else "; read-only (no admin credential)"),
        err=True,
    )
    sys.setswitchinterval(0.0005)  # store calls on worker threads get the GIL back sooner
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", proxy_headers=False)
    )
    with sock:
        server.run(sockets=[sock])
    if not server.started:
        raise ConfigError(f"the web server on {_url(host, port)} did not start (see above)")


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


@web.command("hash-password")
def hash_password_command() -> None:
    """Read a password from stdin (or a prompt) and print its hash for web_admin."""
    from gearstash.web.security import hash_password

    if sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    click.echo(hash_password(password))
