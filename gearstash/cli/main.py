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
import traceback
from collections.abc import Callable
from typing import Any

import click

from gearstash.cli.common import (
    EXIT_ERROR,
    EXIT_FAILED,
    ExitCodeGroup,
    capture_options,
    client_for,
    describe,
    server_option,
    settings_for,
    store_for,
    store_option,
)
from gearstash.cli.proxy import proxy
from gearstash.cli.spool import spool
from gearstash.cli.token import token
from gearstash.cli.visible import stream_chunk, visible
from gearstash.cli.web import web
from gearstash.client.client import Client
from gearstash.errors import ConfigError, GearstashError, WaitTimeout
from gearstash.model.records import JobRef, State
from gearstash.protocol.packets import handle_problem
from gearstash.store.contract import delete
from gearstash.store.contract import purge as purge_store
from gearstash.store.urls import redact_url
from gearstash.transport.connection import cannot_listen


@click.group(cls=ExitCodeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gearstash")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.option(
    "--config",
    "config_file",
    metavar="FILE",
    default=None,
    help="TOML config file (default $GEARSTASH_CONFIG or "
    "$XDG_CONFIG_HOME/gearstash/config.toml): store, servers, token_secret, spool, web_admin "
    "(and their *_file forms).",
)
@click.pass_context
def main(ctx: click.Context, verbose: int, config_file: str | None) -> None:
    """Keep what Gearman background jobs say, and fetch it back by job handle."""
    ctx.obj = {"config": config_file}
    configure_logging(verbose)


class _LevelWord(logging.Filter):
    """Gives each record ``level_word``: its level in lower case (``warning``, ``error``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.level_word = record.levelname.lower()
        return True


def configure_logging(verbose: int) -> None:
    """One message style: without -v, warnings and errors read ``gearstash: warning: …`` like
    every other message of the command line; with -v (info) or -vv (debug), log lines carry
    their time, level and logger."""
    handler = logging.StreamHandler()
    if verbose:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.addFilter(_LevelWord())
        handler.setFormatter(logging.Formatter("gearstash: %(level_word)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING - 10 * min(verbose, 2), handlers=[handler])


# ---------------------------------------------------------------- streamed job output


def raw_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--raw",
        is_flag=True,
        help="Write job data as raw bytes even to a terminal (to a pipe it always is).",
    )(f)


def timeout_option(help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--timeout/-t SECONDS`` (more than 0; default none) with ``help``."""
    return click.option(
        "--timeout",
        "-t",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help=help,
    )


def chunk_writer(raw: bool) -> Callable[[bytes], None]:
    """Writes one chunk of job output to standard output on a line of its own: raw bytes to a
    pipe or with ``raw``, else (a terminal) with control characters escaped."""
    out = sys.stdout.buffer
    as_is = raw or not sys.stdout.isatty()

    def write(chunk: bytes) -> None:
        out.write(stream_chunk(chunk, raw=as_is))
        if not chunk.endswith(b"\n"):
            out.write(b"\n")
        out.flush()

    return write


# ---------------------------------------------------------------- worker


def load_function(spec: str, app_dir: str | None = None) -> tuple[str, Callable[..., Any]]:
    """``module:function`` or ``path/to/file.py:function`` → (function name, callable).

    A module is imported from ``app_dir`` (default: the current directory), then ``sys.path``; a
    ``.py`` path puts its folder first on ``sys.path``. Every failure — a missing or relative module
    name, a syntax error, an exception raised on import, a missing attribute — is one
    :class:`ConfigError` line naming the file and line where it can be told.
    """
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"expected MODULE:FUNCTION or path/to/file.py:FUNCTION, got {spec!r}")
    folder = os.path.abspath(app_dir or os.getcwd())
    if module_name.endswith(".py") or os.sep in module_name:
        path = os.path.abspath(module_name)
        if not os.path.isfile(path):
            raise ConfigError(f"no job module file {module_name!r} (from {os.getcwd()})")
        folder, module_name = os.path.dirname(path), os.path.basename(path)[: -len(".py")]
    if module_name.startswith("."):
        raise ConfigError(
            f"{module_name!r} is a relative module name: give MODULE:FUNCTION importable from "
            "--app-dir (default: the current directory) or path/to/file.py:FUNCTION"
        )
    if folder not in sys.path:
        sys.path.insert(0, folder)
    module = _import_job_module(module_name, folder)
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ConfigError(f"{module.__file__ or module_name}: no attribute {attr!r}")
    if not callable(target):
        raise ConfigError(f"{spec} is not callable")
    return attr.rpartition(".")[2], target


def _import_job_module(name: str, folder: str) -> Any:
    try:
        return importlib.import_module(name)
    except SyntaxError as exc:
        raise ConfigError(
            f"{exc.filename}:{exc.lineno}: job module {name!r} has a SyntaxError: {exc.msg}"
        ) from None
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise ConfigError(
                f"no job module {name!r} in {folder} or on sys.path (the folder is "
                "--app-dir, default the current directory; or give path/to/file.py:FUNCTION)"
            ) from None
        raise _import_failed(name, exc) from None
    except Exception as exc:
        raise _import_failed(name, exc) from None


def _import_failed(name: str, exc: Exception) -> ConfigError:
    """One line for an exception a job module raised on import: the innermost frame of its file."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "importlib" not in f.filename]
    where = f"{frames[-1].filename}:{frames[-1].lineno}: " if frames else ""
    return ConfigError(f"{where}importing job module {name!r} raised {type(exc).__name__}: {exc}")


@main.command()
@server_option
@store_option
@click.option("--concurrency", "-c", default=1, show_default=True, help="Jobs run at once.")
@click.option(
    "--processes",
    "-p",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes under one supervisor (prefork): a child that dies is replaced; "
    "SIGTERM drains them all. --max-jobs then counts per process (a child that did its jobs "
    "is not replaced).",
)
@click.option(
    "--pipeline",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Group commit: ended jobs a slot may hold while their events are written, several "
    "jobs a store write; each job's end reaches the server only after its events are stored.",
)
@click.option(
    "--prefetch",
    is_flag=True,
    help="Ask for the next job as soon as one is assigned (for short jobs: the server holds "
    "that job for this worker while the current one runs).",
)
@click.option(
    "--name",
    "-n",
    "names",
    multiple=True,
    metavar="FUNCTION=NAME",
    help="Serve the Python function FUNCTION under the Gearman name NAME (repeatable).",
)
@click.option(
    "--max-jobs", type=click.IntRange(min=1), default=None, help="Stop after this many jobs."
)
@capture_options
@click.option(
    "--on-store-down",
    type=click.Choice(["spool", "fail"]),
    default="spool",
    show_default=True,
    help="spool: jobs go on, events wait on disk and are replayed in order; "
    "fail: jobs fail (WORK_FAIL) while the store is down.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve Prometheus metrics on 127.0.0.1:PORT/metrics (jobs run, store write latency, "
    "spool size, store-down time; needs gearstash[web]).",
)
@click.option(
    "--app-dir",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Folder job modules are imported from (default: the current directory).",
)
@click.argument("functions", nargs=-1, required=True, metavar="MODULE:FUNCTION...")
def worker(
    servers: tuple[str, ...],
    store: str | None,
    concurrency: int,
    processes: int,
    pipeline: int,
    prefetch: bool,
    names: tuple[str, ...],
    max_jobs: int | None,
    lease: float,
    spool: str | None,
    spool_max_bytes: int,
    capture_workload: bool,
    workload_max_bytes: int,
    on_store_down: str,
    metrics_port: int | None,
    app_dir: str | None,
    functions: tuple[str, ...],
) -> None:
    """Serve MODULE:FUNCTION... and capture every job event into the store.

    MODULE is imported from --app-dir (default: the current directory) or sys.path; a path to a
    ``.py`` file (``../jobs/myjobs.py:reverse``) is imported from its folder.

    Each function is served under its own name and receives the job (``job.workload``,
    ``job.send_data``, ``job.send_status``, ``job.send_warning``); its return value is the result.
    Stops cleanly on SIGTERM/SIGINT after the job in hand.
    """
    from gearstash.worker.worker import Worker

    renames: dict[str, str] = {}
    for item in names:
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            raise click.BadParameter(f"expected FUNCTION=NAME, got {item!r}", param_hint="--name")
        renames[old] = new
    loaded = [(spec, *load_function(spec, app_dir)) for spec in functions]
    settings = settings_for(servers, store)

    def build() -> Worker:
        w = Worker(
            settings.servers,
            store=settings.store_url,
            concurrency=concurrency,
            lease=lease,
            pipeline=pipeline,
            prefetch=prefetch,
            spool=spool or settings.spool,
            spool_max_bytes=spool_max_bytes,
            on_store_down=on_store_down,
            capture_workload=capture_workload,
            workload_max_bytes=workload_max_bytes,
        )
        for spec, name, fn in loaded:
            w.register(renames.get(spec, renames.get(name, name)), fn)
        return w

    def serve(w: Worker) -> int:
        try:
            w.work(max_jobs=max_jobs)
        finally:
            w.close()
        if w.stopped_by is not None:  # one line, not a log line, when a signal stopped it
            click.echo(
                f"gearstash worker: stopped on {w.stopped_by} after {w.jobs_done} job(s)", err=True
            )
        return 0

    if metrics_port is not None and processes > 1:
        raise ConfigError("--metrics-port serves one process's metrics: use it without --processes")
    w = build()
    click.echo(
        f"gearstash worker: serving {', '.join(w.functions)} on {', '.join(w.servers)}; "
        f"store {w.store.url}"
        + (f"; spool {w.store.spool_dir}" if hasattr(w.store, "spool_dir") else "")
        + ("; jobs fail while the store is down" if on_store_down == "fail" else "")
        + (f"; {processes} processes" if processes > 1 else ""),
        err=True,
    )
    if metrics_port is not None:
        try:
            from gearstash.worker import metrics as worker_metrics
        except ImportError as exc:
            raise ConfigError(
                f"--metrics-port needs prometheus-client (gearstash[web]): {exc}"
            ) from None
        try:
            worker_metrics.serve(worker_metrics.instrument(w), metrics_port)
        except OSError as exc:
            raise cannot_listen(f"127.0.0.1:{metrics_port}", exc, "serve metrics") from None
        click.echo(
            f"gearstash worker: metrics on http://127.0.0.1:{metrics_port}/metrics", err=True
        )
    if processes == 1:
        serve(w)
        return
    w.close()  # each child opens its own store and connections after the fork
    from gearstash.worker.prefork import Supervisor

    code = Supervisor(lambda: serve(build()), processes).run()
    if code:
        raise SystemExit(code)


# ---------------------------------------------------------------- submit


@main.command()
@server_option
@store_option
@click.option(
    "--background", "-b", is_flag=True, help="Submit in the background; print the job ref."
)
@click.option("--unique", "-u", default=None, help="Unique id (at most 63 bytes; default a UUID).")
@click.option(
    "--priority", type=click.Choice(["normal", "high", "low"]), default="normal", show_default=True
)
@timeout_option(
    "Foreground: give up after this many seconds (exit 4), e.g. when no worker serves it."
)
@raw_option
@click.argument("function")
@click.argument("payload", required=False, default=None)
def submit(
    servers: tuple[str, ...],
    store: str | None,
    background: bool,
    unique: str | None,
    priority: str,
    timeout: float | None,
    raw: bool,
    function: str,
    payload: str | None,
) -> None:
    """Submit FUNCTION with PAYLOAD ("-" or nothing: read standard input).

    Background: prints the job reference (HANDLE@SERVER#UNIQUE), which every other command accepts.
    Foreground: prints each data chunk on its own line as it comes, then the result on the last
    line (to a terminal with control characters escaped, unless --raw); warnings go to standard
    error. Exits 3 if the job failed, 4 after --timeout.
    """
    data = sys.stdin.buffer.read() if payload in (None, "-") else os.fsencode(payload or "")
    with client_for(servers, store, create=True) as client:
        if background:
            ref = client.submit_background(function, data, unique=unique, priority=priority)
            click.echo(str(ref))
            return
        write = chunk_writer(raw)
        try:
            view = client.submit(
                function,
                data,
                unique=unique,
                priority=priority,
                on_data=write,
                on_warning=lambda w: click.echo(f"gearstash: job warning: {visible(w)}", err=True),
                timeout=timeout,
            )
        except WaitTimeout as exc:
            raise WaitTimeout(f"{exc} (is a worker serving {function!r}?)") from None
        if view.state is State.COMPLETE:
            write(view.result or b"")
            return
        error = view.record.error if view.record else None
        message = error.message if error is not None else ""
        if not message:
            # WORK_FAIL carries no reason on the wire; the capturing worker stored it.
            with contextlib.suppress(GearstashError):
                stored = client.fetch(view.ref).record
                if stored is not None and stored.error is not None:
                    message = stored.error.message
        click.echo(f"gearstash: job failed: {visible(message or 'WORK_FAIL')}", err=True)
        sys.exit(EXIT_FAILED)


# ---------------------------------------------------------------- status / fetch


@main.command()
@server_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per job.")
@click.argument("handles", nargs=-1, required=True)
def status(servers: tuple[str, ...], as_json: bool, handles: tuple[str, ...]) -> None:
    """The job server's live status of each HANDLE (a job ref or a bare handle).

    gearmand forgets a job when it ends: use ``fetch`` for the stored outcome. A handle that
    cannot be asked (too long, unreachable server) gets an error line and exit code 1; the other
    handles still get their answers.
    """
    failed = False
    with Client(settings_for(servers).servers, store="null://") as client:
        for text in handles:
            try:
                ref = JobRef.parse(text)
                problem = handle_problem(ref.handle) if not ref.by_unique else None
                if problem is not None:
                    raise ConfigError(f"{problem}: {ref}")
                st = client.status(ref)
            except GearstashError as exc:  # one bad handle never costs the others their answer
                click.echo(f"gearstash: error: {exc}", err=True)
                failed = True
                continue
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
                    f"{visible(str(ref))}\tknown={int(st.known)} running={int(st.running)} "
                    f"{st.numerator}/{st.denominator}{pct}"
                )
    if failed:
        sys.exit(EXIT_ERROR)


@main.command()
@server_option
@store_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per job and line.")
@click.argument("handles", nargs=-1, required=True)
def fetch(
    servers: tuple[str, ...], store: str | None, as_json: bool, handles: tuple[str, ...]
) -> None:
    """Stored data, result and error of each HANDLE, merged with the live status.

    With --json, prints the documented record plus the live status, one job per line.
    """
    refs = [JobRef.parse(h) for h in handles]
    with client_for(servers, store) as client:
        for view in client.fetch_many(refs):
            if as_json:
                click.echo(json.dumps(view.to_json(), ensure_ascii=False))
            else:
                click.echo(describe(view))


@main.command()
@server_option
@store_option
@timeout_option("Give up after this many seconds.")
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
    from gearstash.cli.progress import ProgressDisplay

    ref = JobRef.parse(handle)
    with client_for(servers, store) as client, ProgressDisplay(enabled=not quiet) as display:
        task = display.add(ref.handle.decode("utf-8", "backslashreplace"))
        view = client.wait(ref, timeout, on_progress=lambda v: display.update(task, v))
    if as_json:
        click.echo(json.dumps(view.to_json(), ensure_ascii=False))
    else:
        click.echo(describe(view))
    if view.state is not State.COMPLETE:
        sys.exit(EXIT_FAILED)


@main.command()
@server_option
@store_option
@timeout_option("Give up after this many seconds.")
@click.option(
    "--after",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Start at this chunk number.",
)
@raw_option
@click.argument("handle")
def follow(
    servers: tuple[str, ...],
    store: str | None,
    timeout: float | None,
    after: int,
    raw: bool,
    handle: str,
) -> None:
    """Print HANDLE's data chunks as they arrive, like ``tail -f``, then its result.

    Each chunk goes to standard output on its own line (to a terminal with control characters
    escaped, unless --raw), then the result when the job completed; restarts, the error of a
    failed job and the final state go to standard error. Uses push where the store has it.
    Exits 0 when the job completed, 3 when it failed, 4 on timeout or when the job is unknown.
    """
    ref = JobRef.parse(handle)
    write = chunk_writer(raw)
    view = None
    with client_for(servers, store) as client:
        for update in client.follow(ref, after=after, timeout=timeout):
            if update.restarted:
                click.echo("-- a new attempt started; its data follows --", err=True)
            for chunk in update.chunks:
                write(chunk)
            view = update.view
        final = client.fetch(view.ref) if view is not None else None
    state = final.state if final is not None else State.UNKNOWN
    record = final.record if final is not None else None
    if state is State.COMPLETE and record is not None and record.result is not None:
        write(record.result)
    elif record is not None and record.error is not None:
        click.echo(f"gearstash: job failed: {visible(record.error.message)}", err=True)
    click.echo(f"-- {visible(ref.handle)} {state.value} --", err=True)
    if state is not State.COMPLETE:
        sys.exit(EXIT_FAILED)


@main.command()
@store_option
@click.argument("handles", nargs=-1, required=True)
def forget(store: str | None, handles: tuple[str, ...]) -> None:
    """Delete the stored records of each HANDLE (every record a bare handle matches)."""
    refs = [JobRef.parse(h) for h in handles]
    opened = store_for(store)
    try:
        removed = delete(opened, refs)
    finally:
        opened.close()
    click.echo(f"forgot {removed} record(s)")


@main.command()
@store_option
def purge(store: str | None) -> None:
    """Remove expired records from the store now (stores also purge by themselves)."""
    opened = store_for(store)
    try:
        removed = purge_store(opened)
    finally:
        opened.close()
    click.echo(f"purged {removed} expired record(s) from {opened.url}")


# ---------------------------------------------------------------- plugins / demo


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool) -> None:
    """List loaded plugins, the store schemes they register, and plugins that failed to load."""
    from gearstash.spine.manager import failed_plugins, loaded_plugins, store_types

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
                        s: {"plugin": t.plugin, "description": t.description, "needs": t.missing}
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
        needs = f" (needs the [{t.missing}] extra)" if t.missing else ""
        click.echo(f"  {scheme + '://':<14} {t.description} [{t.plugin}]{needs}")
    if failed:
        click.echo("failed to load:")
        for name, error in failed:
            click.echo(f"  {name}: {error}")
    try:
        settings = settings_for()
    except ConfigError as exc:  # a diagnostic command: say what is wrong, list the rest
        click.echo(f"configuration: error: {exc}")
        return
    if settings.store:
        click.echo(f"store from {settings.sources['store']}: {redact_url(settings.store)}")
    if settings.config_file is not None:
        click.echo(f"config file: {settings.config_file}")


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
    from a private SQLite store in a temporary folder (never your own store), and shuts everything
    down.
    """
    from gearstash.cli.demo import run_demo

    run_demo(list(payloads) or ["ABC123", "DEF456"], steps=steps, delay=delay)


main.add_command(proxy)
main.add_command(spool)
main.add_command(token)
main.add_command(web)
