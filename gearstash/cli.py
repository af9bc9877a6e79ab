"""The ``gearstash`` command line (click; rich for progress).

Every command takes ``--server`` (repeatable; default ``$GEARSTASH_SERVERS`` or ``127.0.0.1:4730``)
and ``--store`` (default ``$GEARSTASH_STORE`` or the SQLite default store), so no secret has to go on
the command line. Exit codes: 0 success, 1 gearstash error (unreachable server or store, bad input),
2 usage, 3 the job failed, expired or was lost, 4 wait timed out or the job is unknown,
5 spooled batches wait with no worker (``spool status``).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from gearstash import config
from gearstash.client import Client, JobView
from gearstash.errors import ConfigError, GearstashError, JobNotFound, WaitTimeout
from gearstash.records import JobRef, State
from gearstash.store import redact_url
from gearstash.tokens import TokenSigner

EXIT_ERROR, EXIT_FAILED, EXIT_WAIT, EXIT_SPOOLED = 1, 3, 4, 5


class _Group(click.Group):
    """Turns every GearstashError into a one-line message and exit code 1 (no traceback)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (JobNotFound, WaitTimeout) as exc:
            click.echo(f"gearstash: {exc}", err=True)
            ctx.exit(EXIT_WAIT)
        except GearstashError as exc:
            click.echo(f"gearstash: error: {exc}", err=True)
            ctx.exit(EXIT_ERROR)


def _server_option(f: Callable[..., Any]) -> Callable[..., Any]:
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


def _store_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--store",
        metavar="URL",
        callback=_warn_secret_on_argv,
        help="Store URL (default $GEARSTASH_STORE, $GEARSTASH_STORE_FILE, the config file, or the "
        "SQLite default store). Never put a password here: use the environment or config file.",
    )(f)


def _servers(values: Sequence[str]) -> list[str] | None:
    return list(values) or None


def _settings(servers: Sequence[str] = (), store: str | None = None) -> config.Settings:
    """Options > environment > config file (``--config`` of the group) > defaults."""
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx is not None else None
    path = obj.get("config") if isinstance(obj, dict) else None
    return config.resolve(store=store, servers=_servers(servers), config=path)


def _client(servers: Sequence[str], store: str | None, timeout: float = 30.0) -> Client:
    settings = _settings(servers, store)
    return Client(settings.servers, store=settings.store_url, timeout=timeout)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gearstash")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.option(
    "--config",
    "config_file",
    metavar="FILE",
    default=None,
    help="TOML config file (default $GEARSTASH_CONFIG or "
    "$XDG_CONFIG_HOME/gearstash/config.toml): store, servers, token_secret, spool.",
)
@click.pass_context
def main(ctx: click.Context, verbose: int, config_file: str | None) -> None:
    """Keep what Gearman background jobs say, and fetch it back by job handle."""
    ctx.obj = {"config": config_file}
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# ---------------------------------------------------------------- worker


def load_function(spec: str) -> tuple[str, Callable[..., Any]]:
    """``module:function`` → (function name, callable); the current directory is importable."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"expected MODULE:FUNCTION, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc}") from exc
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ConfigError(f"{module_name!r} has no attribute {attr!r}")
    if not callable(target):
        raise ConfigError(f"{spec} is not callable")
    return attr.rpartition(".")[2], target


@main.command()
@_server_option
@_store_option
@click.option("--concurrency", "-c", default=1, show_default=True, help="Jobs run at once.")
@click.option(
    "--name",
    "-n",
    "names",
    multiple=True,
    metavar="FUNCTION=NAME",
    help="Serve the Python function FUNCTION under the Gearman name NAME (repeatable).",
)
@click.option("--max-jobs", type=int, default=None, help="Stop after this many jobs.")
@click.option(
    "--lease",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Seconds a running job's lease lasts (renewed every third of it); a job whose worker "
    "died reads 'lost' once it ran out. 0: no lease.",
)
@click.option(
    "--spool",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder where events wait while the store is down (default $GEARSTASH_SPOOL, the "
    "config file's spool, else spool/<hash of the store URL> in the gearstash home).",
)
@click.option(
    "--spool-max-bytes",
    type=click.IntRange(min=1),
    default=1 << 30,
    show_default=True,
    help="Bound of the spool; beyond it new events are lost (logged).",
)
@click.option(
    "--on-store-down",
    type=click.Choice(["spool", "fail"]),
    default="spool",
    show_default=True,
    help="spool: jobs go on, events wait on disk and are replayed in order; "
    "fail: jobs fail (WORK_FAIL) while the store is down.",
)
@click.argument("functions", nargs=-1, required=True, metavar="MODULE:FUNCTION...")
def worker(
    servers: tuple[str, ...],
    store: str | None,
    concurrency: int,
    names: tuple[str, ...],
    max_jobs: int | None,
    lease: float,
    spool: str | None,
    spool_max_bytes: int,
    on_store_down: str,
    functions: tuple[str, ...],
) -> None:
    """Serve MODULE:FUNCTION... and capture every job event into the store.

    Each function is served under its own name and receives the job (``job.workload``,
    ``job.send_data``, ``job.send_status``, ``job.send_warning``); its return value is the result.
    Stops cleanly on SIGTERM/SIGINT after the job in hand.
    """
    from gearstash.worker import Worker

    renames: dict[str, str] = {}
    for item in names:
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            raise click.BadParameter(f"expected FUNCTION=NAME, got {item!r}", param_hint="--name")
        renames[old] = new
    settings = _settings(servers, store)
    w = Worker(
        settings.servers,
        store=settings.store_url,
        concurrency=concurrency,
        lease=lease,
        spool=spool or settings.spool,
        spool_max_bytes=spool_max_bytes,
        on_store_down=on_store_down,
    )
    for spec in functions:
        name, fn = load_function(spec)
        gearman_name = renames.get(spec, renames.get(name, name))
        w.register(gearman_name, fn)
    click.echo(
        f"gearstash worker: serving {', '.join(w.functions)} on {', '.join(w.servers)}; "
        f"store {w.store.url}"
        + (f"; spool {w.store.spool_dir}" if hasattr(w.store, "spool_dir") else "")
        + ("; jobs fail while the store is down" if on_store_down == "fail" else ""),
        err=True,
    )
    try:
        w.work(max_jobs=max_jobs)
    finally:
        w.close()


# ---------------------------------------------------------------- submit


@main.command()
@_server_option
@_store_option
@click.option(
    "--background", "-b", is_flag=True, help="Submit in the background; print the job ref."
)
@click.option("--unique", "-u", default=None, help="Unique id (at most 63 bytes; default a UUID).")
@click.option(
    "--priority", type=click.Choice(["normal", "high", "low"]), default="normal", show_default=True
)
@click.argument("function")
@click.argument("payload", required=False, default=None)
def submit(
    servers: tuple[str, ...],
    store: str | None,
    background: bool,
    unique: str | None,
    priority: str,
    function: str,
    payload: str | None,
) -> None:
    """Submit FUNCTION with PAYLOAD ("-" or nothing: read standard input).

    Background: prints the job reference (HANDLE@SERVER#UNIQUE), which every other command accepts.
    Foreground: streams the job's data to standard output, then the result; exits 3 if it failed.
    """
    data = sys.stdin.buffer.read() if payload in (None, "-") else os.fsencode(payload or "")
    with _client(servers, store) as client:
        if background:
            ref = client.submit_background(function, data, unique=unique, priority=priority)
            click.echo(str(ref))
            return
        out = sys.stdout.buffer

        def on_data(chunk: bytes) -> None:
            out.write(chunk)
            out.flush()

        view = client.submit(
            function,
            data,
            unique=unique,
            priority=priority,
            on_data=on_data,
            on_warning=lambda w: click.echo(f"warning: {w.decode('utf-8', 'replace')}", err=True),
        )
        if view.state is State.COMPLETE:
            out.write(view.result or b"")
            out.write(b"\n")
            out.flush()
            return
        error = view.record.error if view.record else None
        message = error.message if error is not None else ""
        if not message:
            # WORK_FAIL carries no reason on the wire; the capturing worker stored it.
            with contextlib.suppress(GearstashError):
                stored = client.fetch(view.ref).record
                if stored is not None and stored.error is not None:
                    message = stored.error.message
        click.echo(f"job failed: {message or 'WORK_FAIL'}", err=True)
        sys.exit(EXIT_FAILED)


# ---------------------------------------------------------------- status / fetch


@main.command()
@_server_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per job.")
@click.argument("handles", nargs=-1, required=True)
def status(servers: tuple[str, ...], as_json: bool, handles: tuple[str, ...]) -> None:
    """The job server's live status of each HANDLE (a job ref or a bare handle).

    gearmand forgets a job when it ends: use ``fetch`` for the stored outcome.
    """
    with Client(_settings(servers).servers, store="null://") as client:
        for text in handles:
            ref = JobRef.parse(text)
            st = client.status(ref)
            if as_json:
                click.echo(
                    json.dumps(
                        {
                            "ref": str(ref),
                            "server": st.server,
                            "known": st.known,
                            "running": st.running,
                            "numerator": st.numerator,
                            "denominator": st.denominator,
                        }
                    )
                )
            else:
                pct = f" {st.percent:.0f}%" if st.percent is not None else ""
                click.echo(
                    f"{ref}\tknown={int(st.known)} running={int(st.running)} "
                    f"{st.numerator}/{st.denominator}{pct}"
                )


def _text(value: bytes | None) -> str:
    if value is None:
        return "-"
    return value.decode("utf-8", "backslashreplace")


def describe(view: JobView) -> str:
    """A few human-readable lines about one job."""
    lines = [f"{view.ref}  {view.state.value}"]
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
            lines.append(f"  error     {record.error.kind}: {record.error.message}")
    if view.status is None:
        lines.append("  (job server unreachable: state from the store only)")
    return "\n".join(lines)


@main.command()
@_server_option
@_store_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per job and line.")
@click.argument("handles", nargs=-1, required=True)
def fetch(
    servers: tuple[str, ...], store: str | None, as_json: bool, handles: tuple[str, ...]
) -> None:
    """Stored data, result and error of each HANDLE, merged with the live status.

    With --json, prints the documented record plus the live status, one job per line.
    """
    refs = [JobRef.parse(h) for h in handles]
    with _client(servers, store) as client:
        for view in client.fetch_many(refs):
            if as_json:
                click.echo(json.dumps(view.to_json(), ensure_ascii=False))
            else:
                click.echo(describe(view))


@main.command()
@_server_option
@_store_option
@click.option("--timeout", "-t", type=float, default=None, help="Give up after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the final record as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.argument("handle")
def wait(
    servers: tuple[str, ...],
    store: str | None,
    timeout: float | None,
    as_json: bool,
    quiet: bool,
    handle: str,
) -> None:
    """Wait for HANDLE to finish, with a progress bar from its numerator/denominator.

    Exits 0 when it completed, 3 when it failed, 4 on timeout or when the job is unknown.
    """
    from gearstash.progress import ProgressDisplay

    ref = JobRef.parse(handle)
    with _client(servers, store) as client, ProgressDisplay(enabled=not quiet) as display:
        task = display.add(str(ref.handle.decode("utf-8", "replace")))
        view = client.wait(ref, timeout, on_progress=lambda v: display.update(task, v))
    if as_json:
        click.echo(json.dumps(view.to_json(), ensure_ascii=False))
    else:
        click.echo(describe(view))
    if view.state is not State.COMPLETE:
        sys.exit(EXIT_FAILED)


@main.command()
@_server_option
@_store_option
@click.option("--timeout", "-t", type=float, default=None, help="Give up after this many seconds.")
@click.option("--after", type=int, default=0, show_default=True, help="Start at this chunk number.")
@click.argument("handle")
def follow(
    servers: tuple[str, ...], store: str | None, timeout: float | None, after: int, handle: str
) -> None:
    """Print HANDLE's data chunks as they arrive, like ``tail -f``, until the job ends.

    Chunks go to standard output as raw bytes; progress and the final state go to standard error.
    Uses push where the store has it. Exits 0 when the job completed, 3 when it failed, 4 on
    timeout or when the job is unknown.
    """
    ref = JobRef.parse(handle)
    out = sys.stdout.buffer
    state = State.UNKNOWN
    with _client(servers, store) as client:
        for update in client.follow(ref, after=after, timeout=timeout):
            if update.restarted:
                click.echo("-- a new attempt started; its data follows --", err=True)
            for chunk in update.chunks:
                out.write(chunk)
                if not chunk.endswith(b"\n"):
                    out.write(b"\n")
            out.flush()
            state = update.view.state
        click.echo(f"-- {ref.handle.decode('utf-8', 'replace')} {state.value} --", err=True)
    if state is not State.COMPLETE:
        sys.exit(EXIT_FAILED)


@main.command()
@_store_option
@click.argument("handles", nargs=-1, required=True)
def forget(store: str | None, handles: tuple[str, ...]) -> None:
    """Delete the stored records of each HANDLE (every record a bare handle matches)."""
    with Client(["127.0.0.1"], store=_settings(store=store).store_url) as client:
        removed = client.forget([JobRef.parse(h) for h in handles])
    click.echo(f"forgot {removed} record(s)")


@main.command()
@_store_option
def purge(store: str | None) -> None:
    """Remove expired records from the store now (stores also purge by themselves)."""
    from gearstash.store import purge as purge_store

    with Client(["127.0.0.1"], store=_settings(store=store).store_url) as client:
        removed = purge_store(client.store)
    click.echo(f"purged {removed} expired record(s) from {client.store.url}")


# ---------------------------------------------------------------- spool


def _spool_dir(store: str | None, spool: str | None) -> tuple[config.Settings, Path]:
    from gearstash.spool import default_spool_dir

    settings = _settings(store=store)
    folder = spool or os.environ.get("GEARSTASH_SPOOL") or settings.spool
    return settings, Path(folder) if folder else default_spool_dir(settings.store_url)


def _spool_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--spool",
        metavar="DIR",
        help="Spool folder (default: as the worker finds it: $GEARSTASH_SPOOL, the config "
        "file's spool, else spool/<hash of the store URL> in the gearstash home).",
    )(f)


@main.group()
def spool() -> None:
    """Look at or drain a worker spool (events kept on disk while the store was down)."""


@spool.command("status")
@_store_option
@_spool_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def spool_status(store: str | None, spool: str | None, as_json: bool) -> None:
    """List the spool files: batches waiting, bytes, and whether a running worker holds them.

    Exits 5 when batches wait in files no running worker holds (start a worker on this spool,
    or run ``gearstash spool replay``), else 0.
    """
    from gearstash.spoolfile import SpoolFile, spool_files

    _, folder = _spool_dir(store, spool)
    rows: list[dict[str, Any]] = []
    for path in spool_files(folder) if folder.is_dir() else []:
        held = SpoolFile.adopt(path)
        if held is None:
            rows.append({"file": str(path), "bytes": path.stat().st_size, "held_by_worker": True})
            continue
        rows.append(
            {
                "file": str(path),
                "bytes": held.size,
                "batches": held.pending,
                "held_by_worker": False,
            }
        )
        held.close()
    orphaned = sum(r.get("batches", 0) for r in rows)
    if as_json:
        click.echo(json.dumps({"spool": str(folder), "files": rows, "orphaned_batches": orphaned}))
    else:
        click.echo(f"spool {folder}: {len(rows)} file(s)")
        for row in rows:
            if row["held_by_worker"]:
                click.echo(f"  {row['file']}  {row['bytes']} bytes  (a running worker holds it)")
            else:
                click.echo(
                    f"  {row['file']}  {row['bytes']} bytes  {row['batches']} batch(es) waiting"
                )
    if orphaned:
        sys.exit(EXIT_SPOOLED)


@spool.command("replay")
@_store_option
@_spool_option
@click.option(
    "--timeout", type=float, default=60.0, show_default=True, help="Seconds to keep trying."
)
def spool_replay(store: str | None, spool: str | None, timeout: float) -> None:
    """Write the batches of spool files no running worker holds into the store, in order.

    For a spool left behind by a worker that will not run again. Exits 0 when everything landed,
    1 when some is still spooled after TIMEOUT seconds (it stays on disk).
    """
    import time

    from gearstash.plugins import open_store
    from gearstash.spool import SpoolingStore

    settings, folder = _spool_dir(store, spool)
    if not folder.is_dir():
        click.echo(f"spool {folder}: nothing to replay")
        return
    spooling = SpoolingStore(open_store(settings.store_url), folder, close_timeout=1.0)
    try:
        waiting = spooling.spooled
        deadline = time.monotonic() + timeout
        while spooling.spooled and time.monotonic() < deadline:
            time.sleep(0.05)
        left = spooling.spooled
    finally:
        spooling.close()
    click.echo(f"replayed {waiting - left} batch(es) into {spooling.url}; {left} left in {folder}")
    if left:
        sys.exit(EXIT_ERROR)


# ---------------------------------------------------------------- plugins / demo


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool) -> None:
    """List loaded plugins, the store schemes they register, and plugins that failed to load."""
    from gearstash.plugins import failed_plugins, loaded_plugins, store_types

    types = store_types()
    loaded = loaded_plugins()
    failed = failed_plugins()
    if as_json:
        click.echo(
            json.dumps(
                {
                    "plugins": [
                        {
                            "name": p.name,
                            "module": p.module,
                            "version": p.version,
                            "stores": p.stores,
                        }
                        for p in loaded
                    ],
                    "stores": {
                        s: {"plugin": t.plugin, "description": t.description}
                        for s, t in sorted(types.items())
                    },
                    "failed": [{"name": n, "error": e} for n, e in failed],
                }
            )
        )
        return
    click.echo("plugins:")
    for p in loaded:
        click.echo(f"  {p.name:<12} {p.module} {p.version}")
    click.echo("stores:")
    for scheme, t in sorted(types.items()):
        click.echo(f"  {scheme + '://':<14} {t.description} [{t.plugin}]")
    if failed:
        click.echo("failed to load:")
        for name, error in failed:
            click.echo(f"  {name}: {error}")
    try:
        settings = _settings()
    except ConfigError as exc:  # a diagnostic command: say what is wrong, list the rest
        click.echo(f"configuration: error: {exc}")
        return
    if settings.store:
        click.echo(f"store from {settings.sources['store']}: {redact_url(settings.store)}")
    if settings.config_file is not None:
        click.echo(f"config file: {settings.config_file}")


@main.group()
def token() -> None:
    """Signed job tokens for browsers (the secret comes from $GEARSTASH_TOKEN_SECRET,
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
    """Print a token for the job REF (a job reference, as `submit --background` prints it)."""
    click.echo(_signer().sign(JobRef.parse(ref), ttl=ttl))


@token.command("fetch")
@_server_option
@_store_option
@click.option("--json", "as_json", is_flag=True, help="Print the job as one JSON object.")
@click.argument("token_text", metavar="TOKEN")
def token_fetch(
    servers: tuple[str, ...], store: str | None, as_json: bool, token_text: str
) -> None:
    """Verify TOKEN, then show its job like `fetch` (exit 1 if the token is refused)."""
    signer = _signer()
    ref = signer.verify(token_text)  # before any server or store is asked anything
    with _client(servers, store) as client:
        view = client.fetch(ref)
    if as_json:
        click.echo(json.dumps(view.to_json(), ensure_ascii=False))
    else:
        click.echo(describe(view))


@main.command()
@click.option(
    "--jobs", "payloads", multiple=True, help="Payloads to reverse (default ABC123 DEF456)."
)
@click.option("--steps", default=10, show_default=True, help="Progress steps per job.")
@click.option("--delay", default=0.15, show_default=True, help="Seconds per step.")
def demo(payloads: tuple[str, ...], steps: int, delay: float) -> None:
    """The seed's story: a private gearmand, a capturing worker, two background jobs.

    Starts gearmand on a free port and a gearstash worker for ``reverse``, submits ABC123 and
    DEF456 in the background, shows their progress, fetches each job's data and result by handle
    from the default SQLite store, and shuts everything down.
    """
    from gearstash.demo import run_demo

    run_demo(list(payloads) or ["ABC123", "DEF456"], steps=steps, delay=delay)
