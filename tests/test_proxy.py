"""The capturing proxy (issue 12), end to end: ``gearstash proxy`` between a private gearmand and
workers gearstash did not write (PHP pecl gearman, the C ``gearman -w`` tool, Perl's
Gearman::Worker, raw sockets), capturing into private SQLite and Redis stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.need import need
from support.waiting import wait_until

from gearstash.errors import ProtocolError
from gearstash.model.records import JobInfo, JobRecord, JobRef, State
from gearstash.protocol.admin import parse_status
from gearstash.protocol.packets import Decoder, PacketType, encode_request, encode_response
from gearstash.proxy.framing import TEXT, Splitter, split_args
from gearstash.proxy.routes import Route
from gearstash.proxy.server import Proxy, Settings
from gearstash.spine.manager import get_plugin_manager, hookimpl, open_store
from gearstash.testing.gearmand import Gearmand, free_port
from gearstash.testing.servers import PrivateServer, find_binary, redis_spec

HERE = Path(__file__).parent
PHP_WORKER = HERE / "php" / "reverse_worker.php"
PHP_SUBMIT = HERE / "php" / "submit_background.php"
PERL_WORKER = HERE / "perl" / "reverse_worker.pl"
GEARSTASH = str(Path(sys.executable).with_name("gearstash"))
WAIT = 60.0  # generous bound of every poll: timing is bench/'s business


def wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    return wait_until(check, timeout, what)


class ProxyProcess:
    """``gearstash proxy`` as a process of its own, in front of ``upstream``."""

    def __init__(self, upstream: str, store: str, home: Path, *extra: str) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = home / f"proxy-{self.port}.log"
        argv = [GEARSTASH, "-v", "proxy", "--listen", self.address, "--upstream", upstream]
        argv += ["--store", store, *extra]
        env = {**os.environ, "GEARSTASH_HOME": str(home)}
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env
            )
        wait_for(f"the proxy to listen ({self.log})", self._listening, 30)

    def _listening(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()
        return _connects(self.port)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    """``start_proxy(upstream, store, *options)``; every proxy started is stopped afterwards."""
    made: list[ProxyProcess] = []

    def start(upstream: str, store: str, *extra: str) -> ProxyProcess:
        made.append(ProxyProcess(upstream, store, tmp_path, *extra))
        return made[-1]

    try:
        yield start
    finally:
        for proxy in made:
            if proxy.proc.poll() is None:
                proxy.proc.kill()
                proxy.proc.wait()


@pytest.fixture
def processes() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """``spawn(argv, log=path)``: worker processes, killed afterwards."""
    made: list[subprocess.Popen[bytes]] = []

    def spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            made.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out))
        return made[-1]

    try:
        yield spawn
    finally:
        for proc in made:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _php() -> str:
    php = find_binary("php", "/usr/bin/php")
    need(php is not None, "php-cli is not installed")
    assert php is not None
    return php


def php_worker(spawn: Any, port: int, tmp: Path, tick: float = 0.02, steps: int = 10) -> Any:
    argv = [_php(), str(PHP_WORKER), "127.0.0.1", str(port), str(tick), str(steps)]
    return spawn(argv, tmp / "php-worker.log")


def php_submit(g: Gearmand, *workloads: str, function: str = "reverse") -> list[JobRef]:
    """Submit background jobs with the PHP client; the full reference of each."""
    out = subprocess.run(
        [_php(), str(PHP_SUBMIT), "127.0.0.1", str(g.port), function, *workloads],
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    lines = [line.split() for line in out.splitlines()]
    assert len(lines) == len(workloads) and all(len(x) == 2 for x in lines), out
    return [JobRef(handle, g.address, unique) for handle, unique in lines]


def record(store_url: str, ref: JobRef) -> JobRecord | None:
    store = open_store(store_url)
    try:
        return store.get_many([ref])[0]
    finally:
        store.close()


def finished(store_url: str, ref: JobRef) -> JobRecord | None:
    rec = record(store_url, ref)
    return rec if rec is not None and rec.state in (State.COMPLETE, State.FAILED) else None


def workers_on(g: Gearmand, function: str) -> int:
    for row in parse_status(g.admin("status").splitlines()):
        if row.function == function:
            return row.workers
    return 0


# ---------------------------------------------------------------------------- workers of others


@pytest.mark.php
def test_php_worker_behind_the_proxy_fetched_by_the_clients_handle(
    gearmand: Gearmand, start_proxy: Any, processes: Any, tmp_path: Path, tmp_sqlite_url: str
) -> None:
    proxy = start_proxy(gearmand.address, tmp_sqlite_url)
    php_worker(processes, proxy.port, tmp_path)
    wait_for("the PHP worker to register", lambda: workers_on(gearmand, "reverse"))
    (full,) = php_submit(gearmand, "Rasmus")
    handle = full.handle
    ref = JobRef(handle, gearmand.address)  # the handle alone, as the client got it
    rec = wait_for("the job's record to end", lambda: finished(tmp_sqlite_url, ref))
    assert rec.state == State.COMPLETE and rec.result == b"sumsaR"
    assert rec.attempt == 1 and rec.key.unique.startswith(b"php-"), rec  # the client's unique
    assert [c.split(b" by ")[0] for c in rec.data] == [
        b"step %d of Rasmus" % i for i in range(1, 11)
    ]
    assert [(p.numerator, p.denominator) for p in rec.status] == [(i, 10) for i in range(1, 11)]
    assert rec.worker.startswith("gearstash-proxy@")
    fetched = subprocess.run(
        [
            GEARSTASH,
            "fetch",
            "--json",
            "-s",
            gearmand.address,
            "--store",
            tmp_sqlite_url,
            handle.decode(),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    doc = json.loads(fetched.splitlines()[0])
    assert doc["state"] == "complete", doc
    assert len(doc["data"]) == 10 and len(doc["status"]) == 10, doc
    assert proxy.stop() == 0


@pytest.mark.gearman_tools
def test_c_tool_worker_and_client_through_the_proxy(
    gearmand: Gearmand,
    gearman_tool: str,
    start_proxy: Any,
    processes: Any,
    tmp_path: Path,
    tmp_sqlite_url: str,
) -> None:
    proxy = start_proxy(gearmand.address, tmp_sqlite_url)
    processes(
        [gearman_tool, "-h", "127.0.0.1", "-p", str(proxy.port), "-w", "-f", "rev", "--", "rev"],
        tmp_path / "c-worker.log",
    )
    wait_for("the C worker to register", lambda: workers_on(gearmand, "rev"))
    # a background job from the C tool, straight to gearmand, with a unique we choose
    subprocess.run(
        [
            gearman_tool,
            "-h",
            "127.0.0.1",
            "-p",
            str(gearmand.port),
            "-b",
            "-u",
            "u-c-1",
            "-f",
            "rev",
            "abc",
        ],
        check=True,
        timeout=30,
        capture_output=True,
    )
    ref = JobRef(b"", gearmand.address, b"u-c-1")
    rec = wait_for("the C worker's job record", lambda: finished(tmp_sqlite_url, ref))
    assert rec.state == State.COMPLETE and rec.result.strip() == b"cba"
    # a foreground job from the C tool *through the proxy* (clients are relayed untouched)
    out = subprocess.run(
        [gearman_tool, "-h", "127.0.0.1", "-p", str(proxy.port), "-f", "rev", "xyz"],
        check=True,
        timeout=30,
        capture_output=True,
    ).stdout
    assert out.strip() == b"zyx"


def test_perl_worker_grab_job_gets_job_assign_and_the_record_its_unique(
    gearmand: Gearmand, start_proxy: Any, processes: Any, tmp_path: Path, tmp_sqlite_url: str
) -> None:
    perl = find_binary("perl", "/usr/bin/perl")
    probe = subprocess.run([perl or "perl", "-MGearman::Worker", "-e", "1"], capture_output=True)
    need(probe.returncode == 0, "Perl Gearman::Worker is missing (libgearman-client-perl)")
    proxy = start_proxy(gearmand.address, tmp_sqlite_url)
    processes([perl or "perl", str(PERL_WORKER), proxy.address, "3"], tmp_path / "perl.log")
    wait_for("the Perl worker to register", lambda: workers_on(gearmand, "reverse"))
    refs = php_submit(gearmand, "one", "two")
    for ref, word in zip(refs, ("one", "two"), strict=True):
        rec = wait_for(f"job {ref}", lambda ref=ref: finished(tmp_sqlite_url, ref))
        assert rec.result == word[::-1].encode()
        assert rec.data == [b"perl step %d of %s" % (i, word.encode()) for i in (1, 2, 3)]
        assert [(p.numerator, p.denominator) for p in rec.status] == [(1, 3), (2, 3), (3, 3)]
        assert rec.key.unique == ref.unique, "GRAB_JOB went upstream as GRAB_JOB_UNIQ"


def _raw(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read(sock: socket.socket, decoder: Decoder) -> Any:
    while True:
        packet = decoder.next_packet()
        if packet is not None:
            return packet
        chunk = sock.recv(65536)
        assert chunk, "connection closed"
        decoder.feed(chunk)


def test_raw_grab_job_worker_stray_work_and_admin_lines(
    gearmand: Gearmand, start_proxy: Any, tmp_sqlite_url: str
) -> None:
    proxy = start_proxy(gearmand.address, tmp_sqlite_url)
    with _raw(proxy.address) as worker, _raw(gearmand.address) as client:
        worker.sendall(encode_request(PacketType.CAN_DO, b"raw"))
        client.sendall(encode_request(PacketType.SUBMIT_JOB_BG, b"raw", b"u-raw", b"payload"))
        created = _read(client, Decoder())
        assert created.kind == PacketType.JOB_CREATED
        decoder = Decoder()
        worker.sendall(encode_request(PacketType.GRAB_JOB))
        assign = _read(worker, decoder)
        assert assign.kind == PacketType.JOB_ASSIGN  # what it asked for, not JOB_ASSIGN_UNIQ
        handle, function, workload = assign.args
        assert (function, workload) == (b"raw", b"payload")
        # a work packet for a handle this connection never got is relayed, never captured
        worker.sendall(encode_request(PacketType.WORK_DATA, b"H:nobody:1", b"stray"))
        stray = _read(worker, decoder)
        assert stray.kind == PacketType.ERROR and stray.args[0] == b"JOB_NOT_FOUND"
        assert decoder.buffered == 0
        worker.sendall(
            encode_request(PacketType.WORK_DATA, handle, b"chunk")
            + encode_request(PacketType.WORK_COMPLETE, handle, b"done")
            + b"version\n"
        )
        assert worker.recv(200).startswith(b"OK ")  # the admin line went through
    ref = JobRef(handle, gearmand.address, b"u-raw")
    rec = wait_for("the raw job's record", lambda: finished(tmp_sqlite_url, ref))
    assert rec.data == [b"chunk"] and rec.result == b"done" and rec.key.unique == b"u-raw"
    assert record(tmp_sqlite_url, JobRef(b"H:nobody:1")) is None


def test_proxy_captures_workloads_up_to_its_cap(
    gearmand: Gearmand, start_proxy: Any, tmp_sqlite_url: str
) -> None:
    proxy = start_proxy(
        gearmand.address, tmp_sqlite_url, "--capture-workload", "--workload-max-bytes", "8"
    )
    loads = {b"u-small": b"\x00load\xff!", b"u-big": b"123456789"}
    with _raw(proxy.address) as worker, _raw(gearmand.address) as client:
        worker.sendall(encode_request(PacketType.CAN_DO, b"cap"))
        for unique, load in loads.items():
            client.sendall(encode_request(PacketType.SUBMIT_JOB_BG, b"cap", unique, load))
            assert _read(client, Decoder()).kind == PacketType.JOB_CREATED
        decoder = Decoder()
        for _ in loads:
            worker.sendall(encode_request(PacketType.GRAB_JOB_UNIQ))
            handle, _function, unique, workload = _read(worker, decoder).args
            assert workload == loads[unique]
            worker.sendall(encode_request(PacketType.WORK_COMPLETE, handle, b"ok"))
            ref = JobRef(handle, gearmand.address, unique)
            rec = wait_for("the job's record", lambda ref=ref: finished(tmp_sqlite_url, ref))
            assert rec.workload == (loads[unique] if unique == b"u-small" else None)


class FakeUpstream:
    """A job server that records what it receives and answers with what the test gives it (for
    what gearmand cannot do: send an unknown packet type, or garbage)."""

    def __init__(self, answer: bytes) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.answer = answer
        self.received = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            received = b""
            while len(received) < 12:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                received += chunk
            self.received = received
            conn.sendall(self.answer)
            with contextlib.suppress(OSError):
                while conn.recv(65536):
                    pass

    def close(self) -> None:
        self.listener.close()


def _frame(magic: bytes, num: int, body: bytes) -> bytes:
    return magic + num.to_bytes(4, "big") + len(body).to_bytes(4, "big") + body


def test_unknown_packet_types_are_relayed_both_ways(start_proxy: Any) -> None:
    upstream = FakeUpstream(_frame(b"\0RES", 99, b"from the server\0x"))
    try:
        proxy = start_proxy(upstream.address, "null://")
        with _raw(proxy.address) as sock:
            sock.sendall(_frame(b"\0REQ", 77, b"to the server"))
            expected = _frame(b"\0RES", 99, b"from the server\0x")
            got = b""
            while len(got) < len(expected):
                chunk = sock.recv(65536)
                assert chunk, "connection closed"
                got += chunk
            assert got == expected
        assert upstream.received == _frame(b"\0REQ", 77, b"to the server")
    finally:
        upstream.close()


def test_garbage_from_upstream_closes_that_pair_with_a_reason(start_proxy: Any) -> None:
    upstream = FakeUpstream(b"\0REQ" + bytes(8))  # a request magic from a server
    try:
        proxy = start_proxy(upstream.address, "null://")
        with _raw(proxy.address) as sock:
            sock.sendall(encode_request(PacketType.ECHO_REQ, b"x"))
            assert sock.recv(100) == b""
        wait_for("the reason in the log", lambda: "bad magic" in proxy.output())
        assert "upstream" in proxy.output()
    finally:
        upstream.close()


def test_malformed_packet_closes_only_that_pair(
    gearmand: Gearmand, start_proxy: Any, tmp_sqlite_url: str
) -> None:
    proxy = start_proxy(gearmand.address, tmp_sqlite_url, "--max-packet", "4096")
    with _raw(proxy.address) as good, _raw(proxy.address) as bad, _raw(proxy.address) as big:
        good.sendall(encode_request(PacketType.ECHO_REQ, b"before"))
        assert _read(good, Decoder()).args == (b"before",)
        bad.sendall(b"\0REX" + bytes(8))
        big.sendall(b"\0REQ" + (16).to_bytes(4, "big") + (1 << 20).to_bytes(4, "big"))
        for sock in (bad, big):
            sock.settimeout(30)
            assert sock.recv(100) == b"", "the proxy closes a pair that broke the framing"
        decoder = Decoder()
        good.sendall(encode_request(PacketType.ECHO_REQ, b"after"))
        assert _read(good, decoder).args == (b"after",)
    log = wait_for(
        "the reasons in the log", lambda: "bad magic" in proxy.output() and proxy.output()
    )
    assert "over the limit of 4096" in log


def _echo_on_each(socks: list[socket.socket]) -> None:
    """ECHO_REQ on every connection at once, then each must get its own answer back."""
    for i, sock in enumerate(socks):
        sock.sendall(encode_request(PacketType.ECHO_REQ, b"%d" % i))
    for i, sock in enumerate(socks):
        assert _read(sock, Decoder()).args == (b"%d" % i,)


def test_a_thousand_connections_in_one_process(gearmand: Gearmand, start_proxy: Any) -> None:
    proxy = start_proxy(gearmand.address, "null://")
    socks = []
    try:
        for _ in range(1000):
            socks.append(_raw(proxy.address))
        _echo_on_each(socks)
    finally:
        for sock in socks:
            sock.close()


# ---------------------------------------------------------------------------- faults


@pytest.mark.php
def test_sigkill_mid_job_then_the_rerun_is_attempt_2_with_only_its_chunks(
    gearmand: Gearmand, start_proxy: Any, processes: Any, tmp_path: Path, tmp_sqlite_url: str
) -> None:
    proxy = start_proxy(gearmand.address, tmp_sqlite_url, "--lease", "3")
    first = php_worker(processes, proxy.port, tmp_path, tick=0.3)
    wait_for("the first worker", lambda: workers_on(gearmand, "reverse"))
    (ref,) = php_submit(gearmand, "killed")

    def some_chunks() -> bool:
        rec = record(tmp_sqlite_url, ref)
        return rec is not None and len(rec.data) >= 2

    wait_for("the first attempt's chunks", some_chunks)
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = php_worker(processes, proxy.port, tmp_path, tick=0.01)
    rec = wait_for("the re-run to end", lambda: finished(tmp_sqlite_url, ref))
    assert rec.attempt == 2 and rec.result == b"dellik"
    by = f" by {second.pid}".encode()
    assert len(rec.data) == 10 and all(c.endswith(by) for c in rec.data), rec.data


@pytest.mark.php
def test_gearmand_restart_workers_reconnect_and_no_record_mixes_jobs(
    gearmand_factory: Any, start_proxy: Any, processes: Any, tmp_path: Path, tmp_sqlite_url: str
) -> None:
    g = gearmand_factory()
    proxy = start_proxy(g.address, tmp_sqlite_url, "--store-writers", "3")
    for _ in range(2):
        php_worker(processes, proxy.port, tmp_path, tick=0.01, steps=3)
    wait_for("two workers", lambda: workers_on(g, "reverse") == 2)
    before = php_submit(g, "before-1", "before-2")
    for ref in before:
        wait_for("jobs before", lambda ref=ref: finished(tmp_sqlite_url, ref))
    g.stop()
    time.sleep(0.5)
    g.start()  # same port; handles start again at H:<host>:1
    wait_for("the workers to come back through the proxy", lambda: workers_on(g, "reverse") == 2)
    after = php_submit(g, "after-1", "after-2")
    assert {r.handle for r in after} & {r.handle for r in before}, "handles are reused"
    words = ("before-1", "before-2", "after-1", "after-2")
    for ref, word in zip(before + after, words, strict=True):
        rec = wait_for(word, lambda ref=ref: finished(tmp_sqlite_url, ref))
        assert rec.result == word[::-1].encode() and rec.attempt == 1
        assert len(rec.data) == 3 and all(f" of {word} by ".encode() in c for c in rec.data)
    assert "closed the connection" in proxy.output()


@pytest.mark.php
def test_store_outage_during_proxied_jobs_spooled_and_replayed(
    gearmand: Gearmand,
    start_proxy: Any,
    processes: Any,
    tmp_path: Path,
    own_server: Callable[..., PrivateServer],
) -> None:
    # append-only with fsync, stopped cleanly: an outage, not a crash of Redis (a write applied
    # by a Redis killed before it answered is replayed again: at least once)
    redis = own_server(lambda: redis_spec(persistent=True))
    try:
        url = f"{redis.url}?prefix=px"
        proxy = start_proxy(gearmand.address, url, "--spool", str(tmp_path / "spool"))
        php_worker(processes, proxy.port, tmp_path, tick=0.05, steps=5)
        wait_for("the worker", lambda: workers_on(gearmand, "reverse"))
        early = php_submit(gearmand, *(f"early-{i}" for i in range(3)))
        time.sleep(0.3)
        redis.stop()
        during = php_submit(gearmand, *(f"during-{i}" for i in range(3)))
        wait_for("the jobs to run while the store is down", lambda: _queue_empty(gearmand))
        redis.start()
        words = [f"early-{i}" for i in range(3)] + [f"during-{i}" for i in range(3)]
        for ref, word in zip(early + during, words, strict=True):
            rec = wait_for(f"{word} replayed", lambda ref=ref: finished(url, ref))
            assert rec.result == word[::-1].encode(), rec
            assert [c.split(b" by ")[0] for c in rec.data] == [
                b"step %d of %s" % (i, word.encode()) for i in range(1, 6)
            ]
        assert "spooling" in proxy.output()
        assert proxy.stop() == 0
    finally:
        redis.stop()


def _queue_empty(g: Gearmand) -> bool:
    rows = parse_status(g.admin("status").splitlines())
    return all(row.queued == 0 for row in rows if row.function == "reverse")


def test_upstream_down_closes_workers_and_the_proxy_keeps_listening(
    gearmand_factory: Any, start_proxy: Any, tmp_sqlite_url: str
) -> None:
    g = gearmand_factory()
    proxy = start_proxy(g.address, tmp_sqlite_url)
    with _raw(proxy.address) as sock:
        sock.sendall(encode_request(PacketType.ECHO_REQ, b"up"))
        assert _read(sock, Decoder()).args == (b"up",)
        g.stop()
        assert sock.recv(100) == b""
    with _raw(proxy.address) as sock:  # still listening; closes at once while upstream is down
        assert sock.recv(100) == b""
    g.start()

    def echoes() -> bool:
        try:
            with _raw(proxy.address) as sock:
                sock.sendall(encode_request(PacketType.ECHO_REQ, b"back"))
                return bool(_read(sock, Decoder()).args == (b"back",))
        except (OSError, AssertionError):
            return False

    wait_for("the proxy to reach gearmand again", echoes)
    assert "unreachable" in proxy.output()


# ---------------------------------------------------------------------------- framing (sans-IO)


def test_splitter_keeps_frames_as_they_came_in_any_chunking() -> None:
    stream = (
        encode_request(PacketType.CAN_DO, b"f")
        + b"status\n"
        + b"\0REQ"
        + (77).to_bytes(4, "big")
        + (3).to_bytes(4, "big")
        + b"a\0b"
        + encode_request(PacketType.WORK_DATA, b"H:x:1", b"da\0ta")
    )
    for size in (1, 2, 5, 13, len(stream)):
        splitter = Splitter(b"\0REQ", 1024)
        frames = []
        for i in range(0, len(stream), size):
            frames += splitter.feed(stream[i : i + size])
        assert b"".join(f.raw for f in frames) == stream
        assert [f.num for f in frames] == [1, TEXT, 77, 28]
        assert split_args(frames[3]) == (b"H:x:1", b"da\0ta")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\0RES" + bytes(8), "bad magic"),
        (b"\0REQ" + (1).to_bytes(4, "big") + (2048).to_bytes(4, "big"), "over the limit"),
        (b"x" * 70_000, "text line longer"),
    ],
)
def test_splitter_refuses_what_it_cannot_frame(data: bytes, reason: str) -> None:
    splitter = Splitter(b"\0REQ", 1024)
    with pytest.raises(ProtocolError, match=reason):
        splitter.feed(data)
    with pytest.raises(ProtocolError, match=reason):  # and stays broken
        splitter.feed(b"")


# ---------------------------------------------------------------------------- stopping, processes


@pytest.mark.php
def test_sigterm_lets_the_job_in_hand_finish_then_exits(
    gearmand: Gearmand, start_proxy: Any, processes: Any, tmp_path: Path, tmp_sqlite_url: str
) -> None:
    proxy = start_proxy(gearmand.address, tmp_sqlite_url, "--grace", "60")
    php_worker(processes, proxy.port, tmp_path, tick=0.15, steps=10)
    wait_for("the worker", lambda: workers_on(gearmand, "reverse"))
    (ref,) = php_submit(gearmand, "in-hand")
    wait_for("the job to start", lambda: record(tmp_sqlite_url, ref))
    proxy.proc.send_signal(signal.SIGTERM)
    assert proxy.stop() == 0
    rec = record(tmp_sqlite_url, ref)
    assert rec is not None and rec.state == State.COMPLETE and len(rec.data) == 10, rec
    assert "proxy stopping" in proxy.output() and "proxy stopped" in proxy.output()
    assert "gearstash proxy: stopped (exit 0)" in proxy.output().splitlines()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=2).close()


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def test_processes_share_the_port_and_stop_together(
    gearmand: Gearmand, start_proxy: Any, tmp_sqlite_url: str
) -> None:
    proxy = start_proxy(gearmand.address, tmp_sqlite_url, "--processes", "2")
    assert len(_children(proxy.proc.pid)) == 2
    socks = [_raw(proxy.address) for _ in range(20)]
    try:
        _echo_on_each(socks)
    finally:
        for sock in socks:
            sock.close()
    assert proxy.stop() == 0
    assert _children(proxy.proc.pid) == []


def test_observer_hooks_see_proxied_jobs(gearmand: Gearmand, tmp_sqlite_url: str) -> None:
    seen: list[tuple[Any, ...]] = []

    class Observer:
        @hookimpl
        def job_started(self, job: JobInfo) -> None:
            seen.append(("started", job.function, job.ref))

        @hookimpl
        def job_status(self, job: JobInfo, numerator: int, denominator: int) -> None:
            seen.append(("status", numerator, denominator))

        @hookimpl
        def job_data(self, job: JobInfo, data: bytes) -> None:
            seen.append(("data", data))

        @hookimpl
        def job_completed(self, job: JobInfo, result: bytes) -> None:
            seen.append(("completed", result))

    pm = get_plugin_manager()
    observer = Observer()
    pm.register(observer)
    loop = asyncio.new_event_loop()
    port = free_port()
    settings = Settings([Route.parse(f"127.0.0.1:{port}={gearmand.address}")], tmp_sqlite_url)
    try:
        proxy = Proxy(settings, loop)
        thread = threading.Thread(target=loop.run_until_complete, args=(proxy.serve(False),))
        thread.start()
        wait_for("the in-process proxy", lambda: _connects(port))
        with _raw(f"127.0.0.1:{port}") as worker, _raw(gearmand.address) as client:
            worker.sendall(encode_request(PacketType.CAN_DO, b"hooked"))
            client.sendall(encode_request(PacketType.SUBMIT_JOB_BG, b"hooked", b"u-h", b"w"))
            assert _read(client, Decoder()).kind == PacketType.JOB_CREATED
            decoder = Decoder()
            worker.sendall(encode_request(PacketType.GRAB_JOB_UNIQ))
            assign = _read(worker, decoder)
            assert assign.kind == PacketType.JOB_ASSIGN_UNIQ
            handle = assign.args[0]
            worker.sendall(
                encode_request(PacketType.WORK_STATUS, handle, b"1", b"2")
                + encode_request(PacketType.WORK_DATA, handle, b"half")
                + encode_request(PacketType.WORK_COMPLETE, handle, b"whole")
                + encode_request(PacketType.ECHO_REQ, b"after")
            )
            assert _read(worker, decoder).args == (b"after",)  # relayed behind the final packet
        loop.call_soon_threadsafe(proxy.stop)
        thread.join(timeout=60)
        assert not thread.is_alive()
    finally:
        pm.unregister(observer)
        loop.close()
    assert seen == [
        ("started", "hooked", JobRef(handle, gearmand.address, b"u-h")),
        ("status", 1, 2),
        ("data", b"half"),
        ("completed", b"whole"),
    ]
    rec = record(tmp_sqlite_url, JobRef(handle, gearmand.address, b"u-h"))
    assert rec is not None and rec.result == b"whole" and rec.data == [b"half"]


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _raw_job(
    proxy_address: str,
    g: Gearmand,
    function: bytes,
    unique: bytes,
    grab: PacketType = PacketType.GRAB_JOB_UNIQ,
    end: Callable[[bytes], bytes] | None = None,
) -> bytes:
    """Run one background job with a raw-socket worker through the proxy (asking with
    ``grab``, ending it with ``end(handle)``: by default WORK_COMPLETE ``done:UNIQUE``); return
    its handle."""
    with _raw(proxy_address) as worker, _raw(g.address) as client:
        worker.sendall(encode_request(PacketType.CAN_DO, function))
        client.sendall(encode_request(PacketType.SUBMIT_JOB_BG, function, unique, b"w"))
        assert _read(client, Decoder()).kind == PacketType.JOB_CREATED
        decoder = Decoder()
        worker.sendall(encode_request(grab))
        assign = _read(worker, decoder)
        assert assign.kind == PacketType.JOB_ASSIGN_UNIQ  # gearmand's answer to either grab
        handle: bytes = assign.args[0]
        ending = encode_request(PacketType.WORK_COMPLETE, handle, b"done:" + unique)
        worker.sendall((end(handle) if end else ending) + encode_request(PacketType.ECHO_REQ, b"s"))
        assert _read(worker, decoder).args == (b"s",)
    return handle


def test_routes_and_server_names_key_the_records(
    gearmand_factory: Any, start_proxy: Any, tmp_sqlite_url: str
) -> None:
    first, second = gearmand_factory(), gearmand_factory()
    extra = free_port()
    proxy = start_proxy(
        first.address,
        tmp_sqlite_url,
        "--server-name",
        "jobs.example:4730",
        "--route",
        f"127.0.0.1:{extra}={second.address}",
    )
    one = _raw_job(proxy.address, first, b"routed", b"u-first")
    two = _raw_job(f"127.0.0.1:{extra}", second, b"routed", b"u-second", PacketType.GRAB_JOB_ALL)
    rec = wait_for("the first", lambda: finished(tmp_sqlite_url, JobRef(one, "jobs.example:4730")))
    assert rec.result == b"done:u-first"
    rec = wait_for("the second", lambda: finished(tmp_sqlite_url, JobRef(two, second.address)))
    assert rec.result == b"done:u-second"
    assert record(tmp_sqlite_url, JobRef(one, first.address, b"u-first")) is None


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_reader_that_does_not_read_cannot_make_the_proxy_hoard(
    gearmand: Gearmand, start_proxy: Any
) -> None:
    proxy = start_proxy(gearmand.address, "null://")
    chunk = encode_request(PacketType.ECHO_REQ, b"x" * (256 << 10))
    total = 256  # 64 MiB of echoes, sent without reading the answers
    with _raw(proxy.address) as sock:
        base = _rss_kib(proxy.proc.pid)
        sent = [0]

        def send() -> None:
            with contextlib.suppress(OSError):
                for _ in range(total):
                    sock.sendall(chunk)
                    sent[0] += 1

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        # gearmand takes every request and keeps the answers itself; the proxy, whose worker
        # side is not read, must stop reading gearmand instead of holding the answers
        wait_for("the sender to finish or stall", lambda: sent[0] == total or _stalled(sent), 120)
        time.sleep(1.0)
        grown = _rss_kib(proxy.proc.pid) - base
        assert grown < 24 * 1024, f"the proxy grew by {grown} KiB while nobody read"
        decoder = Decoder(max_packet=1 << 20)
        for _ in range(total):
            assert _read(sock, decoder).args == (b"x" * (256 << 10),)
        sender.join(timeout=60)
        assert sent[0] == total


def _stalled(sent: list[int]) -> bool:
    before = sent[0]
    time.sleep(0.5)
    return sent[0] == before and before > 0


def test_sigterm_with_capture_off_relays_the_last_final_and_nothing_after_it(
    gearmand: Gearmand, start_proxy: Any
) -> None:
    proxy = start_proxy(gearmand.address, "null://", "--grace", "60")
    with _raw(proxy.address) as worker, _raw(gearmand.address) as client:
        worker.sendall(encode_request(PacketType.CAN_DO, b"last"))
        client.sendall(encode_request(PacketType.SUBMIT_JOB_BG, b"last", b"u-last", b"w"))
        assert _read(client, Decoder()).kind == PacketType.JOB_CREATED
        worker.sendall(encode_request(PacketType.GRAB_JOB_UNIQ))
        handle = _read(worker, Decoder()).args[0]
        proxy.proc.send_signal(signal.SIGTERM)
        wait_for("the proxy to stop listening", lambda: not _connects(proxy.port))
        worker.sendall(
            encode_request(PacketType.WORK_COMPLETE, handle, b"ok")
            + encode_request(PacketType.GRAB_JOB_UNIQ)
        )
        assert worker.recv(100) == b"", "closed after its last job, the grab not relayed"
    assert proxy.stop() == 0
    rows = [r for r in parse_status(gearmand.admin("status").splitlines()) if r.function == "last"]
    assert all(r.queued == 0 and r.running == 0 for r in rows), rows


def test_grab_job_all_then_job_assign_all_is_captured(
    start_proxy: Any, tmp_sqlite_url: str
) -> None:
    # gearmand 1.1.20 answers GRAB_JOB_ALL with JOB_ASSIGN_UNIQ for the jobs a client can
    # submit it, so a server of the test's own sends the JOB_ASSIGN_ALL
    assign = encode_response(PacketType.JOB_ASSIGN_ALL, b"H:fake:1", b"all", b"u-all", b"r", b"w")
    upstream = FakeUpstream(assign)
    try:
        proxy = start_proxy(upstream.address, tmp_sqlite_url)
        with _raw(proxy.address) as worker:
            worker.sendall(encode_request(PacketType.GRAB_JOB_ALL))
            got = _read(worker, Decoder())
            assert got.kind == PacketType.JOB_ASSIGN_ALL and got.args[0] == b"H:fake:1"
            worker.sendall(encode_request(PacketType.WORK_COMPLETE, b"H:fake:1", b"reduced"))
            ref = JobRef(b"H:fake:1", upstream.address, b"u-all")
            rec = wait_for("the record", lambda: finished(tmp_sqlite_url, ref))
        assert rec.result == b"reduced" and rec.function == b"all"
    finally:
        upstream.close()


def test_work_fail_and_work_exception_end_the_records_failed(
    gearmand: Gearmand, start_proxy: Any, tmp_sqlite_url: str
) -> None:
    proxy = start_proxy(gearmand.address, tmp_sqlite_url)

    def fail(handle: bytes) -> bytes:
        return encode_request(PacketType.WORK_WARNING, handle, b"careful") + encode_request(
            PacketType.WORK_FAIL, handle
        )

    def exception(handle: bytes) -> bytes:
        return encode_request(PacketType.WORK_EXCEPTION, handle, b"ValueError: no")

    failed = _raw_job(proxy.address, gearmand, b"ends", b"u-fail", end=fail)
    raised = _raw_job(proxy.address, gearmand, b"ends", b"u-exc", end=exception)
    rec = wait_for("the fail", lambda: finished(tmp_sqlite_url, JobRef(failed, gearmand.address)))
    assert rec.state == State.FAILED and rec.error is not None and rec.error.kind == "fail"
    assert rec.warnings == [b"careful"]
    rec = wait_for("the raise", lambda: finished(tmp_sqlite_url, JobRef(raised, gearmand.address)))
    assert rec.state == State.FAILED and rec.error is not None
    assert (rec.error.kind, rec.error.message) == ("exception", "ValueError: no")


def test_processes_stop_when_their_parent_is_killed(
    gearmand: Gearmand, start_proxy: Any, tmp_sqlite_url: str
) -> None:
    proxy = start_proxy(gearmand.address, tmp_sqlite_url, "--processes", "2")
    children = _children(proxy.proc.pid)
    assert len(children) == 2
    proxy.proc.kill()
    proxy.proc.wait()
    wait_for("the orphans to stop", lambda: not any(Path(f"/proc/{c}").exists() for c in children))
    assert "parent process" in proxy.output() and "proxy stopped" in proxy.output()
