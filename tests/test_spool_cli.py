"""``gearstash spool status|replay``: a spool left behind by a stopped worker, seen and drained."""

from __future__ import annotations

import json
import time
from pathlib import Path

from click.testing import CliRunner

from gearstash.cli.main import main
from gearstash.model.records import Event, EventKind, JobKey, JobRef, State
from gearstash.spine.manager import open_store
from gearstash.store.spoolfile import SpoolFile, encode_events, spool_files

KEY = JobKey("127.0.0.1:4730", b"H:spool:1", b"u-spool")


def _left_behind(folder: Path, live: bool = False) -> SpoolFile:
    """A spool file holding a whole job in 4 batches; closed (its worker stopped) unless live."""
    now = time.time()
    spooled = SpoolFile.create(folder)
    spooled.append(encode_events([Event(EventKind.STARTED, KEY, now, function=b"f", worker="w")]))
    for i in range(2):
        spooled.append(encode_events([Event(EventKind.DATA, KEY, now + i, b"chunk-%d" % i)]))
    spooled.append(encode_events([Event(EventKind.COMPLETED, KEY, now + 3, b"done")]))
    if not live:
        spooled.close()
    return spooled


def test_status_then_replay_drains_a_spool_left_behind(tmp_path: Path) -> None:
    folder, url = tmp_path / "spool", f"sqlite:///{tmp_path / 'jobs.db'}"
    _left_behind(folder)
    held = _left_behind(folder, live=True)
    runner = CliRunner()
    status = runner.invoke(main, ["spool", "status", "--store", url, "--spool", str(folder)])
    assert status.exit_code == 5, status.output
    assert "4 batch(es) waiting" in status.output
    assert "a running worker holds it" in status.output
    as_json = runner.invoke(
        main, ["spool", "status", "--store", url, "--spool", str(folder), "--json"]
    )
    report = json.loads(as_json.output)
    assert report["orphaned_batches"] == 4 and len(report["files"]) == 2

    replay = runner.invoke(main, ["spool", "replay", "--store", url, "--spool", str(folder)])
    assert replay.exit_code == 0, replay.output
    assert "replayed 4 batch(es)" in replay.output and "0 left" in replay.output
    store = open_store(url)
    try:
        record = store.get_many([JobRef(KEY.handle, KEY.server, KEY.unique)])[0]
    finally:
        store.close()
    assert record is not None and record.state is State.COMPLETE
    assert record.data == [b"chunk-0", b"chunk-1"] and record.result == b"done"
    assert spool_files(folder) == [held.path], "the replayed file is gone, the held one stays"
    after = runner.invoke(main, ["spool", "status", "--store", url, "--spool", str(folder)])
    assert after.exit_code == 0 and "a running worker holds it" in after.output
    held.close()


def test_replay_with_the_store_down_keeps_the_spool(tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    _left_behind(folder)
    dead = "redis://127.0.0.1:1/0"  # nothing listens: connection refused
    result = CliRunner().invoke(
        main, ["spool", "replay", "--store", dead, "--spool", str(folder), "--timeout", "1"]
    )
    assert result.exit_code == 1, result.output
    assert "Connection refused" in result.output and "Traceback" not in result.output
    status = CliRunner().invoke(
        main, ["spool", "status", "--store", dead, "--spool", str(folder), "--json"]
    )
    assert json.loads(status.output)["orphaned_batches"] == 4  # nothing was lost


def test_adopted_counts_what_was_found_even_once_replayed(tmp_path: Path) -> None:
    """``replay`` reports what it found, not what is still waiting when it first looks (the
    replay starts the moment a spool is adopted: it may be done before anyone asks)."""
    from gearstash.store.spool import SpoolingStore

    folder, url = tmp_path / "spool", f"sqlite:///{tmp_path / 'jobs.db'}"
    _left_behind(folder)
    spooling = SpoolingStore(open_store(url), folder, close_timeout=1.0)
    try:
        deadline = time.monotonic() + 30
        while spooling.spooled and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (spooling.adopted, spooling.spooled) == (4, 0)
    finally:
        spooling.close()
