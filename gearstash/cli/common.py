"""What the ``gearstash`` commands share: exit codes, the error-to-exit-code group, the
``--server``/``--store`` options, settings resolution and the text form of a job."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import click

from gearstash import config
from gearstash.cli.visible import visible
from gearstash.client.client import Client, JobView
from gearstash.errors import GearstashError, JobNotFound, WaitTimeout
from gearstash.spine.manager import open_store
from gearstash.store.contract import Store

EXIT_ERROR, EXIT_FAILED, EXIT_WAIT, EXIT_SPOOLED = 1, 3, 4, 5


class ExitCodeGroup(click.Group):
    """Turns every GearstashError into a one-line message and exit code 1 (no traceback)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (JobNotFound, WaitTimeout) as exc:
            click.echo(f"gearstash: {visible(str(exc))}", err=True)
            ctx.exit(EXIT_WAIT)
        except GearstashError as exc:
            click.echo(f"gearstash: error: {visible(str(exc))}", err=True)
            ctx.exit(EXIT_ERROR)


def server_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--server",
        "-s",
        "servers",
        multiple=True,
        metavar="HOST[:PORT]",
        help="Job server (repeatable; default $GEARSTASH_SERVERS or 127.0.0.1:4730).",
    )(f)


def _warn_secret_on_argv(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """Warn (still work) when the --store URL holds a password: argv is public on a host."""
    if value and config.url_has_secret(value):
        click.echo(
            "gearstash: warning: the --store URL holds a password, and every user of this host "
            "can read a process's command line (ps, /proc/PID/cmdline); set $GEARSTASH_STORE, "
            "$GEARSTASH_STORE_FILE or `store` in the config file instead",
            err=True,
        )
    return value


def store_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--store",
        metavar="URL",
        callback=_warn_secret_on_argv,
        help="Store URL (default $GEARSTASH_STORE, $GEARSTASH_STORE_FILE, the config file, or the "
        "SQLite default store). Never put a password here: use the environment or config file.",
    )(f)


def capture_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--lease``, ``--spool``, ``--spool-max-bytes``, ``--capture-workload`` and
    ``--workload-max-bytes``: what the worker and the proxy share."""
    options = [
        click.option(
            "--lease",
            type=click.FloatRange(min=0),
            default=60.0,
            show_default=True,
            help="Seconds a running job's lease lasts (renewed every third of it while its "
            "worker is alive); a job whose worker died reads 'lost' once it ran out. 0: no lease.",
        ),
        click.option(
            "--spool",
            type=click.Path(file_okay=False),
            default=None,
            help="Folder where events wait while the store is down (default $GEARSTASH_SPOOL, "
            "the config file's spool, else spool/<hash of the store URL> in the gearstash home).",
        ),
        click.option(
            "--spool-max-bytes",
            type=click.IntRange(min=1),
            default=config.DEFAULT_SPOOL_MAX_BYTES,
            show_default=True,
            help="Bound of the spool; beyond it new events are lost (logged).",
        ),
        click.option(
            "--capture-workload",
            is_flag=True,
            help="Store each job's workload in its record (shown by the web face, needed to "
            "resubmit a failed job). Off by default: workloads may hold what should not be kept.",
        ),
        click.option(
            "--workload-max-bytes",
            type=click.IntRange(min=0),
            default=config.DEFAULT_WORKLOAD_MAX_BYTES,
            show_default=True,
            help="With --capture-workload: the largest workload stored; a bigger one is not "
            "stored at all (never truncated).",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _servers(values: Sequence[str]) -> list[str] | None:
    return list(values) or None


def settings_for(servers: Sequence[str] = (), store: str | None = None) -> config.Settings:
    """Options > environment > config file (``--config`` of the group) > defaults."""
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx is not None else None
    path = obj.get("config") if isinstance(obj, dict) else None
    return config.resolve(store=store, servers=_servers(servers), config=path)


def client_for(
    servers: Sequence[str], store: str | None, timeout: float = 30.0, *, create: bool = False
) -> Client:
    """A :class:`Client` on the configured job servers and store. Only ``create=True`` (the
    commands that submit) may create the store; the others find a missing one an error."""
    settings = settings_for(servers, store)
    return Client(settings.servers, store=settings.store_url, timeout=timeout, create_store=create)


def store_for(store: str | None) -> Store:
    """The configured store alone, for commands that need no job server (close it after use);
    never created: a missing store is a StoreError."""
    return open_store(settings_for(store=store).store_url, create=False)


def _text(value: bytes | None) -> str:
    if value is None:
        return "-"
    return visible(value)


def describe(view: JobView) -> str:
    """A few human-readable lines about one job; job output with its control characters escaped
    (:func:`~gearstash.cli.visible.visible`), one line per field."""
    lines = [f"{visible(str(view.ref))}  {view.state.value}"]
    record = view.record
    if view.denominator:
        lines.append(f"  progress  {view.numerator}/{view.denominator}")
    if record is not None:
        lines.append(f"  function  {_text(record.function)}  attempt {record.attempt}")
        if record.data:
            lines.append("  data      " + " | ".join(_text(c) for c in record.data))
        for warning in record.warnings:
            lines.append(f"  warning   {_text(warning)}")
        if record.result is not None:
            lines.append(f"  result    {_text(record.result)}")
        if record.error is not None:
            lines.append(f"  error     {record.error.kind}: {visible(record.error.message)}")
    if view.status is None:
        lines.append("  (job server unreachable: state from the store only)")
    return "\n".join(lines)
