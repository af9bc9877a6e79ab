"""Secrets stay secret: a store password given through the environment, a config file or a
``*_FILE`` secret file reaches the store — and never a log line, an error message, the worker's
banner, its SET_CLIENT_ID, ``gearstash plugins`` or a process's command line.

Each test makes its own random password, so "the password appears nowhere" means something, and
every absence check also checks that the text it searched is there (the redacted form, the
banner), so it can fail. Redis runs privately with ``requirepass`` and an ACL user; MariaDB gets a
throwaway user with a password (dropped afterwards); PostgreSQL runs with trust auth, which ignores
passwords, so its URLs carry one on the error paths (dead port, missing database) and in a
working worker whose URL holds one anyway.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from gearstash import Client, ConfigError, State, StoreError
from gearstash import config as gs_config
from gearstash.cli.main import main
from gearstash.protocol.admin import parse_workers
from gearstash.spine.manager import open_store
from gearstash.store.urls import redact_url, scrub, url_secrets
from gearstash.testing.gearmand import free_port
from gearstash.testing.servers import PrivateServer, redis_spec

JOBS = textwrap.dedent(
    """
    def reverse(job):
        job.send_data(b"half")
        return job.workload[::-1]
    """
)


def _password() -> str:
    return "Pw" + secrets.token_hex(10)


@pytest.fixture
def clean_env(tmp_path: Path) -> dict[str, str]:
    """The environment for subprocesses: no gearstash settings, no user config file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEARSTASH_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg-config")
    env["GEARSTASH_HOME"] = str(tmp_path / "home")
    env["PYTHONUNBUFFERED"] = "1"
    (tmp_path / "secjobs.py").write_text(JOBS)
    return env


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The same for in-process code (CliRunner, the library)."""
    for name in list(os.environ):
        if name.startswith("GEARSTASH_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("GEARSTASH_HOME", str(tmp_path / "home"))


@pytest.fixture
def secured_redis(own_server: Any) -> tuple[PrivateServer, str, str]:
    """A private redis-server with ``requirepass`` and an ACL user ``alice``: (server, pw, alice's).

    The passwords are set over the connection (CONFIG SET, ACL SETUSER), not on its command line.
    """
    import redis

    password, alice = _password(), _password()
    server: PrivateServer = own_server(redis_spec)
    admin = redis.Redis(port=server.port)
    admin.acl_setuser("alice", enabled=True, passwords=[f"+{alice}"], keys=["*"],
                      channels=["*"], commands=["+@all"])  # fmt: skip
    admin.config_set("requirepass", password)
    admin.close()
    return server, password, alice


@dataclass
class WorkerRun:
    output: str
    cmdline: str
    client_ids: list[str]
    returncode: int | None


def run_worker(
    env: dict[str, str],
    cwd: Path,
    gearmand: Any,
    client_store: str,
    *extra: str,
    jobs: int = 1,
) -> WorkerRun:
    """``gearstash -vv [extra…] worker -s ADDR secjobs:reverse`` with ``env``; runs ``jobs`` jobs
    through it (checked against ``client_store``) and stops it with SIGTERM."""
    argv = [sys.executable, "-m", "gearstash", "-vv", *extra, "worker", "-s", gearmand.address]
    log_path = cwd / f"worker-{time.monotonic_ns()}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*argv, "secjobs:reverse"], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 20
            client_ids: list[str] = []
            while time.monotonic() < deadline:
                assert proc.poll() is None, log_path.read_text(errors="replace")
                rows = parse_workers(gearmand.admin("workers").splitlines())
                client_ids = [r.client_id for r in rows if "reverse" in r.functions]
                if client_ids:
                    break
                time.sleep(0.02)
            assert client_ids, "the worker never registered: " + log_path.read_text()
            cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            with Client([gearmand.address], store=client_store) as client:
                for i in range(jobs):
                    ref = client.submit_background("reverse", b"secret-test-%d" % i)
                    view = client.wait(ref, timeout=20)
                    assert view.state is State.COMPLETE, view
                    assert view.result == b"%d-tset-terces" % i and view.data == [b"half"]
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    return WorkerRun(log_path.read_text(errors="replace"), cmdline, client_ids, proc.returncode)


def run_cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gearstash", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def assert_hidden(text: str, password: str, *expected: str) -> None:
    """``password`` is not in ``text``, which is not empty and holds every ``expected`` string."""
    assert text.strip(), "nothing to search"
    assert password not in text, f"the password leaked: {text}"
    for want in expected:
        assert want in text, f"{want!r} missing from: {text}"


def _secret_file(path: Path, value: str) -> Path:
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


# ------------------------------------------------------------------------ the worker, for real


@pytest.mark.gearmand
def test_worker_with_a_redis_password_from_env_config_or_secret_file(
    secured_redis: tuple[PrivateServer, str, str], gearmand: Any, clean_env: dict[str, str],
    tmp_path: Path,
) -> None:  # fmt: skip
    server, password, alice = secured_redis
    url = f"redis://:{password}@127.0.0.1:{server.port}/0?prefix=sec"
    shown = f"redis://:***@127.0.0.1:{server.port}/0?prefix=sec"
    alice_url = f"redis://alice:{alice}@127.0.0.1:{server.port}/1"
    conf = tmp_path / "config.toml"
    conf.write_text(f'store = "{alice_url}"\nservers = ["{gearmand.address}"]\n')
    conf.chmod(0o600)
    store_file = _secret_file(tmp_path / "store-secret", url)
    conf_with_file = tmp_path / "config-file.toml"
    conf_with_file.write_text('store_file = "store-secret"\n')  # relative to the config file
    cases = {
        "env": (dict(clean_env, GEARSTASH_STORE=url), (), url, password, shown),
        "config via $GEARSTASH_CONFIG": (
            dict(clean_env, GEARSTASH_CONFIG=str(conf)), (), alice_url, alice,
            f"redis://alice:***@127.0.0.1:{server.port}/1",
        ),
        "config via --config": (
            clean_env, ("--config", str(conf)), alice_url, alice,
            f"redis://alice:***@127.0.0.1:{server.port}/1",
        ),
        "config in the XDG folder": (clean_env, (), alice_url, alice, "redis://alice:***@"),
        "$GEARSTASH_STORE_FILE": (
            dict(clean_env, GEARSTASH_STORE_FILE=str(store_file)), (), url, password, shown,
        ),
        "store_file in the config": (
            dict(clean_env, GEARSTASH_CONFIG=str(conf_with_file)), (), url, password, shown,
        ),
    }  # fmt: skip
    for name, (env, extra, client_url, secret, redacted) in cases.items():
        if name == "config in the XDG folder":
            xdg = Path(env["XDG_CONFIG_HOME"]) / "gearstash"
            xdg.mkdir(parents=True, exist_ok=True)
            (xdg / "config.toml").write_text(conf.read_text())
            (xdg / "config.toml").chmod(0o600)
        run = run_worker(env, tmp_path, gearmand, client_url, *extra)
        assert run.returncode == 0, (name, run.output)
        # the banner names the store, redacted; -vv logging ran; nothing shows the password
        banner = f"gearstash worker: serving reverse on {gearmand.address}; store {redacted}"
        assert_hidden(run.output, secret, banner, "INFO", "serving reverse")
        assert_hidden(run.output, password)
        assert_hidden(run.output, alice)
        assert_hidden(run.cmdline, secret, "gearstash", "worker", gearmand.address)
        assert_hidden(" ".join(run.client_ids), secret, "gearstash-")
        if name == "config in the XDG folder":
            (xdg / "config.toml").unlink()
    # the job really went through the password-protected server (and only with the password)
    for bad in (f"redis://127.0.0.1:{server.port}/0", f"redis://:wrong{password}@x:1/0"):
        with pytest.raises(StoreError) as info:
            open_store(bad.replace("x:1", f"127.0.0.1:{server.port}"))
        assert_hidden(str(info.value), password, "failed")


@pytest.mark.gearmand
def test_worker_logs_a_store_outage_without_the_password(
    secured_redis: tuple[PrivateServer, str, str], gearmand: Any, clean_env: dict[str, str],
    tmp_path: Path,
) -> None:  # fmt: skip
    server, password, _ = secured_redis
    url = f"redis://:{password}@127.0.0.1:{server.port}/0?socket_timeout=1&socket_connect_timeout=1"
    env = dict(clean_env, GEARSTASH_STORE=url)
    argv = [sys.executable, "-m", "gearstash", "-vv", "worker", "-s", gearmand.address]
    log_path = tmp_path / "outage.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*argv, "secjobs:reverse"], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 20
            while "serving reverse" not in log_path.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, log_path.read_text()
                time.sleep(0.02)
            server.stop()  # the store goes down under the running worker
            with Client([gearmand.address], store="null://") as client:
                result = client.submit("reverse", b"abc")  # foreground: the job still runs
            assert result.result == b"cba"
            deadline = time.monotonic() + 20
            shown = f"redis://:***@127.0.0.1:{server.port}/0"
            while shown not in log_path.read_text(errors="replace").split("serving reverse")[-1]:
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
    output = log_path.read_text(errors="replace")
    after = output.split("serving reverse", 1)[1]
    assert_hidden(after, password, f"redis://:***@127.0.0.1:{server.port}/0", "failed")


@pytest.mark.gearmand
def test_worker_refuses_a_bad_store_without_showing_the_password(
    secured_redis: tuple[PrivateServer, str, str], gearmand: Any, clean_env: dict[str, str],
    tmp_path: Path,
) -> None:  # fmt: skip
    server, password, _ = secured_redis
    wrong = _password()
    cases = {
        "wrong password": (
            f"redis://:{wrong}@127.0.0.1:{server.port}/0", wrong, ("invalid", ":***@"),
        ),
        "no password": (f"redis://127.0.0.1:{server.port}/0", password, ("uthentication",)),
        "store down": (f"redis://:{wrong}@127.0.0.1:{free_port()}/0", wrong, ("onnect", ":***@")),
        "password in the query": (
            f"redis://127.0.0.1:{free_port()}/0?password={wrong}", wrong, ("password=***",),
        ),
        "unparseable": (f"redis://:{wrong}@[::1/0", wrong, ("unparseable URL",)),
        "unencoded / in the password": (
            f"redis://:ab/{wrong}@127.0.0.1:{server.port}/0", wrong, ("URL hidden",),
        ),
        "unknown scheme": (f"nosuch://:{wrong}@127.0.0.1:1/0", wrong, ("nosuch://:***@",)),
        "no scheme": (f"//:{wrong}@127.0.0.1:1/0", wrong, ("unparseable URL",)),
    }  # fmt: skip
    for i, (name, (url, secret, words)) in enumerate(cases.items()):
        secret_file = _secret_file(tmp_path / "bad-store", url)
        # from the environment, or from a secret file (alternately: each run costs a second)
        env = dict(clean_env, GEARSTASH_STORE=url)
        if i % 2:
            env = dict(clean_env, GEARSTASH_STORE_FILE=str(secret_file))
        # issue 9.5: a worker serves and spools through an outage (no server on that port);
        # tests/test_cli.py checks what it says then, without the password
        if name not in ("store down", "password in the query"):
            proc = run_cli(
                env, tmp_path, "-vv", "worker", "-s", gearmand.address, "secjobs:reverse"
            )
            output = proc.stdout + proc.stderr
            assert proc.returncode == 1, (name, output)
            assert "Traceback" not in output, output
            assert_hidden(output, secret, "gearstash: error:", *words)
            assert_hidden(output, password)
        # the same from the library
        with pytest.raises((StoreError, ConfigError)) as info:
            open_store(url)
        assert_hidden(str(info.value), secret, *words)


def test_plugins_output_shows_the_store_redacted(clean_env: dict[str, str], tmp_path: Path) -> None:
    password = _password()
    url = f"postgresql://gs:{password}@db.example:5432/jobs?sslpassword={password}x"
    conf = tmp_path / "conf.toml"
    conf.write_text(f'store = "{url}"\ntoken_secret = "{password}-token"\n')
    conf.chmod(0o600)
    shown = "postgresql://gs:***@db.example:5432/jobs?sslpassword=***"
    for env, args, source in (
        (dict(clean_env, GEARSTASH_STORE=url), (), "$GEARSTASH_STORE"),
        (dict(clean_env, GEARSTASH_STORE_FILE=str(_secret_file(tmp_path / "s", url))), (),
         "$GEARSTASH_STORE_FILE"),
        (clean_env, ("--config", str(conf)), f"config file {conf}"),
        (dict(clean_env, GEARSTASH_CONFIG=str(conf)), (), f"config file {conf}"),
    ):  # fmt: skip
        for extra in ((), ("--json",)) if source == "$GEARSTASH_STORE" else ((),):
            proc = run_cli(env, tmp_path, *args, "plugins", *extra)
            assert proc.returncode == 0, proc.stderr
            assert_hidden(proc.stdout + proc.stderr, password, "sqlite")
            if not extra:
                assert_hidden(proc.stdout, password, f"store from {source}: {shown}")


def test_a_password_on_the_command_line_is_warned_about(
    clean_env: dict[str, str], tmp_path: Path
) -> None:
    password = _password()
    dead = f"127.0.0.1:{free_port()}"
    url = f"redis://:{password}@127.0.0.1:{free_port()}/0"
    proc = run_cli(clean_env, tmp_path, "fetch", "-s", dead, "--store", url, "H:x:1")
    assert proc.returncode == 1  # it still tries (the store is down here)
    assert_hidden(
        proc.stderr, password, "warning: the --store URL holds a password",
        "GEARSTASH_STORE", "config file", "redis://:***@",
    )  # fmt: skip
    for query in (f"?password={password}", f"?sslpassword={password}"):
        proc = run_cli(clean_env, tmp_path, "fetch", "-s", dead, "--store", dead + query, "H:x:1")
        assert "warning: the --store URL holds a password" in proc.stderr
    # no warning without a password on argv, nor for one from the environment
    for env, args in (
        (clean_env, ("--store", f"sqlite:///{tmp_path}/w.db")),
        (dict(clean_env, GEARSTASH_STORE=url), ()),
    ):
        proc = run_cli(env, tmp_path, "fetch", "-s", dead, *args, "H:x:1")
        assert "warning: the --store URL" not in proc.stderr, proc.stderr
        assert password not in proc.stdout + proc.stderr


# ------------------------------------------------------------------------ PostgreSQL, MariaDB


@pytest.mark.postgres
def test_postgres_urls_with_a_password(
    postgres_url: str, gearmand: Any, clean_env: dict[str, str], tmp_path: Path
) -> None:
    password = _password()
    user = postgres_url.split("://", 1)[1].split("@", 1)[0]
    port = postgres_url.rsplit(":", 1)[1].split("/", 1)[0]  # the session's private server
    dead = free_port()
    for url, words in (
        (f"postgresql://{user}:{password}@127.0.0.1:{dead}/test", ("onnect", ":***@")),
        (f"postgresql://{user}@127.0.0.1:{dead}/test?password={password}", ("password=***",)),
        (f"postgresql://{user}:{password}@127.0.0.1:{port}/gs_no_such_db", ("gs_no_such_db",)),
        (f"postgresql://{user}:{password}@no-such-host.invalid/test", ("no-such-host",)),
        (f"postgresql://{user}:{password}@127.0.0.1:{port}/test?ttl=soon", ("ttl", ":***@")),
        (f"postgresql://{user}:{password}@127.0.0.1:port/test", (":***@",)),
    ):
        with pytest.raises((StoreError, ConfigError)) as info:
            open_store(url)
        assert_hidden(str(info.value), password, *words)
        proc = run_cli(dict(clean_env, GEARSTASH_STORE=url), tmp_path, "-vv", "fetch", "H:x:1")
        assert proc.returncode == 1
        assert_hidden(proc.stdout + proc.stderr, password, "gearstash: error:", *words)
    # trust auth ignores the password, so a worker with one in its URL works: nothing shows it
    url = f"postgresql://{user}:{password}@127.0.0.1:{port}/test"
    run = run_worker(dict(clean_env, GEARSTASH_STORE=url), tmp_path, gearmand, url)
    assert_hidden(run.output, password, f"store postgresql://{user}:***@127.0.0.1:{port}/test")
    assert_hidden(run.cmdline, password, "worker")


@pytest.fixture
def mariadb_user(mariadb_server: PrivateServer) -> Iterator[tuple[str, str, int]]:
    """A throwaway user with a password and rights on ``test`` of the session's MariaDB:
    (user, password, port); dropped afterwards."""
    import pymysql

    user, password = "gs_sec_" + secrets.token_hex(4), _password()
    port = mariadb_server.port
    root = pymysql.connect(host="127.0.0.1", port=port, user="root", password="", database="test")
    try:
        with root.cursor() as cur:
            cur.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (user, password))
            cur.execute(f"GRANT ALL PRIVILEGES ON test.* TO `{user}`@'%'")
        yield user, password, port
    finally:
        with root.cursor() as cur:
            cur.execute("DROP USER IF EXISTS %s@'%%'", (user,))
        root.close()


@pytest.mark.mysql
def test_mariadb_user_with_a_password(
    mariadb_user: tuple[str, str, int], gearmand: Any, clean_env: dict[str, str], tmp_path: Path
) -> None:
    user, password, port = mariadb_user
    url = f"mysql://{user}:{password}@127.0.0.1:{port}/test"
    shown = f"mysql://{user}:***@127.0.0.1:{port}/test"
    conf = tmp_path / "maria.toml"
    conf.write_text(f'store = "{url}"\n')
    conf.chmod(0o600)
    for env in (dict(clean_env, GEARSTASH_STORE=url), dict(clean_env, GEARSTASH_CONFIG=str(conf))):
        run = run_worker(env, tmp_path, gearmand, url)
        assert run.returncode == 0, run.output
        assert_hidden(run.output, password, f"store {shown}", "serving reverse")
        assert_hidden(run.cmdline, password, "worker")
    wrong = _password()
    for bad, secret, words in (
        (f"mysql://{user}:{wrong}@127.0.0.1:{port}/test", wrong, ("Access denied", ":***@")),
        (f"mysql://{user}:{password}@127.0.0.1:{free_port()}/test", password, ("onnect",)),
        (f"mysql://{user}:{password}@127.0.0.1:{port}/gs_no_such_db", password, ("gs_no_such_db",)),
    ):
        with pytest.raises(StoreError) as info:
            open_store(bad)
        assert_hidden(str(info.value), secret, *words)
        proc = run_cli(dict(clean_env, GEARSTASH_STORE=bad), tmp_path, "-vv", "fetch", "H:x:1")
        assert proc.returncode == 1
        assert_hidden(proc.stdout + proc.stderr, secret, "gearstash: error:", *words)


# ------------------------------------------------------------------------ redaction and config


def test_redact_url_and_scrub() -> None:
    pw = _password()
    cases = {
        f"redis://:{pw}@h:6379/0": "redis://:***@h:6379/0",
        f"redis://u:{pw}@h/0?db=1&password={pw}&ttl=5": "redis://u:***@h/0?db=1&password=***&ttl=5",
        f"postgresql://u@h/db?sslpassword={pw}": "postgresql://u@h/db?sslpassword=***",
        f"unix:///tmp/r.sock?db=0&password={pw}": "unix:///tmp/r.sock?db=0&password=***",
        f"redis://:{pw}@[::1]:7000/0": "redis://:***@[::1]:7000/0",
        f"redis://:{pw}@h:notaport/0": "redis://:***@h/0",
        f"redis://:{pw}@[::1/0": "<unparseable URL>",
        f"://:{pw}@h": "<unparseable URL>",
        f"redis:u:{pw}@h": "<unparseable URL>",
        f"not a url {pw}@h": "<unparseable URL>",
        f"redis://:a#{pw}@h/0": "redis://<URL hidden: cannot tell where its password ends>",
        f"redis://:a?{pw}@h/0": "redis://<URL hidden: cannot tell where its password ends>",
        "sqlite:////home/me@work/jobs.db": "sqlite:////home/me@work/jobs.db",
        "redis://u@h/0": "redis://u@h/0",
        "memory://": "memory://",
    }
    for url, want in cases.items():
        assert redact_url(url) == want, url
        assert pw not in redact_url(url)
    encoded = "p%40ss%2Fword"
    url = f"redis://:{encoded}@h/0"
    assert set(url_secrets(url)) == {encoded, "p@ss/word"}
    assert scrub(f"auth p@ss/word failed for {url}", url) == "auth *** failed for redis://:***@h/0"
    assert url_secrets("redis://h/0") == [] and not gs_config.url_has_secret("sqlite:///x.db")


def test_config_precedence_and_errors(
    isolated: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pw = _password()
    conf = tmp_path / "c.toml"
    conf.write_text(
        f'store = "redis://:{pw}@conf:1/0"\nservers = "a:1, b:2"\ntoken_secret = "{pw}"\n'
        'spool = "/var/spool/gs"\n'
    )
    conf.chmod(0o600)
    monkeypatch.setenv("GEARSTASH_CONFIG", str(conf))
    s = gs_config.resolve()
    assert (s.store, s.servers, s.token_secret, s.spool) == (
        f"redis://:{pw}@conf:1/0", ["a:1", "b:2"], pw, "/var/spool/gs",
    )  # fmt: skip
    assert s.sources["store"] == f"config file {conf}" and pw not in repr(s)
    monkeypatch.setenv("GEARSTASH_STORE", "memory://env")
    monkeypatch.setenv("GEARSTASH_SERVERS", "e:1 e:2")
    s = gs_config.resolve()
    assert (s.store, s.servers, s.sources["store"]) == (
        "memory://env",
        ["e:1", "e:2"],
        "$GEARSTASH_STORE",
    )
    s = gs_config.resolve(store="memory://opt", servers=["o:1"])
    assert (s.store, s.servers, s.sources["servers"]) == ("memory://opt", ["o:1"], "--server")
    # the library uses the same resolution
    assert Client().servers == ["e:1", "e:2"]
    monkeypatch.delenv("GEARSTASH_SERVERS")
    assert Client().servers == ["a:1", "b:2"]
    assert Client(store=None).store.url == "memory://env"
    monkeypatch.delenv("GEARSTASH_STORE")
    assert gs_config.store_url() == f"redis://:{pw}@conf:1/0"
    monkeypatch.delenv("GEARSTASH_CONFIG")
    assert gs_config.store_url().startswith("sqlite:///")  # the default
    # both a value and its _FILE: refused
    monkeypatch.setenv("GEARSTASH_STORE", "memory://")
    monkeypatch.setenv("GEARSTASH_STORE_FILE", str(conf))
    with pytest.raises(ConfigError, match="GEARSTASH_STORE or \\$GEARSTASH_STORE_FILE"):
        gs_config.resolve()
    monkeypatch.delenv("GEARSTASH_STORE")
    monkeypatch.delenv("GEARSTASH_STORE_FILE")
    # broken files: the file and the key are named, the value never
    bad = tmp_path / "bad.toml"
    for content, words in (
        (f'store = "redis://:{pw}@h/0\n', ("bad.toml", "not valid TOML", "line 1")),
        (f"store = 1\ntoken_secret = '{pw}'\n", ("bad.toml", "'store'", "must be a string")),
        (f'servers = [1]\ntoken_secret = "{pw}"\n', ("'servers'",)),
        (f'store = "x"\nstore_file = "{pw}"\n', ("'store' or 'store_file'",)),
        (f'token_secret_file = "missing-{pw[:2]}"\n', ("cannot read", "token_secret_file")),
    ):
        bad.write_text(content)
        with pytest.raises(ConfigError) as info:
            gs_config.resolve(config=bad)
        assert_hidden(str(info.value), pw, *words)
    bad.write_bytes(b'store = "\xff\xfe"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        gs_config.resolve(config=bad)
    with pytest.raises(ConfigError, match="does not exist"):
        gs_config.resolve(config=tmp_path / "nope.toml")
    bad.write_text(f'token_secret = "{pw}"\n')
    bad.chmod(0)
    if os.geteuid() != 0:  # root reads anything
        with pytest.raises(ConfigError, match="cannot read config file"):
            gs_config.resolve(config=bad)
    bad.chmod(0o600)
    # secret files: one trailing newline dropped; empty or multi-line refused
    secret = tmp_path / "secret"
    for content, want in ((pw + "\n", pw), (pw + "\r\n", pw), (pw, pw), (pw + " \n", pw + " ")):
        secret.write_text(content, newline="")
        monkeypatch.setenv("GEARSTASH_TOKEN_SECRET_FILE", str(secret))
        assert gs_config.token_secret() == want
    for content in ("", "\n", f"{pw}\nsecond\n"):
        secret.write_text(content)
        with pytest.raises(ConfigError) as info:
            gs_config.token_secret()
        assert "GEARSTASH_TOKEN_SECRET_FILE" in str(info.value) and pw not in str(info.value)
    monkeypatch.delenv("GEARSTASH_TOKEN_SECRET_FILE")
    # warnings: readable by others, and unknown keys
    loose = tmp_path / "loose.toml"
    loose.write_text(f'token_secret = "{pw}"\nfrobnicate = 1\n')
    loose.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="gearstash.config"):
        gs_config.resolve(config=loose)
    text = caplog.text
    assert_hidden(text, pw, "readable by group or others (mode 0644)", "unknown key 'frobnicate'")
    caplog.clear()
    tight = tmp_path / "tight.toml"
    tight.write_text(f'token_secret = "{pw}"\n')
    tight.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="gearstash.config"):
        gs_config.resolve(config=tight)
    assert "readable" not in caplog.text
    loose_secret = _secret_file(tmp_path / "loose-secret", pw)
    loose_secret.chmod(0o640)
    monkeypatch.setenv("GEARSTASH_STORE_FILE", str(loose_secret))
    with caplog.at_level(logging.WARNING, logger="gearstash.config"):
        assert gs_config.resolve().store == pw
    assert "secret file" in caplog.text and "mode 0640" in caplog.text


def test_cli_config_errors_are_one_line(isolated: None, tmp_path: Path) -> None:
    pw = _password()
    bad = tmp_path / "bad.toml"
    bad.write_text(f'store = "redis://:{pw}@h/0\n')
    result = CliRunner().invoke(main, ["--config", str(bad), "fetch", "H:x:1"])
    assert result.exit_code == 1
    assert_hidden(result.output, pw, "gearstash: error: config file", "not valid TOML")
    listed = CliRunner().invoke(main, ["--config", str(bad), "plugins"])
    assert listed.exit_code == 0  # a diagnostic: it says what is wrong and lists the rest
    assert_hidden(listed.output, pw, "configuration: error:", "sqlite://")
