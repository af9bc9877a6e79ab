"""Servers of the suite's own: one :class:`PrivateServer` class runs any of them, the functions
below say how (Redis, memcached, PostgreSQL, MariaDB; a Redis Cluster of several nodes is
:class:`PrivateRedisCluster`; gearmand's spec and its admin-protocol
front, :class:`~gearstash.testing.gearmand.Gearmand`, which the demo uses too, are in
:mod:`gearstash.testing.gearmand`).

Every server listens on 127.0.0.1 on a port the kernel picked, keeps its files (data, socket,
log) in a temp folder of its own and is stopped by its own pid; :meth:`PrivateServer.close`
removes the folder. No server here ever binds or reaches a standard port (4730, 5432, 3306, 6379,
11211). Servers that refuse to run as root (PostgreSQL, MariaDB) run as an unprivileged OS user
(``postgres``/``mysql``, else ``nobody``) when the suite runs as root.

Nothing here imports pytest: the test suite (``tests/conftest.py``) and bench/ use the same
servers.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

HOST = "127.0.0.1"
STANDARD_PORTS = {4730: "gearmand", 5432: "PostgreSQL", 3306: "MariaDB", 6379: "Redis",
                  11211: "memcached"}  # fmt: skip


Runner = Callable[..., None]
"""``run(argv, stdin)``: a preparation command run as the server's user."""


def free_port(host: str = HOST) -> int:
    """A TCP port on ``host`` that nothing listens on right now (the kernel's choice)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _stop_orphan(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server whose PrivateServer was garbage-collected or outlived by the interpreter:
    it leads a session of its own, so nothing else would stop it."""
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


class ServerMissing(RuntimeError):
    """The binary (or OS user) a private server needs is not on this machine."""


# -- probes -------------------------------------------------------------------------------------


def tcp_reachable(host: str, port: int, timeout: float = 2.0) -> bool:
    """A TCP connect to host:port succeeds within ``timeout`` s."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def line_command(host: str, port: int, command: str, timeout: float = 5.0) -> str:
    """Send one text line (memcached, Redis inline commands); return the first answer line."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(command.encode() + b"\r\n")
        buf = b""
        while b"\r\n" not in buf:
            chunk = sock.recv(4096)
            if not chunk:
                break
            buf += chunk
    return buf.split(b"\r\n", 1)[0].decode("utf-8", "replace")


def redis_ping(host: str, port: int, timeout: float = 2.0) -> bool:
    """The server at host:port answers ``PING`` with ``+PONG``."""
    try:
        return line_command(host, port, "PING", timeout) == "+PONG"
    except OSError:
        return False


def memcached_command(host: str, port: int, command: str, timeout: float = 5.0) -> str:
    """One memcached text-protocol command; its first answer line."""
    return line_command(host, port, command, timeout)


def sql_problem(url: str, timeout: int = 2) -> str | None:
    """None when ``SELECT 1`` works through SQLAlchemy at ``url``; else what went wrong."""
    import sqlalchemy as sa

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


# -- binaries -----------------------------------------------------------------------------------


def find_binary(name: str, *fallbacks: str) -> str | None:
    """``name`` on PATH, else the first executable fallback path, else None."""
    found = shutil.which(name)
    if found:
        return found
    for path in (*fallbacks, f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def require_binary(name: str, package: str, *fallbacks: str) -> str:
    """Like :func:`find_binary`, but a missing binary raises :class:`ServerMissing`."""
    found = find_binary(name, *fallbacks)
    if found is None:
        raise ServerMissing(f"{name} is not installed (Debian package {package}): run make setup")
    return found


def php_has_extension(php: str, extension: str) -> bool:
    """``php -m`` lists ``extension`` (e.g. ``gearman``, ``pdo_pgsql``)."""
    try:
        out = subprocess.run(
            [php, "-m"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return extension.lower() in (line.strip().lower() for line in out.splitlines())


def find_pg_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/N/bin`` with initdb and postgres, else None."""

    def version(path: str) -> int:
        try:
            return int(Path(path).parent.name)
        except ValueError:
            return -1

    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if all(os.access(os.path.join(bindir, b), os.X_OK) for b in ("initdb", "postgres")):
            return Path(bindir)
    return None


def _unprivileged(*names: str) -> pwd.struct_passwd | None:
    """The first existing OS user of ``names`` (then ``nobody``) when we are root, else None
    (not root: the server runs as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in (*names, "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise ServerMissing(f"running as root, but none of the OS users {names} or nobody exist")


def _children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


# -- the one harness ----------------------------------------------------------------------------


@dataclass
class ServerSpec:
    """How to run one kind of server; :class:`PrivateServer` does the rest.

    ``argv(port, folder)`` is the command line; ``ready(port, folder)`` says it serves; ``prepare(folder,
    run)`` makes its data once before the first start (``run(argv)`` runs a command as the
    server's user). ``stop_signal`` is the clean shutdown (PostgreSQL: SIGINT, "fast").
    """

    name: str
    argv: Callable[[int, Path], list[str]]
    ready: Callable[[int, Path], bool]
    prepare: Callable[[Path, Runner], None] | None = None
    user: pwd.struct_passwd | None = None
    stop_signal: signal.Signals = signal.SIGTERM
    startup_timeout: float = 60.0
    url: Callable[[int, Path], str] = field(default=lambda port, folder: f"{HOST}:{port}")


class Started:
    """A context manager for :meth:`start` (:meth:`close` when it fails) and :meth:`close`."""

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

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


class PrivateServer(Started):
    """A server process of the suite's own on 127.0.0.1:<free port>. Context manager.

    :meth:`start` and :meth:`stop` (clean) or :meth:`kill` (SIGKILL, a crash) any number of
    times on the same port and folder, so data survive a restart; :meth:`close` stops and
    removes the folder (a ``folder`` given by the caller is kept). Its output goes to
    ``output.log`` in the folder (:meth:`log_tail`). A server whose object is garbage-collected
    while it runs is stopped.
    """

    def __init__(
        self, spec: ServerSpec, *, port: int | None = None, folder: Path | None = None
    ) -> None:
        self.spec = spec
        self.host = HOST
        self.port = free_port(HOST) if port is None else port
        if self.port in STANDARD_PORTS:
            raise ValueError(f"{self.port} is the standard port of {STANDARD_PORTS[self.port]}")
        self.own_folder = folder is None
        if folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix=f"gearstash-{spec.name}-"))
        else:
            self.folder = folder
            folder.mkdir(parents=True, exist_ok=True)
        if spec.user is not None:
            os.chown(self.folder, spec.user.pw_uid, spec.user.pw_gid)
        self._prepared = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[[subprocess.Popen[bytes]], PrivateServer] | None = None

    # -- what tests read

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The URL a client or store takes for this server."""
        return self.spec.url(self.port, self.folder)

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs, else None."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def output_path(self) -> Path:
        return self.folder / "output.log"

    def log_tail(self, size: int = 3000) -> str:
        """The end of what the server printed (and any ``*.log`` beside it)."""
        parts = []
        for path in sorted(self.folder.glob("*.log")):
            with contextlib.suppress(OSError):
                parts.append(f"-- {path}:\n{path.read_text(errors='replace')[-size:]}")
        return "\n".join(parts) or "(no output)"

    def __repr__(self) -> str:
        return f"<PrivateServer {self.spec.name} {self.address} pid={self.pid}>"

    # -- life cycle

    def _ids(self) -> tuple[int | None, int | None, list[int] | None]:
        """(uid, gid, supplementary groups) to run as: the spec's user, else ourselves."""
        user = self.spec.user
        if user is None:
            return None, None, None
        return user.pw_uid, user.pw_gid, []

    def run(self, argv: Sequence[str], stdin: str = "") -> None:
        """Run a preparation command as the server's user (``stdin`` as its input); raise with
        its output if it fails."""
        uid, gid, groups = self._ids()
        done = subprocess.run(
            list(argv),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            cwd=self.folder,
            user=uid,
            group=gid,
            extra_groups=groups,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{self.spec.name}: {argv[0]} failed ({done.returncode}): {done.stdout}{done.stderr}"
            )

    def start(self) -> None:
        """Start (preparing the data on first use) and wait until it serves; no-op when running."""
        if self.pid is not None:
            return
        if not self._prepared:
            if self.spec.prepare is not None:
                self.spec.prepare(self.folder, self.run)
            self._prepared = True
        argv = self.spec.argv(self.port, self.folder)
        uid, gid, groups = self._ids()
        with open(self.output_path, "ab") as output:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.folder,
                user=uid,
                group=gid,
                extra_groups=groups,
            )
        self._finalizer = weakref.finalize(self, _stop_orphan, self._proc)
        deadline = time.monotonic() + self.spec.startup_timeout
        while not self.spec.ready(self.port, self.folder):
            code = self._proc.poll()
            if code is not None or time.monotonic() > deadline:
                self.kill()
                why = f"exited with status {code}" if code is not None else "did not answer"
                raise RuntimeError(
                    f"{self.spec.name} on {self.address} {why} "
                    f"(within {self.spec.startup_timeout} s):\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def stop(self, timeout: float = 30.0) -> None:
        """Clean shutdown (the spec's signal), SIGKILL after ``timeout`` s; idempotent."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._signal(proc.pid, self.spec.stop_signal)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reap()

    def kill(self) -> None:
        """SIGKILL the server and its children at once (a crash); the folder stays."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            # PostgreSQL's backends lead sessions of their own: kill them by pid first.
            for child in _children(proc.pid):
                with contextlib.suppress(OSError):
                    os.kill(child, signal.SIGKILL)
            self._signal(proc.pid, signal.SIGKILL)
        self._reap()

    def restart(self) -> None:
        """Stop cleanly and start again on the same port and folder."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop (killed if that fails) and remove the folder unless the caller gave it.
        Idempotent, never raises."""
        with contextlib.suppress(Exception):
            self.stop()
        with contextlib.suppress(Exception):
            self.kill()
        if self.own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _reap(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)

    @staticmethod
    def _signal(pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


# -- the kinds of server ------------------------------------------------------------------------


def redis_spec(*, persistent: bool = False, extra: Sequence[str] = (), db: int = 0) -> ServerSpec:
    """redis-server; ``persistent`` keeps an fsync'ed append-only file, so a stop and start on
    the same port keep the data. Its URL is ``redis://127.0.0.1:PORT/<db>``."""
    binary = require_binary("redis-server", "redis-server")
    starts = [0]  # a log file per start: "Ready" in it means this start is ready

    def log(folder: Path) -> Path:
        return folder / f"redis-{starts[0]}.log"

    def argv(port: int, folder: Path) -> list[str]:
        starts[0] += 1
        aof = ("--appendonly", "yes", "--appendfsync", "always") if persistent else (
            "--appendonly", "no")  # fmt: skip
        return [
            binary,
            *("--port", str(port), "--bind", HOST, "--save", "", *aof, "--dir", str(folder)),
            *("--logfile", str(log(folder)), "--daemonize", "no", *extra),
        ]

    def ready(port: int, folder: Path) -> bool:
        # the log, not a PING: a server with requirepass or only a TLS port answers no PING
        path = log(folder)
        return path.exists() and "Ready to accept connections" in path.read_text(errors="replace")

    return ServerSpec(
        "redis",
        argv,
        ready,
        url=lambda port, folder: f"redis://{HOST}:{port}/{db}",
    )


def memcached_spec(*, memory_mb: int = 64) -> ServerSpec:
    """memcached with ``memory_mb`` of memory; its URL is ``127.0.0.1:PORT``."""
    binary = require_binary("memcached", "memcached")
    user = ["-u", "root"] if os.geteuid() == 0 else []  # it refuses root without -u

    def ready(port: int, folder: Path) -> bool:
        try:
            return memcached_command(HOST, port, "version", 0.5).startswith("VERSION ")
        except OSError:
            return False

    return ServerSpec(
        "memcached",
        lambda port, folder: [binary, *user, "-l", HOST, "-p", str(port), "-m", str(memory_mb)],
        ready,
    )


def postgres_spec(*, standby_of: PrivateServer | None = None) -> ServerSpec:
    """PostgreSQL: ``initdb`` (trust auth for the ``postgres`` role; fsync off) and ``postgres``
    in the foreground, its unix socket in its own folder. SIGINT is the fast shutdown: sessions
    end, data stay. URL: ``postgresql+psycopg://postgres@127.0.0.1:PORT/test``.

    Every such server can be a primary (``wal_level=replica`` and initdb's trust for loopback
    replication connections are PostgreSQL's defaults). ``standby_of``: a streaming hot standby
    of that running server instead, made by ``pg_basebackup -R`` (so it follows the primary
    through ``primary_conninfo`` and ``standby.signal``); read-only, database ``test`` included.
    """
    bindir = find_pg_bindir()
    if bindir is None:
        raise ServerMissing(
            "PostgreSQL server binaries (/usr/lib/postgresql/*/bin) are not installed "
            "(Debian package postgresql): run make setup"
        )

    def prepare(folder: Path, run: Runner) -> None:
        if standby_of is not None:
            run([
                str(bindir / "pg_basebackup"), "-h", standby_of.host, "-p", str(standby_of.port),
                "-U", "postgres", "-D", str(folder / "data"), "-R", "-X", "stream",
                "--checkpoint=fast", "--no-sync",
            ])  # fmt: skip
            return
        run([
            str(bindir / "initdb"), "-D", str(folder / "data"), "-U", "postgres", "--auth=trust",
            "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
        ])  # fmt: skip
        # the database the tests write to, made in single-user mode (no server, no port)
        single = [str(bindir / "postgres"), "--single", "-D", str(folder / "data"), "postgres"]
        run(single, "CREATE DATABASE test;\n")

    def argv(port: int, folder: Path) -> list[str]:
        settings = {
            "listen_addresses": HOST, "port": str(port), "unix_socket_directories": str(folder),
            "fsync": "off", "full_page_writes": "off", "synchronous_commit": "off",
            "max_connections": "100", "shared_buffers": "16MB",
        }  # fmt: skip
        return [
            str(bindir / "postgres"), "-D", str(folder / "data"),
            *(arg for name, value in settings.items() for arg in ("-c", f"{name}={value}")),
        ]  # fmt: skip

    def ready(port: int, folder: Path) -> bool:
        return sql_problem(f"postgresql+psycopg://postgres@{HOST}:{port}/test", 2) is None

    user = _unprivileged("postgres")
    return ServerSpec(
        "postgres" if standby_of is None else "postgres-standby",
        argv,
        ready,
        prepare,
        user=user,
        stop_signal=signal.SIGINT,
        url=lambda port, folder: f"postgresql+psycopg://postgres@{HOST}:{port}/test",
    )


def mariadb_spec(*, server_id: int = 1, binlog: bool = False) -> ServerSpec:
    """MariaDB: ``mariadb-install-db`` into a private datadir, ``mariadbd`` with its own socket;
    every start runs an init file that makes the ``test`` database and ``root@127.0.0.1``
    without password (all rights, grant option). URL:
    ``mysql+pymysql://root@127.0.0.1:PORT/test``.

    Replication: ``binlog`` writes a row-based binary log (a primary); ``server_id`` must differ
    between a primary and its replicas. :func:`gearstash.testing.replication.follow_mariadb`
    makes a server replicate another by GTID."""
    install = require_binary("mariadb-install-db", "mariadb-server", "/usr/bin/mysql_install_db")
    server = require_binary("mariadbd", "mariadb-server", "/usr/sbin/mysqld")
    user = _unprivileged("mysql")
    init_sql = (
        "CREATE DATABASE IF NOT EXISTS test;\n"
        "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1';\n"
        "GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;\n"
    )

    def prepare(folder: Path, run: Runner) -> None:
        init = folder / "init.sql"
        init.write_text(init_sql)
        if user is not None:
            os.chown(init, user.pw_uid, user.pw_gid)
        run([
            install, "--no-defaults", f"--datadir={folder / 'data'}", "--skip-test-db",
            "--auth-root-authentication-method=normal", "--skip-name-resolve",
            f"--basedir={Path(server).parent.parent}",
        ])  # fmt: skip

    log_bin = (
        ["--log-bin=mariadb-bin", "--binlog-format=ROW"] if binlog else ["--skip-log-bin"]
    )

    def argv(port: int, folder: Path) -> list[str]:
        return [
            server, "--no-defaults", f"--datadir={folder / 'data'}", f"--port={port}",
            f"--bind-address={HOST}", f"--socket={folder / 'mariadb.sock'}",
            f"--pid-file={folder / 'mariadb.pid'}", f"--log-error={folder / 'mariadb-error.log'}",
            f"--init-file={folder / 'init.sql'}", "--skip-name-resolve", *log_bin,
            f"--server-id={server_id}",
            "--innodb-buffer-pool-size=32M", "--innodb-flush-log-at-trx-commit=0",
            "--max-connections=200", "--max-allowed-packet=16M",  # the default the tests rely on
        ]  # fmt: skip

    def ready(port: int, folder: Path) -> bool:
        return sql_problem(f"mysql+pymysql://root@{HOST}:{port}/test", 2) is None

    return ServerSpec(
        "mariadb",
        argv,
        ready,
        prepare,
        user=user,
        url=lambda port, folder: f"mysql+pymysql://root@{HOST}:{port}/test",
    )


PERL_GEARMAND = "/usr/bin/gearmand"
"""Where Debian's gearman-server package puts Perl's Gearman::Server (a Perl script; the C
gearmand of gearman-job-server is /usr/sbin/gearmand)."""


def perl_gearman_spec() -> ServerSpec:
    """Perl's Gearman::Server, a second job-server implementation that speaks only the original
    protocol: no GRAB_JOB_UNIQ, WORK_DATA, WORK_WARNING, GET_STATUS_UNIQUE, SUBMIT_JOB_HIGH_BG or
    SUBMIT_JOB_LOW*, and empty STATUS_RES numbers for a job that sent no WORK_STATUS. Its URL is
    ``127.0.0.1:PORT``."""
    try:
        with open(PERL_GEARMAND, "rb") as f:
            perl = b"perl" in f.readline()
    except OSError:
        perl = False
    if not perl:
        raise ServerMissing(
            "Perl Gearman::Server is not installed (Debian package gearman-server): run make setup"
        )

    def argv(port: int, folder: Path) -> list[str]:
        return [PERL_GEARMAND, "-p", str(port), "-L", HOST]

    def ready(port: int, folder: Path) -> bool:
        return tcp_reachable(HOST, port, 0.5)

    return ServerSpec("perl-gearmand", argv, ready)


def redis_cluster_node_spec(
    *, node_timeout_ms: int = 1000, extra: Sequence[str] = ()
) -> ServerSpec:
    """One node of a private Redis Cluster: :func:`redis_spec` with ``cluster-enabled yes``, its
    ``nodes.conf`` in its folder (a node killed and started again rejoins as what it was) and a
    cluster bus port of its own (a free port picked now, not port + 10000, which may be taken or
    past 65535). ``node_timeout_ms`` is ``cluster-node-timeout``: how long a master may be silent
    before its replica takes over."""
    bus = free_port()
    spec = redis_spec(
        extra=(
            *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
            *("--cluster-node-timeout", str(node_timeout_ms), "--cluster-port", str(bus)),
            *extra,
        )
    )
    spec.name = "redis-cluster-node"
    spec.url = lambda port, folder: f"redis://{HOST}:{port}/0"
    return spec


def _cli_env(password: str | None) -> dict[str, str]:
    """redis-cli's whole environment (it needs nothing else): the password in ``REDISCLI_AUTH``,
    never in its argv."""
    return {} if password is None else {"REDISCLI_AUTH": password}


def redis_command(
    host: str, port: int, *args: str, timeout: float = 5.0, password: str | None = None
) -> str:
    """One command through ``redis-cli`` (the whole answer, as text); raises RuntimeError when
    redis-cli fails or answers an error."""
    cli = require_binary("redis-cli", "redis-tools")
    done = subprocess.run(
        [cli, "-h", host, "-p", str(port), *args],
        capture_output=True, text=True, timeout=timeout, check=False, env=_cli_env(password),
    )  # fmt: skip
    if done.returncode != 0 or done.stdout.startswith(("ERR", "(error)")):
        raise RuntimeError(
            f"redis-cli {' '.join(args)} on {host}:{port}: {done.stdout}{done.stderr}"
        )
    return done.stdout


def _with_config(
    argv: Callable[[int, Path], list[str]], conf: Path
) -> Callable[[int, Path], list[str]]:
    """``argv`` with a redis-server config file first (its options, then the command line's)."""

    def with_config(port: int, folder: Path) -> list[str]:
        command = argv(port, folder)
        return [command[0], str(conf), *command[1:]]

    return with_config


class PrivateRedisCluster(Started):
    """A private Redis Cluster: ``masters`` masters with ``replicas`` replicas each, every node a
    :class:`PrivateServer` (:func:`redis_cluster_node_spec`) on a free loopback port, joined by
    ``redis-cli --cluster create``. Context manager; :meth:`close` stops and removes every node.

    :attr:`url` is the store URL (``redis+cluster://`` listing every node; with ``password``, every
    node requires it, kept in a config file of the node's, and the URL holds it). :meth:`roles` reads who
    is master now; :meth:`wait_ok` waits until every running node sees all 16384 slots served
    (after a start, or after a failover). Tests stop or kill a node through :attr:`nodes`.
    """

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 1000,
        password: str | None = None,
    ) -> None:
        self.node_timeout_ms = node_timeout_ms
        self.replicas = replicas
        self.password = password
        self.nodes = [
            PrivateServer(redis_cluster_node_spec(node_timeout_ms=node_timeout_ms))
            for _ in range(masters * (1 + replicas))
        ]
        if password is not None:  # set after the cluster is made, kept in the node's config file
            for node in self.nodes:
                conf = node.folder / "redis.conf"
                conf.write_text("")
                conf.chmod(0o600)
                node.spec.argv = _with_config(node.spec.argv, conf)

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:P1,127.0.0.1:P2,…`` (every node)."""
        auth = "" if self.password is None else f":{self.password}@"
        return f"redis+cluster://{auth}" + ",".join(node.address for node in self.nodes)

    def node(self, port: int) -> PrivateServer:
        """The node listening on ``port``."""
        return next(node for node in self.nodes if node.port == port)

    def start(self) -> None:
        """Start every node and create the cluster (first start), then :meth:`wait_ok`."""
        fresh = all(not (node.folder / "nodes.conf").exists() for node in self.nodes)
        for node in self.nodes:
            node.start()
        if fresh:
            cli = require_binary("redis-cli", "redis-tools")
            done = subprocess.run(
                [cli, "--cluster", "create", *(n.address for n in self.nodes),
                 "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                capture_output=True, text=True, timeout=120, check=False, env=_cli_env(None),
            )  # fmt: skip
            if done.returncode != 0:
                raise RuntimeError(
                    f"redis-cli --cluster create failed:\n{done.stdout}{done.stderr}"
                )
            if self.password is not None:
                self._lock_with_password()
        self.wait_ok()

    def _lock_with_password(self) -> None:
        """Made without a password (``redis-cli --cluster`` ignores ``REDISCLI_AUTH``), the
        cluster now gets one: ``masterauth`` on every node, then ``requirepass``, through redis-py
        (never in an argv), kept in each node's config file for its next start."""
        import redis

        password = self.password
        assert password is not None
        self.wait_ok()
        clients = [redis.Redis(host=n.host, port=n.port) for n in self.nodes]
        try:
            for name in ("masterauth", "requirepass"):
                for client in clients:
                    client.config_set(name, password)
            for client in clients:
                client.config_rewrite()
        finally:
            for client in clients:
                client.close()

    def roles(self) -> dict[int, int | None]:
        """Every node's port → None for a master serving slots, else the port of its master
        (as a running node sees it; a node marked failed is left out)."""
        for node in self.nodes:
            if node.pid is None:
                continue
            try:
                text = redis_command(
                    node.host, node.port, "CLUSTER", "NODES", password=self.password
                )
            except (RuntimeError, OSError, subprocess.SubprocessError):
                continue
            ports: dict[str, int] = {}
            rows = [line.split() for line in text.splitlines() if line.strip()]
            for row in rows:
                ports[row[0]] = int(row[1].split("@")[0].rsplit(":", 1)[1])
            out: dict[int, int | None] = {}
            for row in rows:
                flags = row[2].split(",")
                if "fail" in flags or "fail?" in flags or "handshake" in flags:
                    continue
                if "master" in flags and len(row) > 8:
                    out[ports[row[0]]] = None
                elif "slave" in flags and row[3] in ports:
                    out[ports[row[0]]] = ports[row[3]]
            return out
        raise RuntimeError("no node of the cluster answers CLUSTER NODES")

    def masters(self) -> list[int]:
        """The ports of the masters serving slots now."""
        return sorted(port for port, master in self.roles().items() if master is None)

    def wait_ok(self, timeout: float = 60.0) -> None:
        """Wait until every running node says ``cluster_state:ok`` with every slot served by a
        master it can reach, and every running replica is in sync with its master."""
        deadline = time.monotonic() + timeout
        while True:
            problem = self._problem()
            if problem is None:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster is not ready within {timeout} s: {problem}")
            time.sleep(0.1)

    def _problem(self) -> str | None:
        running = [node for node in self.nodes if node.pid is not None]
        for node in running:
            try:
                info = redis_command(
                    node.host, node.port, "CLUSTER", "INFO", password=self.password
                )
                replication = redis_command(
                    node.host, node.port, "INFO", "replication", password=self.password
                )
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                return f"{node.address}: {exc}"
            if "cluster_state:ok" not in info or "cluster_slots_ok:16384" not in info:
                return f"{node.address}: {' '.join(info.split())}"
            if "role:slave" in replication and "master_link_status:up" not in replication:
                return f"{node.address}: replica not in sync"
        try:
            masters = self.masters()
        except RuntimeError as exc:
            return str(exc)
        if any(self.node(port).pid is None for port in masters):
            return "a master that is down still serves slots"
        return None

    def close(self) -> None:
        """Stop every node and remove its folder. Idempotent, never raises."""
        for node in self.nodes:
            node.close()
