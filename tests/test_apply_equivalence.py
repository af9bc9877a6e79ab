"""``JobRecord.apply`` has three re-implementations in the stores, kept for speed; each must read
back what the Python one (:meth:`JobRecord.from_events`) makes of the same events.

* the SQL store's :class:`~gearstash_sql.rows.RowChange` (the general path: it applies a run to
  a locked row without reading the job's chunks) and :class:`~gearstash_sql.rows.Scan` (the
  direct one-statement path of a one-job batch), on SQLite, PostgreSQL and MariaDB;
* the Redis store's Lua write script (one atomic round trip per ``write()``).

(The memory and memcached stores call ``JobRecord.create``/``apply`` themselves.)

Hypothesis draws event runs — every kind, restarts (a second ``started``), ``submitted`` markers
before and after, TTLs, leases on any event, empty and binary payloads, several jobs per call or
one — and cuts them into ``write()`` calls at random. The comparison is
:func:`gearstash.testing.contract.assert_same`: every field but ``expires_at``, which each store
sets by its own rule (README, "Expiry"); the SQL stores' rule, which counts from event times, is
checked too (Redis counts from the time of the write, on the writer's clock). The seed is
printed on failure and replayed with ``GEARSTASH_TEST_SEED=<hex>``; the profile is CI-friendly
(no deadline, few examples per store).

The PostgreSQL and MariaDB runs use a database of their own (``gs_plugins_<run>``) on the servers
that ``postgres_url`` / ``mysql_url`` name, dropped afterwards; Redis runs on a redis-server of this
module's own on a free loopback port.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from gearstash_sql.rows import JOB_COLUMNS, RowChange, Scan, build_record
from hypothesis import HealthCheck, given, note, seed, settings
from hypothesis import strategies as st

from gearstash.model.records import Event, EventKind, JobKey, JobRecord, JobRef
from gearstash.spine.manager import open_store
from gearstash.store.contract import Store
from gearstash.store.urls import DEFAULT_TTL
from gearstash.testing.contract import RUN, T0, assert_same, new_handle, new_server
from gearstash.testing.servers import PrivateServer, redis_spec

SEED = int(os.environ.get("GEARSTASH_TEST_SEED") or secrets.token_hex(4), 16)
SEED_NOTE = f"hypothesis seed {SEED:x}: replay with GEARSTASH_TEST_SEED={SEED:x}"

# A few examples per store keep each store's run well under a minute on a busy 2-core machine;
# the pure-Python comparison (no I/O) takes many more.
STORE_RUNS = settings(
    deadline=None,
    max_examples=100,
    print_blob=True,
    derandomize=False,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
PURE_RUNS = settings(STORE_RUNS, max_examples=500)

_KINDS = list(EventKind)
_FINAL_TEXT = (EventKind.FAILED, EventKind.EXCEPTION)
# PostgreSQL's TEXT cannot hold NUL (the store refuses such a write with StoreRejected): an error
# message (the payload of failed/exception, decoded) and a traceback have none here
_TEXT_PAYLOADS = st.one_of(
    st.sampled_from([b"", b"boom", b"\xff\xfe", "caf\u00e9".encode()]),
    st.binary(max_size=24).map(lambda b: b.replace(b"\x00", b"")),
)
_PAYLOADS = st.one_of(
    st.sampled_from([b"", b"x", b"\x00", b"\x00\xff\r\n"]), st.binary(max_size=64)
)


@st.composite
def _event_spec(draw: st.DrawFn) -> dict[str, object]:
    kind = draw(st.sampled_from(_KINDS))
    return {
        "kind": kind,
        "job": draw(st.integers(0, 2)),
        "step": draw(st.sampled_from([0.0, 0.001, 0.25, 7.5])),
        "payload": draw(_TEXT_PAYLOADS if kind in _FINAL_TEXT else _PAYLOADS),
        "numerator": draw(st.integers(0, 2**40)),
        "denominator": draw(st.integers(0, 2**40)),
        "function": draw(st.sampled_from([b"", b"f", b"g\xff"])),
        "worker": draw(st.sampled_from(["", "w1", "w\u00e9"])),
        "traceback": draw(st.sampled_from(["", "Traceback (most recent call last):\n  x"])),
        "ttl": draw(st.sampled_from([None, None, 0.0, 600.0, 3600.25])),
        "lease": draw(st.sampled_from([None, None, 30.0, 0.5])),
        "workload": draw(st.sampled_from([None, None, b"", b"load", b"\x00\xffw"])),
    }


# a run: event specs, and where the write() calls cut it (sizes, cycled)
_RUNS = st.tuples(
    st.lists(_event_spec(), min_size=1, max_size=24),
    st.lists(st.integers(1, 6), min_size=1, max_size=6),
    st.booleans(),  # True: a call never mixes jobs (so the one-job direct paths run more)
    st.sampled_from([b"", b"u", b"\x00uniq\xff"]),
)


def _events(specs: list[dict[str, object]], unique: bytes) -> tuple[list[JobKey], list[Event]]:
    """Events of fresh job keys (nobody else's: the stores are shared by the examples)."""
    server = new_server("apply")
    keys = [JobKey(server, new_handle(), unique) for _ in range(3)]
    events = []
    at = T0
    for spec in specs:
        at += float(spec.pop("step"))  # type: ignore[arg-type]
        job = keys[spec.pop("job")]  # type: ignore[call-overload]
        events.append(Event(key=job, at=at, **spec))  # type: ignore[arg-type]
    return keys, events


def _calls(events: list[Event], sizes: list[int], one_job: bool) -> list[list[Event]]:
    """``events`` cut into write() calls of the given sizes (cycled), in order."""
    calls: list[list[Event]] = []
    start = 0
    n = 0
    while start < len(events):
        batch = events[start : start + sizes[n % len(sizes)]]
        n += 1
        if one_job:
            same = [e.key == batch[0].key for e in batch]
            batch = batch[: same.index(False)] if False in same else batch
        calls.append(batch)
        start += len(batch)
    return calls


def _reference(key: JobKey, events: list[Event]) -> JobRecord | None:
    """What the Python implementation makes of ``key``'s events (None: no event creates it)."""
    mine = [e for e in events if e.key == key]
    if all(JobRecord.create(e) is None for e in mine):
        return None
    return JobRecord.from_events(key, mine)


_SETS_EXPIRY = frozenset(
    {
        EventKind.STARTED,
        EventKind.HEARTBEAT,
        EventKind.COMPLETED,
        EventKind.FAILED,
        EventKind.EXCEPTION,
    }
)


def _sql_expiry(key: JobKey, calls: list[list[Event]], ttl: float) -> float | None:
    """``expires_at`` by the SQL stores' rule (README, "Expiry"): the last ``started``,
    ``heartbeat`` or final event sets it (its ``ttl``, else the store's); a call that creates
    the row without one of those gives it the expiry of its last event; the rest leave it."""

    def expiry(event: Event) -> float | None:
        event_ttl = ttl if event.ttl is None else event.ttl
        return event.at + event_ttl if event_ttl > 0 else None

    exists = False
    expires: float | None = None
    for call in calls:
        created = False
        last = marked = None
        for event in call:
            if event.key != key:
                continue
            if not exists:
                if JobRecord.create(event) is None:
                    continue  # a heartbeat before the row exists: skipped
                exists = created = True
            elif event.kind is EventKind.SUBMITTED:
                continue  # changes nothing in an existing row
            last = event
            if event.kind in _SETS_EXPIRY:
                marked = event
        if marked is not None:
            expires = expiry(marked)
        elif created and last is not None:
            expires = expiry(last)
    return expires


def _check_store(
    store: Store,
    run: tuple[list[dict[str, object]], list[int], bool, bytes],
    expiry: Callable[[JobKey, list[list[Event]]], float | None] | None = None,
) -> None:
    """Write the run in its calls, read every job back: as from_events made it; and, when
    ``expiry(key, calls)`` is given, with that ``expires_at``."""
    specs, sizes, one_job, unique = run
    keys, events = _events([dict(s) for s in specs], unique)
    note(SEED_NOTE)
    calls = _calls(events, sizes, one_job)
    for call in calls:
        store.write(call)
    got = store.get_many([JobRef(k.handle, k.server, k.unique) for k in keys])
    for key, record in zip(keys, got, strict=True):
        want = _reference(key, events)
        if want is None:
            assert record is None, f"{key}: a record where no event makes one ({SEED_NOTE})"
            continue
        assert_same(record, want)
        if expiry is not None:
            assert record is not None
            assert record.expires_at == expiry(key, calls), f"expires_at ({SEED_NOTE})"


# ---------------------------------------------------------------------------------- no I/O


def _row_record(row: tuple[object, ...], chunks: list[tuple[object, ...]]) -> JobRecord:
    """build_record of a row (in JOB_COLUMNS order) and its chunk tuples (seq first)."""
    return build_record(
        (0, *row),
        [(0, kind, payload, num, den, at) for _seq, kind, payload, num, den, at in chunks],
    )


@seed(SEED)
@PURE_RUNS
@given(_RUNS)
def test_row_change_and_scan_make_what_apply_makes(
    run: tuple[list[dict[str, object]], list[int], bool, bytes],
) -> None:
    """One job's run cut into two calls, applied as the SQL store does: the call that makes the
    row by RowChange (and by Scan, the direct path's new row), the next by RowChange on the
    existing row (columns updated, chunks deleted on a restart, then appended) = from_events,
    with ``expires_at`` by the SQL stores' rule."""
    specs, sizes, _one_job, unique = run
    keys, events = _events([dict(s) for s in specs], unique)
    note(SEED_NOTE)
    key = keys[0]
    mine = [e for e in events if e.key == key]
    cut = sizes[0] % (len(mine) + 1)
    calls = [mine[:cut], mine[cut:]]
    row: dict[str, object] | None = None
    chunks: list[tuple[object, ...]] = []
    for call in calls:
        if row is None:
            change = RowChange().apply_all(call, DEFAULT_TTL)
            if not change.created:
                continue
            row = change.fresh_row(key)
            chunks = list(change.chunks)
            scan = Scan(key, call, DEFAULT_TTL)
            if not scan.submitted and call[0].kind is not EventKind.HEARTBEAT:
                # the direct path's new row (runs without submitted that start with a creator)
                assert_same(_row_record(scan.row, scan.chunks), _reference(key, call))
                assert scan.row[_EXPIRES] == _sql_expiry(key, [call], DEFAULT_TTL)
        else:
            change = RowChange(
                attempt=row["attempt"],  # type: ignore[arg-type]
                started_at=row["started_at"],  # type: ignore[arg-type]
                function=row["function"],  # type: ignore[arg-type]
                next_seq=row["next_seq"],  # type: ignore[arg-type]
                exists=True,
            ).apply_all(call, DEFAULT_TTL)
            row.update(change.changes)
            chunks = [] if change.cleared else chunks
            chunks += change.chunks
    want = _reference(key, mine)
    assert (row is None) == (want is None)
    if row is not None and want is not None:
        assert_same(_row_record(tuple(row[c] for c in JOB_COLUMNS), chunks), want)
        assert row["expires_at"] == _sql_expiry(key, calls, DEFAULT_TTL), "expires_at"


_EXPIRES = JOB_COLUMNS.index("expires_at")


# ---------------------------------------------------------------------------------- SQL stores


@pytest.fixture(scope="module")
def _own_databases(request: pytest.FixtureRequest) -> Iterator[Callable[[str], str]]:
    """``own(kind) -> url``: a SQLite file, or a database of this module's own on the PostgreSQL /
    MariaDB server of ``postgres_url`` / ``mysql_url``; the databases are dropped afterwards."""
    made: list[tuple[str, str]] = []
    tmp = request.getfixturevalue("tmp_path_factory").mktemp("apply")
    name = f"gs_plugins_{RUN}"

    def own(kind: str) -> str:
        if kind == "sqlite":
            return f"sqlite:///{tmp}/apply.db"
        base = str(request.getfixturevalue("postgres_url" if kind == "postgres" else "mysql_url"))
        _admin(base, f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}")
        made.append((base, name))
        return str(sa.make_url(base).set(database=name).render_as_string(hide_password=False))

    yield own
    for base, db in made:
        _admin(base, f"DROP DATABASE IF EXISTS {db}")


def _admin(url: str, *statements: str) -> None:
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            for statement in statements:
                conn.execute(sa.text(statement))
    finally:
        engine.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgres", "mysql"])
def sql_store(
    request: pytest.FixtureRequest, _own_databases: Callable[[str], str]
) -> Iterator[Store]:
    store = open_store(_own_databases(request.param))
    try:
        yield store
    finally:
        store.close()


@seed(SEED)
@STORE_RUNS
@given(run=_RUNS)
def test_sql_store_reads_back_what_apply_makes(
    sql_store: Store, run: tuple[list[dict[str, object]], list[int], bool, bytes]
) -> None:
    """RowChange (general path), Scan (direct statements) on a real database = from_events;
    ``expires_at`` as the SQL stores promise it."""
    _check_store(sql_store, run, lambda key, calls: _sql_expiry(key, calls, DEFAULT_TTL))


# ---------------------------------------------------------------------------------- Redis


@pytest.fixture(scope="module")
def redis_store() -> Iterator[Store]:
    """The Redis store on a redis-server of this module's own (no persistence), free port."""
    with PrivateServer(redis_spec()) as server:
        store = open_store(server.url)
        try:
            yield store
        finally:
            store.close()


@seed(SEED)
@STORE_RUNS
@given(run=_RUNS)
def test_redis_store_reads_back_what_apply_makes(
    redis_store: Store, run: tuple[list[dict[str, object]], list[int], bool, bytes]
) -> None:
    """The Lua write script on a real Redis = from_events."""
    _check_store(redis_store, run)


@seed(SEED)
@PURE_RUNS
@given(run=_RUNS, prefix=st.sampled_from(["gs", "a%b", "caf\u00e9"]))
def test_packed_write_is_the_script_call(
    run: tuple[list[dict[str, object]], list[int], bool, bytes], prefix: str
) -> None:
    """What the Redis store sends for a write (its own RESP packing) is byte for byte hiredis's
    packing of the write script's KEYS and ARGV (``script_args``), for every cut of a run."""
    from gearstash_redis.layout import Layout
    from gearstash_redis.write import WritePacker, script_args
    from hiredis import pack_command

    specs, sizes, one_job, unique = run
    _, events = _events([dict(s) for s in specs], unique)
    note(SEED_NOTE)
    layout = Layout(prefix)
    packer = WritePacker(layout, DEFAULT_TTL, 3600.0)
    sha = b"0123456789abcdef0123456789abcdef01234567"
    for call in _calls(events, sizes, one_job):
        keys, args = script_args(call, layout.keys, DEFAULT_TTL, 3600.0, now=T0)
        want = pack_command((b"EVALSHA", sha, len(keys), *keys, *args))
        assert packer.pack(call, sha, now=T0) == want
