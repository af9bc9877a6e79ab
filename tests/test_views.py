"""The rules that merge a live status and a stored record (pure functions, no servers)."""

from __future__ import annotations

import pytest

from gearstash.model.records import Event, EventKind, JobKey, JobRecord, JobRef, State
from gearstash.model.views import Status, merge_state, successor

KEY = JobKey("127.0.0.1:4730", b"H:x:1", b"u1")
REF = JobRef(KEY.handle, KEY.server, KEY.unique)
UNKNOWN = Status(False, False, 0, 0, KEY.server)
RUNNING = Status(True, True, 1, 2, KEY.server)


def record(*events: Event) -> JobRecord:
    return JobRecord.from_events(KEY, list(events))


def started(at: float, lease: float | None = 10.0, key: JobKey = KEY) -> Event:
    return Event(EventKind.STARTED, key, at, function=b"f", lease=lease)


def test_a_running_record_is_lost_only_after_its_lease_and_only_if_the_server_forgot_it():
    rec = record(started(100.0))
    assert rec.lease_until == 110.0
    assert merge_state(REF, UNKNOWN, rec, now=109.0).state is State.RUNNING
    assert merge_state(REF, UNKNOWN, rec, now=111.0).state is State.LOST
    assert merge_state(REF, None, rec, now=111.0).state is State.LOST
    assert merge_state(REF, RUNNING, rec, now=111.0).state is State.RUNNING
    assert State.LOST.final


def test_heartbeats_move_the_lease():
    rec = record(started(100.0), Event(EventKind.HEARTBEAT, KEY, 108.0, lease=10.0))
    assert rec.lease_until == 118.0 and rec.updated_at == 108.0
    assert merge_state(REF, UNKNOWN, rec, now=115.0).state is State.RUNNING


def test_without_a_lease_a_running_record_stays_running():
    rec = record(started(100.0, lease=None))
    assert merge_state(REF, UNKNOWN, rec, now=1e12).state is State.RUNNING


def test_a_submitted_job_the_server_forgot_is_lost_but_unreachable_is_queued():
    rec = record(Event(EventKind.SUBMITTED, KEY, 100.0, function=b"f"))
    assert (rec.state, rec.attempt) == (State.QUEUED, 0)
    assert merge_state(REF, UNKNOWN, rec).state is State.LOST
    assert merge_state(REF, None, rec).state is State.QUEUED
    assert merge_state(REF, Status(True, False, 0, 0), rec).state is State.QUEUED


def test_final_records_win_and_lost_never_hides_them():
    rec = record(started(100.0), Event(EventKind.COMPLETED, KEY, 101.0, b"ok"))
    assert merge_state(REF, UNKNOWN, rec, now=1e12).state is State.COMPLETE


@pytest.mark.parametrize(
    ("key", "at", "expected"),
    [
        (JobKey(KEY.server, b"H:x:9", KEY.unique), 105.0, True),
        (JobKey(KEY.server, b"H:x:9", KEY.unique), 99.0, False),  # began before: an older job
        (JobKey(KEY.server, KEY.handle, KEY.unique), 105.0, False),  # the same handle
        (JobKey("10.0.0.2:4730", b"H:x:9", KEY.unique), 105.0, False),  # another server
        (JobKey(KEY.server, b"H:x:9", b"u2"), 105.0, False),  # another unique
    ],
)
def test_successor_is_the_same_job_replayed_later_under_a_new_handle(key, at, expected):
    marker = record(Event(EventKind.SUBMITTED, KEY, 100.0, function=b"f"))
    candidate = JobRecord.from_events(key, [started(at, key=key)])
    assert successor(marker, candidate) is expected
    assert successor(marker, None) is False


@pytest.mark.parametrize("terminal", [False, True])
def test_progress_shows_handles_literally(terminal):
    import io

    from rich.console import Console

    from gearstash.cli.progress import ProgressDisplay
    from gearstash.model.views import JobView

    out = io.StringIO()
    console = Console(file=out, force_terminal=terminal, width=200)  # markup, emoji: on
    label = "H:x:1@[/bold]:smile:#u[red]"
    with ProgressDisplay(console=console) as display:
        task = display.add(label)
        display.update(task, JobView(REF, State.LOST, UNKNOWN, None))
    text = out.getvalue()
    assert label in text and "lost" in text
    assert "\u274c" not in text and "\U0001f604" not in text  # no emoji made of ":x:" / ":smile:"
