"""``gearstash proxy``: the capturing job-server proxy for workers in any language."""

from __future__ import annotations

import click

from gearstash.cli.common import capture_options, settings_for, store_option
from gearstash.errors import ConfigError


@click.command()
@click.option(
    "--listen",
    default="127.0.0.1:4731",
    show_default=True,
    metavar="HOST:PORT",
    help="Where workers (and clients) connect instead of the job server.",
)
@click.option(
    "--upstream",
    default="127.0.0.1:4730",
    show_default=True,
    metavar="HOST:PORT",
    help="The job server (gearmand) the connections are relayed to.",
)
@click.option(
    "--server-name",
    default=None,
    metavar="HOST:PORT",
    help="The upstream server as clients name it: records are keyed by it, so `gearstash fetch` "
    "finds them by the handle the client got (default: --upstream).",
)
@click.option(
    "--route",
    "routes",
    multiple=True,
    metavar="LISTEN=UPSTREAM",
    help="One more listening address and its job server (repeatable); records are keyed by "
    "UPSTREAM.",
)
@store_option
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes sharing the listening ports (SO_REUSEPORT) to use more cores.",
)
@click.option(
    "--store-writers",
    type=click.IntRange(min=1, max=64),
    default=1,
    show_default=True,
    help="Threads writing to the store at once (each job is written by one of them, in order); "
    "more overlap the round trips of a store far away, one batches best.",
)
@capture_options
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="On SIGTERM: seconds the jobs in hand get to finish before their connections close.",
)
@click.option(
    "--flush-interval",
    type=click.FloatRange(min=0),
    default=0.05,
    show_default=True,
    help="Longest time an event of a running job waits before it is written (a job's last "
    "packet always waits for its events to be stored).",
)
@click.option(
    "--max-packet",
    type=click.IntRange(min=1024),
    default=64 << 20,
    show_default=True,
    help="Largest packet body relayed; a bigger one closes that connection pair.",
)
def proxy(
    listen: str,
    upstream: str,
    server_name: str | None,
    routes: tuple[str, ...],
    store: str | None,
    processes: int,
    store_writers: int,
    lease: float,
    grace: float,
    flush_interval: float,
    spool: str | None,
    spool_max_bytes: int,
    capture_workload: bool,
    workload_max_bytes: int,
    max_packet: int,
) -> None:
    """Relay workers of any language to the job server and capture what their jobs say.

    Point a PHP, C, Perl, Java... worker at --listen instead of gearmand: every packet is passed
    on, and every job's start, status, data, warnings and end are stored in the same records as
    the Python worker's, before the job server hears that the job ended. Clients may connect
    through the proxy too. Stops on SIGTERM/SIGINT after a grace period for the jobs in hand.
    """
    from gearstash.proxy.routes import Route
    from gearstash.proxy.server import Settings, run

    settings = settings_for(store=store)
    try:
        all_routes = [Route.parse(f"{listen}={upstream}", server_name)]
        all_routes += [Route.parse(text) for text in routes]
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None
    listens = [r.listen for r in all_routes]
    if len(set(listens)) != len(listens):
        raise click.BadParameter("two routes listen on the same address")
    proxy_settings = Settings(
        routes=all_routes,
        store_url=settings.store_url,
        lease=lease,
        grace=grace,
        flush_interval=flush_interval,
        spool=spool or settings.spool,
        spool_max_bytes=spool_max_bytes,
        max_packet=max_packet,
        processes=processes,
        writers=store_writers,
        workload_max=workload_max_bytes if capture_workload else None,
    )
    click.echo(
        "gearstash proxy: "
        + "; ".join(f"{r.listen} -> {r.upstream} (as {r.server_name})" for r in all_routes)
        + f"; {processes} process(es)",
        err=True,
    )
    code = run(proxy_settings)
    click.echo(f"gearstash proxy: stopped (exit {code})", err=True)  # one line, as the worker's
    raise SystemExit(code)
