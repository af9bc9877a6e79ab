"""Listing and counting jobs in Redis: what the LIST script (:mod:`gearstash_redis.scripts`) is
given and what its answers mean. No I/O.

The listing index ``PREFIX:all`` (a sorted set) holds every job's key encoding scored by a
creation serial (``INCR PREFIX:serial``), added by the write script in the same call that creates
the job's hash. A page walks it from the newest entry down inside one script (atomic); the cursor
is the serial of the last entry examined. Filters are applied in the script, which examines at
most :data:`BUDGET` entries per call, so a page with a selective filter may hold fewer jobs than
asked while its cursor is not None.

Counting everything reads the state indexes ``PREFIX:st:<stored state>`` (sorted sets scored by
each job's ``expires_at``, kept by the write script): per state, ``ZCOUNT (now, +inf]`` jobs live
and ``ZCOUNT (now - grace, now]`` expired ones (a job whose tombstone vanished sooner, because
its TTL was shorter than ``grace``, still counts as expired until then); entries older than
``now - grace`` are removed in the same round trip. Counting with a filter walks the listing
index in one script (O(jobs kept)).
"""

from __future__ import annotations

from typing import Any

from gearstash.model.records import JobKey, State
from gearstash.store.contract import JobFilter, JobPage, JobSummary, make_cursor, read_cursor

from .layout import JobKeys

CURSOR_KIND = "r"
BUDGET = 20_000  # index entries one listing call examines at most


STORED_STATES = (State.QUEUED, State.RUNNING, State.COMPLETE, State.FAILED)


def state_indexes(prefix: bytes) -> list[bytes]:
    """The names of the state indexes, in :data:`STORED_STATES` order."""
    return [b"%b:st:%b" % (prefix, state.value.encode()) for state in STORED_STATES]


def forget_commands(names: JobKeys, prefix: bytes, *more: bytes) -> list[tuple[bytes, ...]]:
    """What deletes one job (named ``names``, under ``prefix``): its keys (and ``more`` keys) in
    one DEL — the first command, whose answer says whether it existed — then its entries in the
    handle, unique, listing and state indexes, and an announcement on its channel."""
    member = names.member
    return [
        (b"DEL", names.job, names.data, names.warnings, names.status, names.gone, *more),
        (b"ZREM", names.handle_index, member),
        (b"ZREM", names.unique_index, member),
        (b"ZREM", prefix + b":all", member),
        *((b"ZREM", name, member) for name in state_indexes(prefix)),
        (b"PUBLISH", names.channel, names.job_digest),
    ]


def state_count_commands(prefix: bytes, now: float, grace: float) -> list[tuple[bytes, ...]]:
    """Per state index: drop entries past ``now - grace``, count live, count expired."""
    at, old = repr(now).encode(), repr(now - grace).encode()
    commands: list[tuple[bytes, ...]] = []
    for name in state_indexes(prefix):
        commands += [
            (b"ZREMRANGEBYSCORE", name, b"-inf", b"(" + old),
            (b"ZCOUNT", name, b"(" + at, b"+inf"),
            (b"ZCOUNT", name, b"(" + old, at),
        ]
    return commands


def state_counts(replies: list[Any]) -> dict[State, int]:
    """The counts of :func:`state_count_commands`' replies."""
    out: dict[State, int] = {State.EXPIRED: 0}
    for i, state in enumerate(STORED_STATES):
        _removed, live, expired = replies[3 * i : 3 * i + 3]
        out[state] = int(live)
        out[State.EXPIRED] += int(expired)
    return out


def _number(value: float | None) -> bytes:
    return b"" if value is None else repr(float(value)).encode()


def list_args(
    prefix: bytes, filter: JobFilter, limit: int, cursor: str | None, now: float
) -> list[bytes]:
    """The ARGV of the LIST script (``limit`` 0: count). Raises BadCursor."""
    before = read_cursor(CURSOR_KIND, cursor)
    return [
        prefix,
        b"" if before is None else b"%d" % before,
        b"%d" % limit,
        b"%d" % BUDGET,
        _number(now),
        ",".join(sorted(s.value for s in filter.states)).encode(),
        b"0" if filter.function is None else b"1",
        filter.function or b"",
        (filter.server or "").encode(),
        _number(filter.since),
        _number(filter.until),
        filter.prefix or b"",
    ]


def _float(raw: bytes | None) -> float | None:
    return None if raw is None or raw == b"" else float(raw)


def summary(entry: list[Any]) -> JobSummary:
    """One listed entry of the LIST script's answer."""
    server, handle, unique, function, state, attempt, worker = entry[:7]
    started, finished, updated, expires, lease, error_kind, last = entry[7:14]
    numerator = denominator = 0
    if last:
        num, den, _at = last.split(b" ")
        numerator, denominator = int(num), int(den)
    return JobSummary(
        JobKey(server.decode("utf-8", "replace"), handle, unique),
        function or b"",
        State((state or b"running").decode()),
        int(attempt or (0 if state == b"queued" else 1)),
        (worker or b"").decode("utf-8", "replace"),
        _float(started),
        _float(finished),
        _float(updated),
        _float(expires),
        _float(lease),
        numerator,
        denominator,
        None if error_kind is None else error_kind.decode(),
    )


def page(reply: list[Any]) -> JobPage:
    """The :class:`JobPage` of a listing answer ``{entries, next}``."""
    entries, following = reply
    jobs = [summary(entry) for entry in entries]
    return JobPage(jobs, make_cursor(CURSOR_KIND, int(following)) if following else None)


def counts(reply: list[Any]) -> dict[State, int]:
    """The counts of a counting answer ``{state, n, ...}``."""
    return {State(reply[i].decode()): int(reply[i + 1]) for i in range(0, len(reply), 2)}
