"""Start a private gearmand on a loopback port, for the demo and the tests.

Nothing here talks the binary Gearman protocol: a server counts as up once it answers the admin
text command ``version`` *and* ``getpid`` names the process we started (so a foreign server that
already holds the port is never mistaken for ours).

Facts of gearmand 1.1.20 (Debian 12's gearman-job-server) that shape this module:

* it runs as root without ``-u`` and needs ``--log-file``/``--pid-file`` (defaults point into /var);
* it listens within ~15 ms of exec on these machines;
* it sets SO_REUSEADDR, so a restart on the same port works at once, even after SIGKILL with
  clients connected (their TIME_WAIT sockets do not block the bind);
* when the port is held by a *listening* socket it silently retries ``bind()`` for ~20 s before
  giving up, so :meth:`Gearmand.start` checks the port itself first and fails fast;
* every restart starts the job-handle counter again at ``H:<host>:1``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from gearstash.errors import GearstashError
from gearstash.protocol.admin import AdminReader, encode_admin

__all__ = ["Gearmand", "admin_command", "find_gearmand", "free_port"]

_FALLBACK_BINARY = "/usr/sbin/gearmand"
_MULTILINE_COMMANDS = ("status", "workers", "show jobs", "show unique jobs")
_PROBE_TIMEOUT = 1.0
_POLL_INTERVAL = 0.01
_LOG_TAIL_LINES = 30


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now (the kernel's choice)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_is_listened(host: str, port: int) -> bool:
    """True when some socket already *listens* on host:port (what makes gearmand's bind fail).

    SO_REUSEADDR is set like gearmand sets it, so sockets in TIME_WAIT do not count.
    """
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
        return False


def find_gearmand() -> str | None:
    """The gearmand binary: on PATH, else Debian's /usr/sbin/gearmand, else None."""
    found = shutil.which("gearmand")
    if found:
        return found
    if os.path.isfile(_FALLBACK_BINARY) and os.access(_FALLBACK_BINARY, os.X_OK):
        return _FALLBACK_BINARY
    return None


def admin_command(host: str, port: int, command: str, timeout: float = 5.0) -> str:
    """Send one admin text command to a gearmand and return its answer.

    One-line answers (``version``, ``getpid``, ``cancel job H``, ``maxqueue F N``, any ``ERR``) come
    back without the line end. For ``status``, ``workers``, ``show jobs`` and ``show unique jobs``
    the lines before the closing ``.`` come back joined by ``\\n`` (empty when there are none).
    Raises OSError (including TimeoutError) when the server does not answer in ``timeout`` s.
    """
    multiline = command.strip().lower().startswith(_MULTILINE_COMMANDS)
    reader = AdminReader(multiline)
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(encode_admin(command.strip()))
        while not reader.done:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"gearmand {host}:{port} did not answer {command!r}")
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"gearmand {host}:{port} closed on {command!r}")
            reader.feed(chunk)
    if reader.error_line is not None:
        return reader.error_line
    return "\n".join(reader.result() or [])


def _stop_orphan(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server whose Gearmand was garbage-collected or outlived by the interpreter.

    gearmand runs in its own session, so nothing else would stop it when a demo or test run
    ends without calling stop().
    """
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=2.0)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class Gearmand:
    """A private gearmand on a loopback port, for demos and tests. Context manager.

    ``port=None`` picks a free port now, so :attr:`address` is known before :meth:`start`; if
    that port is taken by the time the server first starts, another one is picked. After that,
    and for an explicit port, a taken port fails at once. ``workdir=None`` uses a temporary
    directory, created on start and removed by :meth:`stop` (kept across :meth:`restart` and
    :meth:`kill`).
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        workdir: str | Path | None = None,
        extra_args: Sequence[str] = (),
        binary: str | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        if isinstance(extra_args, str):
            raise TypeError("extra_args must be a sequence of arguments, not one string")
        self.host = host
        self._auto_port = port is None
        self.port: int = free_port(host) if port is None else port
        self._given_workdir = Path(workdir) if workdir is not None else None
        self._tmpdir: Path | None = None
        self.extra_args: tuple[str, ...] = tuple(extra_args)
        self.binary = binary
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[[subprocess.Popen[bytes]], Gearmand] | None = None

    # -- properties --------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """``HOST:PORT``, the form gearstash clients and workers take."""
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    @property
    def workdir(self) -> Path:
        """Where the log and pid files live (a temporary directory is made on first use)."""
        if self._given_workdir is not None:
            return self._given_workdir
        if self._tmpdir is None:
            self._tmpdir = Path(tempfile.mkdtemp(prefix="gearstash-gearmand-"))
        return self._tmpdir

    @property
    def log_path(self) -> Path:
        return self.workdir / "gearmand.log"

    @property
    def pid_path(self) -> Path:
        return self.workdir / "gearmand.pid"

    @property
    def output_path(self) -> Path:
        """gearmand's own stdout and stderr (usually empty; option errors land here)."""
        return self.workdir / "gearmand.out"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else None."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self.pid is not None

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"<Gearmand {self.address} {state}>"

    # -- life cycle ------------------------------------------------------------------------

    def command(self) -> list[str]:
        """The argv :meth:`start` runs."""
        binary = self.binary or find_gearmand()
        if binary is None:
            raise GearstashError(
                "gearmand not found (neither on PATH nor at /usr/sbin/gearmand): "
                "install gearman-job-server, e.g. with scripts/setup.sh"
            )
        return [
            binary,
            f"--listen={self.host}",
            f"--port={self.port}",
            f"--log-file={self.log_path}",
            f"--pid-file={self.pid_path}",
            "--verbose=INFO",
            *self.extra_args,
        ]

    def start(self) -> None:
        """Start the server and wait until it answers; no-op when it already runs."""
        if self.running:
            return
        self._reap()
        attempts = 5 if self._auto_port else 1
        for attempt in range(attempts):
            if _port_is_listened(self.host, self.port):
                if attempt + 1 < attempts:
                    self.port = free_port(self.host)
                    continue
                raise GearstashError(
                    f"cannot start gearmand on {self.address}: the port is already in use"
                )
            self._spawn()
            return

    def _spawn(self) -> None:
        try:
            self._spawn_and_wait()
        except GearstashError:
            # The message already carries the log's tail: a failed start leaves no temp dir.
            self._drop_tmpdir()
            raise

    def _drop_tmpdir(self) -> None:
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def _spawn_and_wait(self) -> None:
        argv = self.command()
        self.workdir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()  # stale after a kill(); gearmand would overwrite it anyway
        # stdout/stderr go to a file, never a pipe (nobody would drain it): the log proper goes to
        # --log-file, but option errors and a log file that cannot be opened are only told here.
        try:
            with open(self.output_path, "ab") as output:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        except OSError as exc:
            raise GearstashError(f"cannot run {argv[0]}: {exc}") from exc
        self._proc = proc
        self._finalizer = weakref.finalize(self, _stop_orphan, proc)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = proc.poll()
            if code is not None:
                self._forget()
                raise GearstashError(
                    f"gearmand on {self.address} exited with status {code} during start-up"
                    f"{self._log_tail()}"
                )
            if self._answers(proc.pid):
                self._auto_port = False  # from now on the address stays what callers were told
                return
            if time.monotonic() >= deadline:
                self._terminate(timeout=2.0)
                raise GearstashError(
                    f"gearmand on {self.address} did not answer within {self.startup_timeout} s"
                    f"{self._log_tail()}"
                )
            time.sleep(_POLL_INTERVAL)

    def _answers(self, pid: int) -> bool:
        try:
            version = admin_command(self.host, self.port, "version", timeout=_PROBE_TIMEOUT)
            if not version.startswith("OK"):
                return False
            answer = admin_command(self.host, self.port, "getpid", timeout=_PROBE_TIMEOUT)
        except OSError:
            return False
        return answer == f"OK {pid}"

    def version(self) -> str:
        """The server's version string, e.g. ``1.1.20+ds`` (asks the admin ``version``)."""
        return self.admin("version").removeprefix("OK ").strip()

    def admin(self, command: str, timeout: float = 5.0) -> str:
        """Send an admin text command to this server; see :func:`admin_command`."""
        return admin_command(self.host, self.port, command, timeout=timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL; remove a temporary workdir.

        Idempotent: stopping a stopped (or killed) server only cleans up.
        """
        self._terminate(timeout)
        self._drop_tmpdir()

    def kill(self) -> None:
        """SIGKILL the server (a crash); the workdir stays, so :meth:`restart` still works."""
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                self._signal(proc, signal.SIGKILL)
            proc.wait()
        self._forget()

    def restart(self) -> None:
        """Stop (if running) and start again on the SAME port and workdir.

        The new server numbers job handles from ``H:<host>:1`` again, and jobs in the memory
        queue are gone; only a persistent queue given in ``extra_args`` brings them back.
        """
        self._terminate(timeout=10.0)
        self._spawn_same_port()

    def _spawn_same_port(self) -> None:
        if _port_is_listened(self.host, self.port):
            raise GearstashError(
                f"cannot restart gearmand on {self.address}: the port is already in use"
            )
        self._spawn()

    def _terminate(self, timeout: float) -> None:
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                self._signal(proc, signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self._signal(proc, signal.SIGKILL)
                    proc.wait()
            else:
                proc.wait()
        self._forget()

    def _reap(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._forget()

    def _forget(self) -> None:
        self._proc = None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        # gearmand leads its own session (start_new_session=True): signal the whole group.
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            proc.send_signal(sig)

    def _log_tail(self) -> str:
        parts = []
        for path in (self.output_path, self.log_path):
            try:
                lines = path.read_text(errors="replace").splitlines()
            except OSError:
                parts.append(f"(no file {path})")
                continue
            if lines:
                tail = "\n".join(lines[-_LOG_TAIL_LINES:])
                parts.append(f"last lines of {path}:\n{tail}")
            else:
                parts.append(f"({path} is empty)")
        return "\n" + "\n".join(parts)

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
