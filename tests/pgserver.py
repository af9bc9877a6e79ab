"""A PostgreSQL server of a test's own: ``initdb`` in a temp dir, ``pg_ctl`` start/stop on a port.

It never touches the shared server on 127.0.0.1:5432: it listens only on 127.0.0.1 on a free port,
with its unix sockets in its own temp dir, trust auth for the ``postgres`` role and ``fsync=off``
(the data survive a stop and start all the same: a clean shutdown writes a checkpoint). initdb and
postgres refuse to run as root, so as root they run as the ``postgres`` OS user (``runuser``), in
a temp dir of /tmp owned by that user (pytest's own tmp dirs are private to root).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from servers import SETUP_HINT, need, tcp_reachable

from gearstash.testing.gearmand import free_port

PG_USER = "postgres"  # the OS user the server runs as when the tests run as root


def find_pg_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/N/bin`` with initdb, pg_ctl and postgres, else None."""

    def version(path: str) -> int:
        try:
            return int(Path(path).parent.name)
        except ValueError:
            return -1

    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if all(
            os.access(os.path.join(bindir, b), os.X_OK) for b in ("initdb", "pg_ctl", "postgres")
        ):
            return Path(bindir)
    return None


def _children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


class OwnPostgres:
    """A private PostgreSQL cluster; ``start()``/``stop()`` (``pg_ctl stop -m fast``) any number of
    times on the same port, ``close()`` kills whatever is left and removes the cluster.

    Used as a context manager: initdb + start on enter, close on exit (even after a failure).
    """

    def __init__(self, *, startup_timeout: float = 60.0) -> None:
        bindir = find_pg_bindir()
        need(
            bindir is not None,
            "PostgreSQL server binaries (initdb, pg_ctl, postgres in /usr/lib/postgresql/*/bin) "
            "are not installed (Debian package postgresql): " + SETUP_HINT,
        )
        assert bindir is not None
        self.bindir = bindir
        self.as_root = os.geteuid() == 0
        self.runuser = shutil.which("runuser") or "/usr/sbin/runuser"
        self.owner: pwd.struct_passwd | None = None
        if self.as_root:
            with contextlib.suppress(KeyError):
                self.owner = pwd.getpwnam(PG_USER)
            need(
                self.owner is not None and os.access(self.runuser, os.X_OK),
                f"running as root, PostgreSQL needs the OS user {PG_USER!r} and runuser "
                "(Debian package postgresql creates the user)",
            )
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.dir: Path | None = None  # the temp dir: data/, the sockets, the log
        self.initialised = False

    # ------------------------------------------------------------------ paths and commands

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def data(self) -> Path:
        assert self.dir is not None
        return self.dir / "data"

    @property
    def log(self) -> Path:
        assert self.dir is not None
        return self.dir / "postgres.log"

    def _run(self, *argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / argv[0]), *argv[1:]]
        if self.as_root:
            command = [self.runuser, "-u", PG_USER, "--", *command]
        return subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd="/",
        )

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except (OSError, AssertionError):
            return "(no log)"

    # ------------------------------------------------------------------ life cycle

    def init(self) -> None:
        """Make the temp dir and the cluster in it (once)."""
        if self.initialised:
            return
        self.dir = Path(tempfile.mkdtemp(prefix="gearstash-pg-"))
        if self.as_root:
            assert self.owner is not None
            os.chown(self.dir, self.owner.pw_uid, self.owner.pw_gid)
        done = self._run(
            "initdb",
            *("-D", str(self.data), "-U", "postgres", "--auth=trust"),
            *("-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"),
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}): {done.stdout}{done.stderr}")
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.dir}'",
            "fsync": "off",
            "full_page_writes": "off",
            "max_connections": "50",
            "shared_buffers": "16MB",
        }
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\n# gearstash tests\n")
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
        self.initialised = True

    def start(self) -> None:
        """Start the server (initdb first if needed) and wait until it takes TCP connections."""
        self.init()
        done = self._run(
            "pg_ctl",
            *("start", "-D", str(self.data), "-l", str(self.log)),
            *("-w", "-t", str(int(self.startup_timeout))),
            timeout=self.startup_timeout + 10,
        )
        if done.returncode != 0:
            self.kill()
            raise RuntimeError(
                f"pg_ctl start failed ({done.returncode}): {done.stdout}{done.stderr}\n"
                f"{self.log_tail()}"
            )
        deadline = time.monotonic() + 10
        while not tcp_reachable("127.0.0.1", self.port, timeout=0.5):
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"PostgreSQL is not on port {self.port}:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """``pg_ctl stop -m fast``: sessions are ended, the data are kept; kill if that fails."""
        if not self.initialised or self.postmaster_pid() is None:
            return
        try:
            done = self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w", timeout=60)
            ok = done.returncode == 0
        except subprocess.TimeoutExpired:
            ok = False
        if not ok:
            self.kill()
            raise RuntimeError(f"pg_ctl stop -m fast failed:\n{self.log_tail()}")

    def postmaster_pid(self) -> int | None:
        """The running postmaster's pid (from postmaster.pid), else None."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError, AssertionError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return pid

    def kill(self) -> None:
        """Stop at once (``-m immediate``), then SIGKILL what is left. Never raises."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w", timeout=20)
        if self.postmaster_pid() == pid:
            # Each backend is a session of its own (setsid): kill them one by one.
            for victim in (*_children(pid), pid):
                with contextlib.suppress(OSError):
                    os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while self.postmaster_pid() == pid and time.monotonic() < deadline:
                time.sleep(0.05)

    def close(self) -> None:
        """Stop (fast; killed if that fails) and remove the cluster. Idempotent, never raises."""
        with contextlib.suppress(Exception):
            self.stop()
        self.kill()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        self.initialised = False

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
