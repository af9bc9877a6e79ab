"""A private gearmand on a loopback port, for the demo and the tests: a
:class:`~gearstash.testing.servers.PrivateServer` run from :func:`gearmand_spec`, with the
admin-protocol front :class:`Gearmand`.

Nothing here talks the binary Gearman protocol: a server counts as up once it answers the admin
text command ``version`` *and* ``getpid`` names the process that wrote our pid file (so a
foreign server that already holds the port is never mistaken for ours).

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
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from gearstash.errors import GearstashError
from gearstash.protocol.admin import AdminReader, encode_admin
from gearstash.testing.servers import HOST, PrivateServer, ServerSpec, free_port

__all__ = ["Gearmand", "admin_command", "find_gearmand", "free_port", "gearmand_spec"]

_FALLBACK_BINARY = "/usr/sbin/gearmand"
_MULTILINE_COMMANDS = ("status", "workers", "show jobs", "show unique jobs")
_PROBE_TIMEOUT = 1.0
_POLL_INTERVAL = 0.01
_LOG_TAIL_LINES = 30


def _port_is_listened(host: str, port: int) -> bool:
    """True when some socket already *listens* on host:port (what makes gearmand's bind fail).

    SO_REUSEADDR is set like gearmand sets it, so sockets in TIME_WAIT do not count.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
        return False


def _is_script(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"#!"
    except OSError:
        return False


def find_gearmand() -> str | None:
    """The C gearmand binary: on PATH, else Debian's /usr/sbin/gearmand, else None.

    Debian's gearman-server package installs Perl's Gearman::Server as /usr/bin/gearmand too; a
    ``gearmand`` that is a script is not this one.
    """
    found = shutil.which("gearmand")
    if found and not _is_script(found):
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


_LOG = "gearmand.log"
_PID = "gearmand.pid"


def gearmand_spec(
    binary: str | None = None, extra_args: Sequence[str] = (), startup_timeout: float = 10.0
) -> ServerSpec:
    """gearmand (``binary``, else the one :func:`find_gearmand` finds) with its log and pid file
    in the server's folder, plus ``extra_args`` (a persistent queue, say). Up once it answers
    ``version`` and ``getpid`` names the pid it wrote."""

    def argv(port: int, folder: Path) -> list[str]:
        found = binary or find_gearmand()
        if found is None:
            raise GearstashError(
                "gearmand not found (neither on PATH nor at /usr/sbin/gearmand): "
                "install gearman-job-server, e.g. with scripts/setup.sh"
            )
        return [
            found,
            f"--listen={HOST}",
            f"--port={port}",
            f"--log-file={folder / _LOG}",
            f"--pid-file={folder / _PID}",
            "--verbose=INFO",
            *extra_args,
        ]

    def ready(port: int, folder: Path) -> bool:
        try:
            pid = int((folder / _PID).read_text().strip())
            if not admin_command(HOST, port, "version", timeout=_PROBE_TIMEOUT).startswith("OK"):
                return False
            return admin_command(HOST, port, "getpid", timeout=_PROBE_TIMEOUT) == f"OK {pid}"
        except (OSError, ValueError):
            return False

    return ServerSpec("gearmand", argv, ready, startup_timeout=startup_timeout)


class Gearmand:
    """A private gearmand on 127.0.0.1, for demos and tests: a
    :class:`~gearstash.testing.servers.PrivateServer` of :func:`gearmand_spec` with the admin
    protocol in front. Context manager.

    ``port=None`` picks a free port now, so :attr:`address` is known before :meth:`start`; if
    that port is taken by the time the server first starts, another one is picked. After that,
    and for an explicit port, a taken port fails at once (gearmand itself would retry ``bind()``
    for 20 s). ``workdir=None`` uses a temporary directory, made on first use and removed by
    :meth:`stop` (kept across :meth:`restart` and :meth:`kill`). Failures are
    :class:`~gearstash.errors.GearstashError` carrying the end of gearmand's output.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        workdir: str | Path | None = None,
        extra_args: Sequence[str] = (),
        binary: str | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        if isinstance(extra_args, str):
            raise TypeError("extra_args must be a sequence of arguments, not one string")
        self.host = HOST
        self._auto_port = port is None
        self.port: int = free_port(HOST) if port is None else port
        self._given_workdir = Path(workdir) if workdir is not None else None
        self.extra_args: tuple[str, ...] = tuple(extra_args)
        self.binary = binary
        self.startup_timeout = startup_timeout
        self._server: PrivateServer | None = None

    def _private(self) -> PrivateServer:
        """The server process's harness, made (with its folder) on first use."""
        if self._server is None or self._server.port != self.port:
            spec = gearmand_spec(self.binary, self.extra_args, self.startup_timeout)
            self._server = PrivateServer(spec, port=self.port, folder=self._given_workdir)
        return self._server

    # -- properties --------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, the form gearstash clients and workers take."""
        return f"{self.host}:{self.port}"

    @property
    def workdir(self) -> Path:
        """Where the log and pid files live (a temporary directory is made on first use)."""
        return self._private().folder

    @property
    def log_path(self) -> Path:
        return self.workdir / _LOG

    @property
    def pid_path(self) -> Path:
        return self.workdir / _PID

    @property
    def output_path(self) -> Path:
        """gearmand's own stdout and stderr (usually empty; option errors land here)."""
        return self._private().output_path

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else None."""
        return None if self._server is None else self._server.pid

    @property
    def running(self) -> bool:
        return self.pid is not None

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"<Gearmand {self.address} {state}>"

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the server and wait until it answers; no-op when it already runs."""
        if self.running:
            return
        attempts = 5 if self._auto_port else 1
        for attempt in range(attempts):
            if _port_is_listened(self.host, self.port):
                if attempt + 1 < attempts:
                    self._drop_folder()
                    self.port = free_port(self.host)
                    continue
                raise GearstashError(
                    f"cannot start gearmand on {self.address}: the port is already in use"
                )
            self._spawn()
            self._auto_port = False  # from now on the address stays what callers were told
            return

    def _spawn(self) -> None:
        server = self._private()
        with contextlib.suppress(FileNotFoundError):
            (server.folder / _PID).unlink()  # stale after a kill(); the ready check reads it
        try:
            server.start()
        except GearstashError:
            self._drop_folder()
            raise
        except (RuntimeError, OSError) as exc:
            # The message carries the output's tail: a failed start leaves no temp dir.
            self._drop_folder()
            if isinstance(exc, OSError):
                raise GearstashError(f"cannot run gearmand: {exc}") from exc
            raise GearstashError(str(exc)) from exc

    def _drop_folder(self) -> None:
        """Stop and forget the harness; a temporary folder goes with it."""
        if self._server is not None:
            self._server.close()
            self._server = None

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
        if self._server is not None:
            self._server.stop(timeout)
            if self._given_workdir is None:
                self._drop_folder()

    def kill(self) -> None:
        """SIGKILL the server (a crash); the workdir stays, so :meth:`restart` still works."""
        if self._server is not None:
            self._server.kill()

    def restart(self) -> None:
        """Stop (if running) and start again on the SAME port and workdir.

        The new server numbers job handles from ``H:<host>:1`` again, and jobs in the memory
        queue are gone; only a persistent queue given in ``extra_args`` brings them back.
        """
        if self._server is not None:
            self._server.stop(10.0)
        if _port_is_listened(self.host, self.port):
            raise GearstashError(
                f"cannot restart gearmand on {self.address}: the port is already in use"
            )
        self._spawn()

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
