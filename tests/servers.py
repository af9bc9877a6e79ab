"""Helpers for tests that need real servers: skip-or-fail, reachability checks, a private memcached.

``need(ok, reason)`` is the one place that decides what a missing server or binary means: a skip
on a developer's machine, a failure when ``GEARSTASH_REQUIRE_ALL=1`` (CI sets it), so CI always
covers every store. The gearmand starter itself lives in :mod:`gearstash.testing.gearmand` (the demo uses
it too); the pytest fixtures are in conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest

from gearstash.testing.gearmand import free_port

REQUIRE_ALL_ENV = "GEARSTASH_REQUIRE_ALL"

POSTGRES_URLS = (
    "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "postgresql+psycopg://root@127.0.0.1:5432/test",
)
MYSQL_URL = "mysql+pymysql://root@127.0.0.1:3306/test"
REDIS_URL = "redis://127.0.0.1:6379/15"

SETUP_HINT = "run scripts/setup.sh (or make setup)"


def require_all() -> bool:
    """True when missing servers must fail tests instead of skipping them (CI)."""
    return os.environ.get(REQUIRE_ALL_ENV, "").strip().lower() in ("1", "true", "yes")


def need(condition_ok: bool, reason: str) -> None:
    """Go on when ``condition_ok``; else skip with ``reason`` (fail under GEARSTASH_REQUIRE_ALL=1)."""
    if condition_ok:
        return
    if require_all():
        pytest.fail(f"{reason} [{REQUIRE_ALL_ENV}=1 makes this a failure]", pytrace=False)
    pytest.skip(reason)


# -- reachability -----------------------------------------------------------------------------


def tcp_reachable(host: str, port: int, timeout: float = 2.0) -> bool:
    """A TCP connect to host:port succeeds within ``timeout`` s."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def sql_problem(url: str, timeout: int = 2) -> str | None:
    """None when ``SELECT 1`` works through SQLAlchemy at ``url``; else what went wrong."""
    try:
        import sqlalchemy as sa
    except ImportError as exc:
        return f"SQLAlchemy is not installed ({exc})"
    try:
        args = {} if url.startswith("sqlite") else {"connect_timeout": timeout}
        engine = sa.create_engine(url, connect_args=args)
    except Exception as exc:  # a missing DBAPI driver shows up here
        return f"{type(exc).__name__}: {exc}"
    try:
        with engine.connect() as conn:
            if conn.execute(sa.text("SELECT 1")).scalar() != 1:
                return "SELECT 1 did not return 1"
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    finally:
        engine.dispose()
    return None


def redis_ping(host: str = "127.0.0.1", port: int = 6379, timeout: float = 2.0) -> bool:
    """The server at host:port answers a RESP ``PING`` with ``+PONG``."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


# -- binaries -----------------------------------------------------------------------------------


def find_binary(name: str, *fallbacks: str) -> str | None:
    """``name`` on PATH, else the first executable fallback path, else None."""
    found = shutil.which(name)
    if found:
        return found
    for path in fallbacks:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def find_memcached() -> str | None:
    return find_binary("memcached", "/usr/bin/memcached")


def find_gearman_tool() -> str | None:
    """The C client/worker ``gearman`` (Debian package gearman-tools)."""
    return find_binary("gearman", "/usr/bin/gearman")


def php_has_gearman(php: str | None = None) -> bool:
    """php-cli is installed and loads the pecl gearman extension."""
    php = php or find_binary("php", "/usr/bin/php")
    if php is None:
        return False
    try:
        out = subprocess.run(
            [php, "-r", "echo extension_loaded('gearman') ? 'yes' : 'no';"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return out.strip().endswith("yes")


# -- memcached ----------------------------------------------------------------------------------


def memcached_command(host: str, port: int, command: str, timeout: float = 5.0) -> str:
    """Send one text-protocol line to memcached; return the first answer line (no CRLF)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(command.encode() + b"\r\n")
        buf = b""
        while b"\r\n" not in buf:
            chunk = sock.recv(4096)
            if not chunk:
                break
            buf += chunk
    return buf.split(b"\r\n", 1)[0].decode("utf-8", "replace")


class Memcached:
    """A private memcached on a loopback port (``-m 64``), like gearstash.gearmand.Gearmand."""

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        memory_mb: int = 64,
        binary: str | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        self.host = host
        self.port = free_port(host) if port is None else port
        self.memory_mb = memory_mb
        self.binary = binary
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmpdir: Path | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def output_path(self) -> Path:
        if self._tmpdir is None:
            self._tmpdir = Path(tempfile.mkdtemp(prefix="gearstash-memcached-"))
        return self._tmpdir / "memcached.out"

    def command(self) -> list[str]:
        binary = self.binary or find_memcached()
        if binary is None:
            raise RuntimeError(f"memcached is not installed: {SETUP_HINT}")
        argv = [binary]
        if os.geteuid() == 0:
            argv += ["-u", "root"]  # memcached refuses to run as root without -u
        return [*argv, "-l", self.host, "-p", str(self.port), "-m", str(self.memory_mb)]

    def version(self) -> str:
        return memcached_command(self.host, self.port, "version")

    def start(self) -> None:
        if self.pid is not None:
            return
        argv = self.command()
        with open(self.output_path, "ab") as output:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._proc = proc
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = proc.poll()
            if code is not None:
                self._proc = None
                raise RuntimeError(
                    f"memcached on {self.address} exited with status {code}: {self._output()}"
                )
            try:
                if self.version().startswith("VERSION "):
                    return
            except OSError:
                pass
            if time.monotonic() >= deadline:
                self.stop()
                raise RuntimeError(
                    f"memcached on {self.address} did not answer within "
                    f"{self.startup_timeout} s: {self._output()}"
                )
            time.sleep(0.01)

    def _output(self) -> str:
        try:
            return self.output_path.read_text(errors="replace").strip() or "(no output)"
        except OSError:
            return "(no output)"

    def _signal(self, sig: signal.Signals) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait, SIGKILL fallback; idempotent."""
        proc = self._proc
        if proc is not None:
            self._signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                proc.wait()
        self._proc = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def kill(self) -> None:
        """SIGKILL (a crash)."""
        proc = self._proc
        if proc is not None:
            self._signal(signal.SIGKILL)
            proc.wait()
        self._proc = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
