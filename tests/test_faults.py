"""Faults a real gearmand never shows: a scripted fake job server (tests/fakeserver.py) feeds the
worker and the client broken packets, silence and hostile handles.

Each worker fault is served on the first GRAB_JOB_UNIQ; the worker must log it, drop the
connection, reconnect (a second connection with CAN_DO again) and then run the well-formed job the
fake server assigns on the new connection.
"""

from __future__ import annotations

import logging
import os
import struct
import time
import uuid
from collections.abc import Iterator

import pytest
from fakeserver import FakeConnection, FakeServer
from workers import echo, running_worker

from gearstash import Client, JobRef, ProtocolError, ServerUnavailable, State
from gearstash.model.codec import json_to_bytes
from gearstash.model.records import JobKey
from gearstash.protocol.packets import (
    DEFAULT_MAX_PACKET,
    RES,
    PacketType,
    encode_request,
    encode_response,
)
from gearstash.spine.manager import open_store

T = PacketType
GOOD_JOB = (b"H:fake:2", b"echo", b"unique-after-reconnect", b"payload after reconnect")
FIRST_HANDLE = b"H:fake:1"


@pytest.fixture
def memory_url() -> str:
    return f"memory://faults-{uuid.uuid4().hex}"


@pytest.fixture
def worker_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.INFO, logger="gearstash.worker")
    yield caplog


def _raw(kind: int, body: bytes, declared: int | None = None) -> bytes:
    """A \\0RES packet built by hand (the encoder refuses to build broken ones)."""
    return RES + struct.pack(">II", kind, len(body) if declared is None else declared) + body


# ------------------------------------------------------------------------- worker faults

WORKER_FAULTS = {
    # name: (bytes sent instead of a job, then close from the server side?, what the log says)
    "bad-magic": (b"HTTP/1.1 400 Bad Request\r\n\r\n", False, "bad magic"),
    "unknown-type": (_raw(77, b"H:fake:1\0x"), False, "unknown packet type number 77"),
    "type-5-hole": (_raw(5, b""), False, "unknown packet type number 5"),
    "1GiB-body": (
        _raw(int(T.JOB_ASSIGN_UNIQ), b"H:fake:1\0echo\0u\0", declared=1 << 30),
        False,
        "declares a body of 1073741824 bytes, over the limit",
    ),
    "truncated-then-close": (
        encode_response(T.JOB_ASSIGN_UNIQ, FIRST_HANDLE, b"echo", b"u1", b"lost")[:21],
        True,
        "closed the connection",
    ),
    "assign-too-few-args": (
        _raw(int(T.JOB_ASSIGN_UNIQ), FIRST_HANDLE + b"\0echo"),
        False,
        "JOB_ASSIGN_UNIQ needs 4 NUL-separated arguments, got 2",
    ),
    "no-job-with-a-body": (_raw(int(T.NO_JOB), b"junk"), False, "NO_JOB must have an empty body"),
    "binary-bad-magic": (b"\0RE\xff" + struct.pack(">II", 6, 0), False, "bad magic"),
    "request-magic": (encode_request(T.NOOP), False, "got a request packet"),
    "one-byte-over-max-packet": (
        _raw(int(T.WORK_DATA), b"H:fake:1\0", declared=DEFAULT_MAX_PACKET + 1),
        False,
        f"declares a body of {DEFAULT_MAX_PACKET + 1} bytes, over the limit",
    ),
    "job-assign-too-few-args": (
        _raw(int(T.JOB_ASSIGN), FIRST_HANDLE + b"\0echo"),
        False,
        "JOB_ASSIGN needs 3 NUL-separated arguments, got 2",
    ),
    "truncated-header-then-close": (RES + b"\0\0\0", True, "closed the connection"),
}


def _fault_then_job(fault: bytes, close: bool):
    def script(conn: FakeConnection) -> None:
        conn.expect(T.CAN_DO)
        conn.expect(T.GRAB_JOB_UNIQ)
        if conn.index == 0:
            conn.send(fault)
            if close:
                return  # FakeServer closes the socket when the script returns
            assert conn.wait_closed(5.0), "the worker kept a connection that sent a broken packet"
            return
        conn.reply(T.JOB_ASSIGN_UNIQ, *GOOD_JOB)
        conn.expect(T.WORK_COMPLETE)
        conn.idle()

    return script


@pytest.mark.parametrize("name", list(WORKER_FAULTS))
def test_worker_drops_a_broken_connection_and_serves_the_next_one(name, memory_url, worker_log):
    fault, close, message = WORKER_FAULTS[name]
    with FakeServer(_fault_then_job(fault, close)) as fake:
        with running_worker([fake.address], memory_url, {"echo": echo}, read_timeout=5):
            index, complete = fake.wait_packet(T.WORK_COMPLETE, timeout=10)
        assert index == 1, "the job must be completed on the new connection"
        assert complete.args == (GOOD_JOB[0], GOOD_JOB[3])
        # the worker came back and registered its function again
        assert [i for i, p in fake.received(T.CAN_DO) if p.args == (b"echo",)][:2] == [0, 1]
        assert len(fake.connections) == 2
        assert fake.connections[0].peer_closed.is_set() or close
    problems = [
        r.getMessage()
        for r in worker_log.records
        if r.name == "gearstash.worker" and r.levelno >= logging.WARNING
    ]
    assert any(message in m and "reconnecting" in m for m in problems), problems

    store = open_store(memory_url)
    record, first = store.get_many(
        [JobRef(GOOD_JOB[0], fake.address, GOOD_JOB[2]), JobRef(FIRST_HANDLE)]
    )
    assert record is not None and record.state is State.COMPLETE
    assert record.key == JobKey(fake.address, GOOD_JOB[0], GOOD_JOB[2])
    assert record.result == GOOD_JOB[3] and record.data == [GOOD_JOB[3]]
    assert record.function == b"echo"
    assert first is None, "nothing of the broken assignment may reach the store"


def test_worker_keeps_working_through_error_packets(memory_url, worker_log):
    def script(conn: FakeConnection) -> None:
        conn.expect(T.GRAB_JOB_UNIQ)
        conn.reply(T.ERROR, b"JOB_NOT_FOUND", b"Job given in work result not found")
        conn.reply(T.NO_JOB)
        conn.expect(T.PRE_SLEEP)
        # while the worker sleeps: an ERROR, then the NOOP that wakes it
        conn.reply(T.ERROR, b"JOB_NOT_FOUND", b"stale handle from a previous life")
        conn.reply(T.NOOP)
        conn.expect(T.GRAB_JOB_UNIQ)
        conn.reply(T.ERROR, b"INVALID_COMMAND", b"whatever")
        conn.reply(T.JOB_ASSIGN_UNIQ, *GOOD_JOB)
        conn.expect(T.WORK_COMPLETE)
        conn.idle()

    with FakeServer(script) as fake:
        with running_worker([fake.address], memory_url, {"echo": echo}, read_timeout=5):
            index, complete = fake.wait_packet(T.WORK_COMPLETE, timeout=10)
        assert (index, complete.args) == (0, (GOOD_JOB[0], GOOD_JOB[3]))
        assert len(fake.connections) == 1, "an ERROR packet is no reason to reconnect"
    messages = [r.getMessage() for r in worker_log.records if r.name == "gearstash.worker"]
    assert sum("JOB_NOT_FOUND" in m for m in messages) == 2, messages
    assert any("INVALID_COMMAND" in m for m in messages), messages
    assert not any("reconnecting" in m for m in messages), messages
    record = open_store(memory_url).get_many([JobRef(GOOD_JOB[0], fake.address)])[0]
    assert record is not None and record.result == GOOD_JOB[3]


# ------------------------------------------------------------------------- client faults

BAD_STATUS = {
    "non-numeric-numerator": (b"1", b"1", b"x7", b"10"),
    "negative-denominator": (b"1", b"1", b"3", b"-10"),
    "known-is-not-a-flag": (b"yes", b"1", b"3", b"10"),
}


@pytest.mark.parametrize("name", list(BAD_STATUS))
def test_malformed_status_reply_raises_and_the_next_call_reconnects(name):
    handle = b"H:fake:7"

    def script(conn: FakeConnection) -> None:
        conn.handshake()
        request = conn.expect(T.GET_STATUS)
        if conn.index == 0:
            conn.reply(T.STATUS_RES, request.args[0], *BAD_STATUS[name])
        else:
            conn.reply(T.STATUS_RES, request.args[0], b"1", b"1", b"3", b"10")
        conn.idle()  # answers "unknown" to anything else on this connection

    with FakeServer(script) as fake, Client([fake.address], store="null://", timeout=5) as c:
        ref = JobRef(handle, fake.address)
        with pytest.raises(ProtocolError) as info:
            c.status(ref)
        assert info.value.side == "server"
        status = c.status(ref)
        assert (status.known, status.running, status.numerator, status.denominator) == (
            True,
            True,
            3,
            10,
        )
        assert len(fake.connections) == 2, "the connection that saw the bad reply must be re-made"
        assert fake.wait_for(fake.connections[0].finished.is_set, 2.0)
        assert fake.connections[0].peer_closed.is_set()


def test_malformed_unique_status_reply_raises_and_the_next_call_reconnects():
    def script(conn: FakeConnection) -> None:
        conn.handshake()
        request = conn.expect(T.GET_STATUS_UNIQUE)
        waiting = b"many" if conn.index == 0 else b"2"
        conn.reply(T.STATUS_RES_UNIQUE, request.args[0], b"1", b"0", b"0", b"0", waiting)
        conn.idle()

    with FakeServer(script) as fake, Client([fake.address], store="null://", timeout=5) as c:
        with pytest.raises(ProtocolError) as info:
            c.status_unique(b"u-1")
        assert info.value.side == "server"
        status = c.status_unique(b"u-1")
        assert (status.known, status.waiting_clients) == (True, 2)
        assert len(fake.connections) == 2


def test_malformed_work_status_fails_the_foreground_call_and_the_next_one_reconnects():
    def script(conn: FakeConnection) -> None:
        conn.handshake()
        conn.expect(T.SUBMIT_JOB)
        handle = b"H:fake:%d" % conn.index
        conn.reply(T.JOB_CREATED, handle)
        if conn.index == 0:
            conn.reply(T.WORK_STATUS, handle, b"1/2", b"2")
            conn.reply(T.WORK_DATA, handle, b"stale chunk")
            conn.reply(T.WORK_COMPLETE, handle, b"stale result")
        else:
            conn.reply(T.WORK_DATA, handle, b"fresh chunk")
            conn.reply(T.WORK_COMPLETE, handle, b"fresh result")
        conn.idle()

    with FakeServer(script) as fake, Client([fake.address], store="null://", timeout=5) as c:
        with pytest.raises(ProtocolError) as info:
            c.submit("echo", b"x")
        assert info.value.side == "server"
        chunks: list[bytes] = []
        view = c.submit("echo", b"y", on_data=chunks.append)
        assert view.result == b"fresh result" and chunks == [b"fresh chunk"]
        assert len(fake.connections) == 2


def test_status_batch_protocol_error_leaves_no_stale_replies():
    """A bad reply in the middle of a pipelined batch: the replies after it must not leak into
    the next call on the same connection."""

    def script(conn: FakeConnection) -> None:
        conn.handshake()
        while True:
            request = conn.expect(T.GET_STATUS)
            handle = request.args[0]
            if handle == b"H:fake:bad" and conn.index == 0:
                conn.reply(T.STATUS_RES, handle, b"1", b"1", b"oops", b"1")
            elif handle.startswith(b"H:fake:run"):
                conn.reply(T.STATUS_RES, handle, b"1", b"1", b"1", b"2")
            else:
                conn.reply(T.STATUS_RES, handle, b"0", b"0", b"0", b"0")

    with FakeServer(script) as fake, Client([fake.address], store="null://", timeout=2) as c:
        refs = [JobRef(h, fake.address) for h in (b"H:fake:bad", b"H:fake:run1", b"H:fake:run2")]
        with pytest.raises(ProtocolError):
            c.fetch_many(refs)
        view = c.fetch(JobRef(b"H:fake:other", fake.address))
        assert view.status is not None and view.status.known is False


@pytest.mark.parametrize("stall_at", ["handshake", "request"])
def test_silent_server_gives_server_unavailable_within_the_timeout(stall_at):
    def script(conn: FakeConnection) -> None:
        if stall_at == "request":
            conn.handshake()
        conn.stall(10)

    with FakeServer(script) as fake, Client([fake.address], store="null://", timeout=0.5) as c:
        for call in (
            lambda: c.status(JobRef(b"H:fake:1", fake.address)),
            lambda: c.submit_background("echo", b"x"),
            lambda: c.status_unique(b"some-unique"),
        ):
            started = time.monotonic()
            with pytest.raises(ServerUnavailable):
                call()
            assert time.monotonic() - started < 8  # the 0.5 s timeout, not the 10 s stall
        assert len(fake.connections) == 3  # each timeout dropped its connection


def test_silent_foreground_job_times_out():
    def script(conn: FakeConnection) -> None:
        conn.handshake()
        conn.expect(T.SUBMIT_JOB)
        conn.reply(T.JOB_CREATED, b"H:fake:9")
        conn.reply(T.WORK_DATA, b"H:fake:9", b"first and last words")
        conn.stall(10)

    with FakeServer(script) as fake, Client([fake.address], store="null://", timeout=0.5) as c:
        chunks: list[bytes] = []
        started = time.monotonic()
        with pytest.raises(ServerUnavailable, match="did not answer in time"):
            c.submit("echo", b"x", on_data=chunks.append)
        assert time.monotonic() - started < 8  # the 0.5 s timeout, not the 10 s stall
        assert chunks == [b"first and last words"]


@pytest.mark.gearmand
def test_eight_megabyte_payload_round_trips_through_gearmand(gearmand, memory_url):
    payload = os.urandom(8 * 1024 * 1024)
    with (
        running_worker([gearmand.address], memory_url, {"echo": echo}),
        Client([gearmand.address], store=memory_url, timeout=30) as c,
    ):
        view = c.submit("echo", payload, timeout=30)
        assert view.state is State.COMPLETE
        assert view.result == payload
        stored = c.fetch(view.ref)
        assert stored.result == payload and stored.data == [payload]


# ------------------------------------------------------------------------- uniques


def test_unique_over_63_bytes_is_refused_before_anything_is_sent():
    def script(conn: FakeConnection) -> None:
        conn.handshake()
        while True:
            packet = conn.read(10)
            if packet.kind in (T.SUBMIT_JOB_BG, T.SUBMIT_JOB):
                conn.reply(T.JOB_CREATED, b"H:fake:%d" % len(conn.packets))
            else:
                conn.answer(packet)

    submits = (T.SUBMIT_JOB, T.SUBMIT_JOB_BG, T.SUBMIT_JOB_HIGH_BG, T.GET_STATUS_UNIQUE)
    with FakeServer(script) as fake, Client([fake.address], store="null://", timeout=2) as c:
        for unique in (b"u" * 64, b"u" * 65, "é" * 32, b"x" * 1000):
            for call in (
                lambda u=unique: c.submit_background("echo", b"x", unique=u),
                lambda u=unique: c.submit_background("echo", b"x", unique=u, priority="high"),
                lambda u=unique: c.submit("echo", b"x", unique=u),
                lambda u=unique: c.status_unique(u),
            ):
                with pytest.raises(ProtocolError, match="63") as info:
                    call()
                assert info.value.side == "local"
        assert [p for _, p in fake.received() if p.kind in submits] == []
        # the fake server does see a unique of exactly 63 bytes: the check above is not vacuous
        ref = c.submit_background("echo", b"x", unique=b"u" * 63)
        assert ref.unique == b"u" * 63
        _, sent = fake.wait_packet(T.SUBMIT_JOB_BG)
        assert sent.args == (b"echo", b"u" * 63, b"x")


# ------------------------------------------------------------------------- hostile handles

HOSTILE_HANDLE = b"H:odd host/../../etc/passwd \"q\" 's' %41%25 #frag @at\xff\xfe\x80 \t:1"
HOSTILE_UNIQUE = b'u ../ "%41" #x @y \xfe%'
HOSTILE_PAYLOAD = b"payload\0with NUL and \xff"


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_hostile_handle_is_stored_and_fetched_back_exactly(kind, tmp_path, memory_url):
    url = memory_url if kind == "memory" else f"sqlite:///{tmp_path}/hostile.db"

    def worker_side(conn: FakeConnection) -> None:
        conn.expect(T.GRAB_JOB_UNIQ)
        conn.reply(T.JOB_ASSIGN_UNIQ, HOSTILE_HANDLE, b"echo", HOSTILE_UNIQUE, HOSTILE_PAYLOAD)
        conn.expect(T.WORK_COMPLETE)
        conn.idle()

    def client_side(conn: FakeConnection) -> None:
        conn.idle()  # STATUS_RES known=0: the job is over as far as the "server" knows

    with FakeServer([worker_side, client_side]) as fake:
        with running_worker([fake.address], url, {"echo": echo}, read_timeout=5):
            _, complete = fake.wait_packet(T.WORK_COMPLETE, timeout=10)
        assert complete.args == (HOSTILE_HANDLE, HOSTILE_PAYLOAD)

        ref = JobRef(HOSTILE_HANDLE, fake.address, HOSTILE_UNIQUE)
        text = str(ref)
        assert text.isprintable() and " " not in text and text.isascii()
        parsed = JobRef.parse(text)
        assert parsed == ref
        bare = JobRef.parse(str(JobRef(HOSTILE_HANDLE)))
        assert bare == JobRef(HOSTILE_HANDLE)

        store = open_store(url)
        try:
            records = store.get_many([ref, parsed, bare, JobRef(HOSTILE_HANDLE[:-1])])
        finally:
            store.close()
        for record in records[:3]:
            assert record is not None
            assert record.key == JobKey(fake.address, HOSTILE_HANDLE, HOSTILE_UNIQUE)
            assert record.state is State.COMPLETE
            assert record.result == HOSTILE_PAYLOAD and record.data == [HOSTILE_PAYLOAD]
        assert records[3] is None  # no prefix matching

        with Client([fake.address], store=url, timeout=5) as c:
            view = c.fetch(text)
            assert view.state is State.COMPLETE and view.result == HOSTILE_PAYLOAD
            doc = view.to_json()
        assert json_to_bytes(doc["handle"]) == HOSTILE_HANDLE
        assert json_to_bytes(doc["unique"]) == HOSTILE_UNIQUE
        assert JobRef.parse(doc["ref"]) == ref
        _, asked = fake.wait_packet(T.GET_STATUS)
        assert asked.args == (HOSTILE_HANDLE,)
