"""Hostile handles and uniques through every store, and through a real gearmand + worker.

For each group of values that differ only in one hostile detail (a trailing space, letter case, a
control character, a NUL, SQL metacharacters, ``../``, invalid UTF-8, a percent-encoded lookalike,
one more byte...), a few jobs are written whose keys differ only in that detail, each with data and
a result of its own. Every job is then read back -- by its full reference, by bare handle, by a
handle + unique reference without server, and through ``str(ref)`` / ``JobRef.parse`` -- and must
come back as exactly its own record; the group's last value is never written and must read as
``None``. A store that compared keys loosely (MariaDB's default case-insensitive / PAD SPACE
collations, a ``LIKE``, a decode/normalise step, a key built by plain concatenation) would hand
out another job's record here.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from support.allstores import ALL_STORES, SHARED_KINDS, SQL_KINDS, open_kind
from workers import echo, running_worker

from gearstash import Client, State
from gearstash.errors import StoreError, StoreRejected
from gearstash.model.records import Event, EventKind, JobKey, JobRecord, JobRef
from gearstash.spine.manager import open_store
from gearstash.store.contract import Store, delete, get_after
from gearstash.testing import contract as testing

T0 = testing.T0
_numbers = itertools.count()

# name: values that differ only in the hostile detail; the LAST one is never written.
GROUPS: dict[str, list[bytes]] = {
    "spaces": [b"H:a b:1", b"H:a  b:1", b" H:ab:1", b"H:ab:1"],
    "trailing-space": [b"H:x:1", b"H:x:1 ", b"H:x:1   ", b"H:x:1  "],
    "control-chars": [
        b"H:x:1\t",
        b"H:x:1\n",
        b"H:x:1\r\n",
        b"H:x:1\x01",
        b"H:x:1\x1b[0m",
        b"H:x:1\x7f",
    ],
    "nul": [b"H:x:1\0", b"H:x:1", b"\0H:x:1", b"H:x:1\0\0"],
    "sql-meta": [
        b"H:x'; DROP TABLE gearstash_jobs; --",
        b"H:x%",
        b"H:x_",
        b"H:x\\",
        b"H:x\\\\",
        b'H:x"',
        b"H:x`; --",
        b"H:xa",
    ],
    "path": [
        b"../../etc/passwd",
        b"..%2F..%2Fetc%2Fpasswd",
        b"/etc/passwd",
        b"..\\..\\etc\\passwd",
        b"../etc/passwd",
    ],
    # invalid UTF-8 (a stray byte, a bad sequence, a surrogate, an overlong '/'), and the two
    # Unicode spellings of "e-acute" (a store that decoded and normalised would merge them)
    "invalid-utf8": [
        b"H:\xff:1",
        b"H:\xfe:1",
        b"H:\xc3\x28:1",
        b"H:\xed\xa0\x80:1",
        b"H:\xc3\xa9:1",
        b"H:e\xcc\x81:1",
        b"H:\xc0\xaf:1",
    ],
    "case": [b"H:x:a", b"H:X:A", b"H:x:A", b"H:X:a"],
    "trailing-byte": [b"H:x:1", b"H:x:10", b"H:x:1\xff", b"H:x:1\x01"],
    "percent-lookalike": [b"H%3Ax", b"H:x", b"H%3ax", b"H%253Ax"],
    "separators": [b"H:x:1#u", b"H:x:1@s", b"H:x:1,u", b"1:H,H:x:1", b"{H}:x:1", b"H:x:1:u"],
    "long-250": [b"H:" + b"x" * 247 + b"a", b"H:" + b"x" * 247 + b"b", b"H:" + b"x" * 247 + b"A"],
}


@pytest.fixture(params=ALL_STORES)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_url(request: pytest.FixtureRequest, kind: str) -> Iterator[str]:
    url, cleanup = open_kind(request, kind)
    yield url
    cleanup()


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    try:
        yield opened
    finally:
        opened.close()


def tagged(kind: str, value: bytes) -> bytes:
    """``value`` as this test uses it: on the shared SQL databases, after a tag unique to the test
    (so a bare-handle read cannot meet another run's rows); the hostile detail stays in place."""
    if kind not in SHARED_KINDS:
        return value
    tag = b"gs%s-%d|" % (testing.RUN.encode(), next(_numbers))
    return tag + value[len(tag) :] if len(value) > 200 else tag + value  # long ones keep their size


def job(key: JobKey, marker: bytes) -> list[Event]:
    return [
        Event(EventKind.STARTED, key, T0, function=b"f", worker="w"),
        Event(EventKind.DATA, key, T0 + 0.1, b"data:" + marker),
        Event(EventKind.COMPLETED, key, T0 + 0.2, b"result:" + marker),
    ]


def assert_own(record: JobRecord | None, key: JobKey, marker: bytes, how: str) -> None:
    assert record is not None, f"{how}: no record for {key!r}"
    assert record.key == key, f"{how}: got the record of {record.key!r}, wanted {key!r}"
    assert record.data == [b"data:" + marker], how
    assert record.result == b"result:" + marker, how
    assert record.state is State.COMPLETE, how


def fits(kind: str, key: JobKey) -> bool:
    return kind not in SQL_KINDS or (len(key.handle) <= 255 and len(key.unique) <= 255)


@pytest.mark.parametrize("role", ["handle", "unique"])
@pytest.mark.parametrize("group", list(GROUPS))
def test_keys_differing_only_in_a_hostile_detail_stay_apart(kind, store, group, role):
    server = testing.new_server("hostile")
    fixed = tagged(kind, b"H:fixed:%d" % next(_numbers))
    keys = []
    for value in GROUPS[group]:
        if role == "handle":
            keys.append(JobKey(server, tagged(kind, value), b"u"))
        else:
            keys.append(JobKey(server, fixed, value))
    written, absent = keys[:-1], keys[-1]
    markers = {key: b"%d" % i for i, key in enumerate(written)}
    # one batch per job, in order: the newest record with the fixed handle is the last one
    for key in written:
        store.write(job(key, markers[key]))

    full = [JobRef(k.handle, k.server, k.unique) for k in written]
    no_server = [JobRef(k.handle, None, k.unique) for k in written]
    reparsed = [JobRef.parse(str(ref)) for ref in full]
    assert reparsed == full, "str()/parse() changed a reference"
    got = store.get_many(full + no_server + reparsed)
    for i, key in enumerate(written):
        for how, record in (
            ("full ref", got[i]),
            ("ref without server", got[len(written) + i]),
            ("str/parse ref", got[2 * len(written) + i]),
        ):
            assert_own(record, key, markers[key], f"{group}/{role} {how}")
    if role == "handle":
        bare = [JobRef(k.handle) for k in written]
        bare_parsed = [JobRef.parse(str(ref)) for ref in bare]
        assert bare_parsed == bare
        for key, record in zip(written, store.get_many(bare), strict=True):
            assert_own(record, key, markers[key], f"{group} bare handle")
        for key, record in zip(written, store.get_many(bare_parsed), strict=True):
            assert_own(record, key, markers[key], f"{group} bare handle via str/parse")
    else:
        # all share the handle: a bare handle finds the newest, which is the last written
        newest = store.get_many([JobRef(fixed, server)])[0]
        assert_own(newest, written[-1], markers[written[-1]], f"{group} newest by handle")
    missing = store.get_many(
        [JobRef(absent.handle, absent.server, absent.unique)]
        + ([JobRef(absent.handle)] if role == "handle" else [])
    )
    assert missing == [None] * len(missing), f"{group}/{role}: a never-written key found {missing}"


@pytest.mark.parametrize("size", [250, 255, 256, 300, 1000])
@pytest.mark.parametrize("role", ["handle", "unique"])
def test_long_handles_and_uniques(kind, store, size, role):
    """Keys of ``size`` bytes differing in their last byte: stored apart, or (SQL, over 255 bytes)
    refused with a StoreError naming the limit, with nothing written."""
    server = testing.new_server("long")
    tag = tagged(kind, b"")
    if role == "handle":
        keys = [
            JobKey(server, tag + b"H" * (size - len(tag) - 1) + end, b"u") for end in (b"a", b"b")
        ]
    else:
        keys = [JobKey(server, tag + b"H:long", b"U" * (size - 1) + end) for end in (b"a", b"b")]
    refs = [JobRef(k.handle, k.server, k.unique) for k in keys]
    for i, key in enumerate(keys):
        if fits(kind, key):
            store.write(job(key, b"%d" % i))
        else:
            with pytest.raises(StoreError, match="255"):
                store.write(job(key, b"%d" % i))
    got = store.get_many(refs + [JobRef(k.handle) for k in keys])
    for i, key in enumerate(keys):
        for record in (got[i], got[2 + i] if role == "handle" else got[i]):
            if fits(kind, key):
                assert_own(record, key, b"%d" % i, f"{size}-byte {role}")
            else:
                assert record is None, "a refused write left a record"


def test_server_names_differing_in_case_or_trailing_space_stay_apart(kind, store):
    """Job servers are named through normalize_server (stripped, lower-cased), so such names do not
    reach a store from a worker or client; this documents what each store does with them anyway.

    MariaDB: the ``server`` column is VARCHAR utf8mb4_bin, a PAD SPACE collation -- ``'s '`` equals
    ``'s'`` -- so the store refuses a server name ending in a space (StoreRejected, nothing
    written) rather than write it into another job's row; a read of it finds nothing.
    """
    base = testing.new_server("srv")  # gs<RUN>-N-srv.test:4730 (the cleanup finds gs<RUN>-*)
    handle = tagged(kind, b"H:srv:1")
    keys = [JobKey(s, handle, b"u") for s in (base, base.replace("srv", "SRV"), base + " ")]
    for i, key in enumerate(keys):
        if kind == "mysql" and key.server.endswith(" "):
            with pytest.raises(StoreRejected, match="ending in a space"):
                store.write(job(key, b"%d" % i))
        else:
            store.write(job(key, b"%d" % i))
    got = store.get_many([JobRef(k.handle, k.server, k.unique) for k in keys])
    for i, (key, record) in enumerate(zip(keys, got, strict=True)):
        if kind == "mysql" and key.server.endswith(" "):
            assert record is None, "a refused server name read another job's record"
        else:
            assert_own(record, key, b"%d" % i, f"server {key.server!r}")


# ------------------------------------------------------------- through gearmand and a worker

# Uniques gearmand can carry (at most 63 bytes, no NUL) that differ only in a hostile detail.
WIRE_UNIQUES = [
    b"u 1",
    b"u 1 ",
    b"u 1  ",
    b"u\t1",
    b"u\n1",
    b"u\x011",
    b"U 1",
    b"u'; DROP TABLE gearstash_jobs; --",
    b"u%",
    b"u_",
    b"u\\",
    b"../../etc/passwd",
    b"u\xff1",
    b"u\xfe1",
    b"u%3A1",
    b"u:1",
    b"#u@1%",
    b"x" * 62 + b"a",
    b"x" * 62 + b"b",
]


@pytest.mark.gearmand
def test_hostile_uniques_through_gearmand_and_the_worker(kind, store_url, gearmand):
    with (
        running_worker([gearmand.address], store_url, {"echo": echo}),
        Client([gearmand.address], store=store_url, timeout=30) as client,
    ):
        refs = []
        for i, unique in enumerate(WIRE_UNIQUES):
            ref = client.submit_background("echo", b"payload %d" % i, unique=unique)
            assert ref.unique == unique
            refs.append(ref)
        assert len({r.handle for r in refs}) == len(refs), "gearmand coalesced distinct uniques"
        views = [client.wait(ref, timeout=30) for ref in refs]
        for i, (ref, view) in enumerate(zip(refs, views, strict=True)):
            assert view.state is State.COMPLETE, (ref, view.state)
            assert view.result == b"payload %d" % i, ref
            assert view.data == [b"payload %d" % i], ref
        # the same jobs through the printed references (what a user would keep)
        for i, ref in enumerate(refs):
            text = str(ref)
            assert text.isascii() and text.isprintable() and " " not in text
            again = client.fetch(text)
            assert again.state is State.COMPLETE and again.result == b"payload %d" % i, text
    store = open_store(store_url)
    try:
        records = store.get_many([JobRef(r.handle, None, r.unique) for r in refs])
        delete(store, refs)  # the shared databases: this server's handles come back next run
    finally:
        store.close()
    for i, (ref, record) in enumerate(zip(refs, records, strict=True)):
        assert record is not None and record.key.unique == WIRE_UNIQUES[i], ref
        assert record.key.server == gearmand.address and record.result == b"payload %d" % i


def test_a_cursor_past_the_last_chunk_reads_no_data(kind, store):
    # regression (memcache): a cursor read past the last data chunk of a job without warnings or
    # status raised KeyError (Client.wait on an echo job hit it)
    key = JobKey(testing.new_server("cursor"), tagged(kind, b"H:cursor:1"), b"u")
    store.write(job(key, b"0"))
    for after in (1, 5, 1 << 62):
        record = get_after(store, JobRef(key.handle, key.server, key.unique), after)
        assert record is not None and record.key == key and record.data == []
        assert record.data_offset == after and record.result == b"result:0"


@pytest.mark.gearmand
@pytest.mark.parametrize("kind", ALL_STORES)
def test_error_text_with_nul_and_invalid_utf8_is_stored_on_every_store(
    gearmand, kind: str, request: pytest.FixtureRequest
) -> None:
    url, cleanup = open_kind(request, kind)

    def nasty(job):
        raise ValueError("bad\0byte \udcff end")

    try:
        with (
            running_worker([gearmand.address], url, {"nasty": nasty, "echo": echo}),
            Client([gearmand.address], store=url) as client,
        ):
            view = client.wait(client.submit_background("nasty", b""), timeout=30)
            after = client.wait(client.submit_background("echo", b"next"), timeout=30)
        assert view.state is State.FAILED
        assert view.record is not None and view.record.error is not None
        assert view.record.error.kind == "exception"
        assert view.record.error.message.startswith("ValueError: bad\\x00byte")
        assert "\0" not in view.record.error.traceback
        assert after.result == b"next"
    finally:
        cleanup()
