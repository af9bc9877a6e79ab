"""Client.submit_background_many: pipelined submissions, one store write for the markers."""

from __future__ import annotations

import uuid

import pytest
from fakeserver import FakeConnection, FakeServer
from workers import running_worker

from gearstash import Client, ProtocolError, ServerError, State
from gearstash.protocol.admin import parse_status
from gearstash.protocol.packets import PacketType as T
from gearstash.spine.manager import open_store


class CountingStore:
    """A real memory store that counts write calls."""

    def __init__(self) -> None:
        self.inner = open_store(f"memory://many-{uuid.uuid4().hex}")
        self.url = "counting://"
        self.capabilities = frozenset({"push"})
        self.writes: list[int] = []

    def write(self, events):
        self.writes.append(len(events))
        self.inner.write(events)

    def get_many(self, refs):
        return self.inner.get_many(refs)

    def watch(self, refs):
        return self.inner.watch(refs)

    def close(self):
        pass


def test_many_jobs_in_order_one_marker_write_and_all_complete(gearmand):
    store = CountingStore()
    jobs = [("reverse", f"job{i}") for i in range(1500)] + [("reverse", b"mine", "my-unique")]
    with Client([gearmand.address], store=store) as client:
        refs = client.submit_background_many(jobs)
        assert store.writes == [1501], "one store write for every marker"
        assert len({r.handle for r in refs}) == 1501
        assert refs[-1].unique == b"my-unique"
        assert {v.state for v in client.fetch_many(refs)} == {State.QUEUED}
        with running_worker([gearmand.address], store):
            done = [client.wait(r, timeout=30) for r in refs[:1500:100] + refs[-1:]]
    expected = [f"job{i}"[::-1].encode() for i in range(0, 1500, 100)] + [b"enim"]
    assert [v.result for v in done] == expected


def test_a_bad_unique_refuses_the_whole_batch_before_anything_is_sent(gearmand):
    store = CountingStore()
    with Client([gearmand.address], store=store) as client:
        with pytest.raises(ProtocolError):
            client.submit_background_many([("f", b"1"), ("f", b"2", "u" * 64)])
        queued = {s.function for s in parse_status(gearmand.admin("status").splitlines())}
        assert "f" not in queued, queued  # not one job of the batch reached the server
        assert store.writes == []


def test_jobs_placed_on_a_dead_server_fail_over(gearmand_factory):
    live, dead = gearmand_factory(), gearmand_factory()
    dead.stop()
    store = CountingStore()
    with Client([live.address, dead.address], store=store, connect_timeout=1) as client:
        refs = client.submit_background_many([("echo", f"{i}") for i in range(40)])
        assert {r.server for r in refs} == {live.address}
        assert store.writes == [40]
        with running_worker([live.address], store):
            assert [client.wait(r, timeout=20).result for r in refs] == [
                f"{i}".encode() for i in range(40)
            ]


def test_a_refusal_midway_reports_what_was_submitted():
    def script(conn: FakeConnection) -> None:
        conn.handshake()
        for n in range(3):
            conn.expect(T.SUBMIT_JOB_BG)
            if n < 2:
                conn.reply(T.JOB_CREATED, b"H:fake:%d" % n)
            else:
                conn.reply(T.ERROR, b"QUEUE_ERROR", b"queue full")
        conn.idle()

    store = CountingStore()
    with FakeServer(script) as fake, Client([fake.address], store=store, timeout=5) as client:
        with pytest.raises(ServerError, match="QUEUE_ERROR") as info:
            client.submit_background_many([("f", f"{i}") for i in range(5)])
        assert [r.handle for r in info.value.submitted] == [b"H:fake:0", b"H:fake:1"]
        assert store.writes == [2]
