"""A pytest plugin that keeps the suite off the machine's shared servers.

Every TCP connect made by the test process to a standard port (gearmand 4730, PostgreSQL 5432,
MariaDB 3306, Redis 6379, memcached 11211), on any host, is refused (``ConnectionRefusedError``)
and recorded; a run that tried any fails at the end and lists them.

Connections made from C (libpq) or by child processes (workers, php, the gearman tools) do not
pass through Python's socket module: a thread samples the kernel's TCP tables
(``/proc/net/tcp``, ``tcp6``) every 0.2 s for connections to a standard port, and names those
whose socket belongs to the test process or one of its descendants (other programs on the
machine may use these ports; they are not ours to judge). Any such connection fails the run too.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from gearstash.testing.servers import STANDARD_PORTS

_attempts: list[str] = []
_original_connect = socket.socket.connect
_original_connect_ex = socket.socket.connect_ex


def _standard(address: Any) -> str | None:
    if isinstance(address, tuple) and len(address) >= 2 and address[1] in STANDARD_PORTS:
        return f"{address[0]}:{address[1]} ({STANDARD_PORTS[address[1]]})"
    return None


def _connect(self: socket.socket, address: Any) -> None:
    where = _standard(address)
    if where is not None:
        _attempts.append(where)
        raise ConnectionRefusedError(f"the test suite may not reach a standard port: {where}")
    _original_connect(self, address)


def _connect_ex(self: socket.socket, address: Any) -> int:
    where = _standard(address)
    if where is not None:
        _attempts.append(where)
        return 111  # ECONNREFUSED
    return _original_connect_ex(self, address)


_SAMPLE_EVERY = 0.2
_TCP_STATES = {"01": "established", "02": "syn-sent"}
_samples = [0]
_seen: dict[str, str] = {}  # "pid comm -> remote" -> state
_stop = threading.Event()


def _standard_sockets() -> dict[str, str]:
    """socket inode -> "remote:port (state)" of this namespace's connections to standard ports."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port in STANDARD_PORTS and fields[3] in _TCP_STATES:
                found[fields[9]] = f"port {remote_port} ({_TCP_STATES[fields[3]]})"
    return found


def _descendants(root: int) -> list[int]:
    """``root`` and every process below it."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += parents.get(pid, [])
    return found


def _sample() -> None:
    while not _stop.wait(_SAMPLE_EVERY):
        _samples[0] += 1
        sockets = _standard_sockets()
        if not sockets:
            continue
        for pid in _descendants(os.getpid()):
            try:
                fds = list(Path(f"/proc/{pid}/fd").iterdir())
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            for fd in fds:
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                inode = target[len("socket:[") : -1] if target.startswith("socket:[") else ""
                if inode in sockets:
                    _seen[f"pid {pid} ({comm})"] = sockets[inode]


_sampler = threading.Thread(target=_sample, name="standard-port-sampler", daemon=True)


def pytest_configure(config: pytest.Config) -> None:
    socket.socket.connect = _connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _connect_ex  # type: ignore[method-assign]
    if not _sampler.is_alive():
        _sampler.start()


def pytest_unconfigure(config: pytest.Config) -> None:
    _stop.set()
    socket.socket.connect = _original_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _original_connect_ex  # type: ignore[method-assign]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if (_attempts or _seen) and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    ports = ", ".join(str(p) for p in sorted(STANDARD_PORTS))
    if _attempts or _seen:
        terminalreporter.section("standard ports", sep="=", red=True, bold=True)
        for where in sorted(set(_attempts)):
            terminalreporter.write_line(f"refused: a connect to {where}")
        for who, where in sorted(_seen.items()):
            terminalreporter.write_line(f"seen: {who} connected to {where}")
        terminalreporter.write_line("the suite reached for a standard port: the run fails")
    else:
        terminalreporter.write_line(
            f"standard ports ({ports}): no connect from the test process, and none from it or "
            f"its children in {_samples[0]} samples of the TCP tables"
        )
