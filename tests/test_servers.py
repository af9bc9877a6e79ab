"""The server starters themselves: gearstash.testing.gearmand.Gearmand,
gearstash.testing.servers.PrivateServer
(every kind), the session fixtures and need()."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import tempfile
import time

import pytest
from support.need import ALLOW_SKIP_ENV, need

from gearstash.errors import GearstashError
from gearstash.testing.gearmand import Gearmand, admin_command, find_gearmand, free_port
from gearstash.testing.servers import (
    STANDARD_PORTS,
    PrivateServer,
    mariadb_spec,
    memcached_command,
    memcached_spec,
    postgres_spec,
    redis_ping,
    redis_spec,
    sql_problem,
    tcp_reachable,
)

HANDLE = re.compile(r"Task created: (H:(.+):(\d+))")


def submit_background(gearman_tool: str, server: Gearmand, function: str, data: str) -> str:
    """Submit a background job with the C ``gearman`` tool; return its handle."""
    out = subprocess.run(
        [gearman_tool, "-h", server.host, "-p", str(server.port), "-f", function, "-b", "-v", data],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    ).stdout
    match = HANDLE.search(out)
    assert match, f"no handle in gearman's output: {out!r}"
    return match.group(1)


def handle_counter(handle: str) -> int:
    return int(handle.rsplit(":", 1)[1])


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_free_port_is_bindable():
    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # raises if something holds it


@pytest.mark.gearmand
def test_gearmand_answers_version_and_getpid(gearmand: Gearmand):
    assert gearmand.address == f"127.0.0.1:{gearmand.port}"
    assert gearmand.pid is not None
    assert re.fullmatch(r"OK \d+\.\d+\.\d+\S*", gearmand.admin("version"))
    assert gearmand.admin("getpid") == f"OK {gearmand.pid}"
    assert gearmand.admin("status") == ""  # multi-line answer: nothing queued yet
    assert gearmand.admin("no such command").startswith("ERR ")
    assert "Listening on 127.0.0.1" in gearmand.log_path.read_text()


@pytest.mark.gearmand
@pytest.mark.gearman_tools
def test_restart_keeps_the_port_and_restarts_the_handle_counter(
    gearmand: Gearmand, gearman_tool: str
):
    port, old_pid = gearmand.port, gearmand.pid
    first = submit_background(gearman_tool, gearmand, "gearstash_t", "one")
    before = submit_background(gearman_tool, gearmand, "gearstash_t", "two")
    assert handle_counter(before) == handle_counter(first) + 1
    assert admin_command(gearmand.host, port, "status") == "gearstash_t\t2\t0\t0"

    started = time.monotonic()
    gearmand.restart()
    took = time.monotonic() - started

    assert gearmand.port == port and gearmand.pid not in (None, old_pid)
    assert gearmand.admin("version").startswith("OK ")
    assert took < 15, f"restart on the same port took {took:.1f} s"  # not gearmand's 20 s bind retry
    assert gearmand.admin("status") == ""  # the memory queue is gone with the old server
    after = submit_background(gearman_tool, gearmand, "gearstash_t", "three")
    # The counter starts again: the new job gets the very handle the old server gave first.
    assert handle_counter(after) < handle_counter(before)
    assert after == first


@pytest.mark.gearmand
def test_restart_after_kill_with_a_client_connected(gearmand: Gearmand):
    old_pid = gearmand.pid
    assert old_pid is not None
    with socket.create_connection((gearmand.host, gearmand.port), timeout=5) as sock:
        sock.sendall(b"version\n")
        assert sock.recv(100).startswith(b"OK ")
        gearmand.kill()
        assert not process_exists(old_pid)
        gearmand.restart()  # the port is still in TIME_WAIT/half-closed on the old socket
    assert gearmand.pid not in (None, old_pid)
    assert gearmand.admin("getpid") == f"OK {gearmand.pid}"
    assert gearmand.log_path.read_text().count("Starting up with pid") == 2


@pytest.mark.gearmand
def test_kill_leaves_no_process(gearmand_factory):
    server = gearmand_factory()
    pid = server.pid
    assert pid is not None and process_exists(pid)
    server.kill()
    assert server.pid is None
    assert not process_exists(pid)  # killed *and* reaped: not even a zombie is left
    assert not tcp_reachable(server.host, server.port, timeout=1)
    server.kill()  # idempotent


@pytest.mark.gearmand
def test_stop_is_idempotent_and_removes_its_temp_dir():
    need(find_gearmand() is not None, "gearmand is not installed (gearman-job-server)")
    with Gearmand() as server:
        workdir, pid = server.workdir, server.pid
        assert pid is not None and workdir.is_dir() and server.log_path.is_file()
        server.restart()  # the temp dir survives a restart ...
        assert workdir.is_dir() and server.pid != pid
    assert not workdir.exists()  # ... but not stop()
    assert server.pid is None and not tcp_reachable(server.host, server.port, timeout=1)
    server.stop()  # idempotent
    assert server.pid is None


@pytest.mark.gearmand
def test_explicit_port_in_use_fails_at_once(gearmand: Gearmand):
    other = Gearmand(gearmand.port)
    started = time.monotonic()
    with pytest.raises(GearstashError, match="already in use"):
        other.start()
    # gearmand itself would retry bind() for ~20 s before giving up
    assert time.monotonic() - started < 15
    assert gearmand.admin("getpid") == f"OK {gearmand.pid}"
    other.stop()


@pytest.mark.gearmand
def test_a_picked_port_taken_meanwhile_moves_elsewhere(tmp_path):
    need(find_gearmand() is not None, "gearmand is not installed (gearman-job-server)")
    server = Gearmand(workdir=tmp_path)
    picked = server.port
    squatter = socket.socket()
    try:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", picked))
        squatter.listen()
        server.start()
        assert server.port != picked
        assert server.admin("getpid") == f"OK {server.pid}"
    finally:
        squatter.close()
        server.stop()


@pytest.mark.gearmand
def test_start_failure_carries_gearmand_output(gearmand_factory):
    with pytest.raises(GearstashError, match="unrecognised option"):
        gearmand_factory(extra_args=["--no-such-option"])


def test_missing_binary_is_a_gearstash_error(tmp_path):
    server = Gearmand(binary=str(tmp_path / "no-gearmand"))
    with pytest.raises(GearstashError, match="cannot run"):
        server.start()
    server.stop()
    assert server.pid is None


@pytest.mark.parametrize("run", ["first", "second"])
def test_memcached_answers_version_and_starts_empty(memcached: str, run: str):
    host, port = memcached.rsplit(":", 1)
    assert host == "127.0.0.1"
    assert memcached_command(host, int(port), "version").startswith("VERSION 1.")
    # the session's server is flushed per test: the key the other run set is gone
    assert memcached_command(host, int(port), "get gearstash_k") == "END"
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"set gearstash_k 0 0 2\r\nhi\r\nget gearstash_k\r\n")
        buf = b""
        while not buf.endswith(b"END\r\n"):
            chunk = sock.recv(4096)
            assert chunk, f"memcached closed early: {buf!r}"
            buf += chunk
    assert buf == b"STORED\r\nVALUE gearstash_k 0 2\r\nhi\r\nEND\r\n"


def test_memcached_server_fixture_is_a_private_one(
    memcached_server: PrivateServer, memcached: str
) -> None:
    assert memcached_server.address != memcached
    assert memcached_command(memcached_server.host, memcached_server.port, "version").startswith(
        "VERSION "
    )
    memcached_server.kill()
    assert memcached_server.pid is None
    host, port = memcached.rsplit(":", 1)
    assert memcached_command(host, int(port), "version").startswith("VERSION ")


@pytest.mark.parametrize(
    "spec", [memcached_spec, redis_spec, postgres_spec, mariadb_spec], ids=lambda f: f.__name__
)
def test_private_servers_restart_on_their_port_and_leave_nothing(own_server, spec) -> None:
    server = own_server(spec)
    folder, port, pid = server.folder, server.port, server.pid
    assert pid is not None and process_exists(pid) and folder.is_dir()
    assert port not in STANDARD_PORTS and tcp_reachable(server.host, port, timeout=5)
    server.stop()
    assert server.pid is None and not process_exists(pid)
    server.start()  # same port, same folder
    assert server.port == port and server.pid not in (None, pid)
    killed = server.pid
    assert killed is not None
    server.kill()
    assert not process_exists(killed) and not tcp_reachable(server.host, port, timeout=1)
    server.start()
    server.close()
    assert server.pid is None and not folder.exists()
    server.close()  # idempotent


def test_need_fails_unless_skipping_is_asked_for(monkeypatch):
    need(True, "never raised")
    monkeypatch.delenv(ALLOW_SKIP_ENV, raising=False)
    with pytest.raises(pytest.fail.Exception, match="missing thing"):
        need(False, "missing thing")
    monkeypatch.setenv(ALLOW_SKIP_ENV, "1")
    with pytest.raises(pytest.skip.Exception, match="missing thing"):
        need(False, "missing thing")
    need(True, "still never raised")


@pytest.mark.postgres
def test_postgres_url_fixture_reaches_a_private_server(postgres_url: str):
    assert postgres_url.startswith("postgresql+psycopg://postgres@127.0.0.1:")
    assert postgres_url.endswith("/test") and ":5432/" not in postgres_url
    assert sql_problem(postgres_url) is None


@pytest.mark.mysql
def test_mysql_url_fixture_reaches_a_private_server(mysql_url: str):
    assert mysql_url.startswith("mysql+pymysql://root@127.0.0.1:")
    assert mysql_url.endswith("/test") and ":3306/" not in mysql_url
    assert sql_problem(mysql_url) is None


def test_redis_url_fixture_reaches_a_private_server(redis_url: str):
    host_port = redis_url.removeprefix("redis://").removesuffix("/15")
    host, port = host_port.rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) != 6379
    assert redis_ping(host, int(port))


def test_the_guard_refuses_standard_ports() -> None:
    for port in STANDARD_PORTS:
        with socket.socket() as sock, pytest.raises(ConnectionRefusedError, match="standard port"):
            sock.connect(("127.0.0.1", port))
    from support import guard

    assert guard._attempts[-len(STANDARD_PORTS):]  # recorded ...
    del guard._attempts[-len(STANDARD_PORTS):]  # ... and forgotten: this test asked for them


def test_sql_problem_reports_a_dead_server():
    problem = sql_problem(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test", timeout=2)
    assert problem is not None and "OperationalError" in problem


def test_tmp_sqlite_url_is_a_file_in_tmp_path(tmp_sqlite_url: str, tmp_path):
    assert tmp_sqlite_url == f"sqlite:///{tmp_path}/gearstash.db"
    assert sql_problem(tmp_sqlite_url) is None
    assert (tmp_path / "gearstash.db").is_file()


def test_a_failed_start_leaves_no_temp_dir():
    need(find_gearmand() is not None, "gearmand is not installed (gearman-job-server)")
    server = Gearmand(extra_args=["--no-such-option"])
    with pytest.raises(GearstashError, match="unrecognised option") as failure:
        server.start()
    workdir = re.search(r"-- (\S+)/output\.log:", str(failure.value))
    assert workdir and workdir.group(1).startswith(tempfile.gettempdir())
    assert not os.path.exists(workdir.group(1))
    assert server.pid is None
