"""``gearstash spool status|replay``: look at or drain a worker's on-disk spool."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from gearstash import config
from gearstash.cli.common import (
    EXIT_ERROR,
    EXIT_SPOOLED,
    settings_for,
    store_option,
)

# ---------------------------------------------------------------- spool


def _spool_dir(store: str | None, spool: str | None) -> tuple[config.Settings, Path]:
    from gearstash.store.spool import default_spool_dir

    settings = settings_for(store=store)
    folder = config.spool_folder(spool, settings)
    return settings, Path(folder) if folder else default_spool_dir(settings.store_url)


def _spool_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--spool",
        metavar="DIR",
        help="Spool folder (default: as the worker finds it: $GEARSTASH_SPOOL, the config "
        "file's spool, else spool/<hash of the store URL> in the gearstash home).",
    )(f)


@click.group()
def spool() -> None:
    """Look at or drain a worker spool (events kept on disk while the store was down)."""


@spool.command("status")
@store_option
@_spool_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def spool_status(store: str | None, spool: str | None, as_json: bool) -> None:
    """List the spool files: batches waiting, bytes, and whether a running worker holds them.

    Exits 5 when batches wait in files no running worker holds (start a worker on this spool,
    or run ``gearstash spool replay``), else 0.
    """
    from gearstash.store.spoolfile import SpoolFile, spool_files

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
@store_option
@_spool_option
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Seconds to keep trying.",
)
def spool_replay(store: str | None, spool: str | None, timeout: float) -> None:
    """Write the batches of spool files no running worker holds into the store, in order.

    For a spool left behind by a worker that will not run again. Exits 0 when everything landed,
    1 when some is still spooled after TIMEOUT seconds (it stays on disk).
    """
    import time

    from gearstash.spine.manager import open_store
    from gearstash.store.spool import SpoolingStore

    settings, folder = _spool_dir(store, spool)
    if not folder.is_dir():
        click.echo(f"spool {folder}: nothing to replay")
        return
    spooling = SpoolingStore(open_store(settings.store_url), folder, close_timeout=1.0)
    try:
        waiting = spooling.adopted  # not .spooled: the replay began when the spool was adopted
        deadline = time.monotonic() + timeout
        while spooling.spooled and time.monotonic() < deadline:
            time.sleep(0.05)
        left = spooling.spooled
    finally:
        spooling.close()
    click.echo(f"replayed {waiting - left} batch(es) into {spooling.url}; {left} left in {folder}")
    if left:
        sys.exit(EXIT_ERROR)
