"""Issue 9: what a new user hit. One test (or a few) per numbered point of the issue, each written
to reproduce what the issue describes before the fix, against real servers where one is involved.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.need import need
from support.waiting import poll
from test_cli import (  # noqa: F401  (cli_env is a fixture)
    _one_error_line,
    cli,
    cli_env,
    run_gearstash,
    worker_process,
)

from gearstash import Client, JobRef, State, config
from gearstash.cli.main import main
from gearstash.errors import ConfigError, StoreError
from gearstash.model.records import Event, EventKind, JobKey, JobRecord
from gearstash.model.views import JobView
from gearstash.protocol.packets import Decoder, Packet, PacketType, encode_request, encode_response
from gearstash.protocol.worker_side import ErrorAnswer, WorkerSide
from gearstash.spine.manager import open_store
from gearstash.store.urls import scrub
from gearstash.testing.gearmand import admin_command, free_port
from gearstash.testing.servers import perl_gearman_spec, redis_spec

REPO = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------- 1. a password leaks

PASSWORD = "Sup3rS3cret"
BAD_USERINFO = (f":{PASSWORD}/x@", f"user:{PASSWORD}/x@", f":{PASSWORD}?x@", f":{PASSWORD}#x@")
SCHEMES = (
    "redis",
    "rediss",
    "unix",
    "postgresql",
    "mysql",
    "mariadb",
    "memcache",
    "sqlite",
    "memory",
)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("userinfo", BAD_USERINFO)
def test_1_unparseable_store_url_is_refused_before_any_driver(scheme, userinfo, monkeypatch):
    url = f"{scheme}://{userinfo}127.0.0.1:47302/0"
    with pytest.raises(ConfigError) as caught:
        open_store(url)
    assert PASSWORD not in str(caught.value)
    assert "percent-encode" in str(caught.value)
    monkeypatch.setenv("GEARSTASH_STORE", url)
    result = CliRunner().invoke(main, ["fetch", "-s", "127.0.0.1:1", "H:vm:1"])
    assert result.exit_code == 1, result.output
    assert PASSWORD not in result.output
    assert result.output.startswith("gearstash: error: cannot parse the store URL")


@pytest.mark.parametrize("userinfo", BAD_USERINFO)
def test_1_scrub_finds_a_password_the_parser_cannot(userinfo):
    url = f"redis://{userinfo}127.0.0.1:47302/0"
    text = f"Port could not be cast to integer value as '{PASSWORD}' in {url}"
    assert PASSWORD not in scrub(text, url)


def test_1_at_sign_in_a_sqlite_path_is_fine(tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/a@b.db")
    store.close()
    assert (tmp_path / "a@b.db").exists()


# ---------------------------------------------------------------- 3. store files are private


@pytest.mark.gearmand
def test_3_default_sqlite_store_is_created_0600_in_a_0700_folder(gearmand, tmp_path, monkeypatch):
    home = tmp_path / "new" / "home"
    monkeypatch.setenv("GEARSTASH_HOME", str(home))
    monkeypatch.delenv("GEARSTASH_STORE", raising=False)
    result = CliRunner().invoke(main, ["submit", "-b", "-s", gearmand.address, "nobody", "x"])
    assert result.exit_code == 0, result.output
    db = Path(config.default_store_url().removeprefix("sqlite:///"))
    assert db.parent == home and db.exists()
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    for path in [db, *db.parent.glob("jobs.db-*")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_3_an_existing_folder_keeps_its_mode(tmp_path):
    tmp_path.chmod(0o755)
    open_store(f"sqlite:///{tmp_path}/jobs.db").close()
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "jobs.db").stat().st_mode) == 0o600


# ---------------------------------------------------------------- 7. readers never create a store


NOWHERE = ("-s", "127.0.0.1:1")  # no job server: the store alone decides


@pytest.mark.parametrize(
    "args",
    [
        ["fetch", *NOWHERE, "H:vm:3"],
        ["fetch", *NOWHERE, "--json", "H:vm:3"],
        ["wait", *NOWHERE, "-t", "1", "H:vm:3"],
        ["follow", *NOWHERE, "-t", "1", "H:vm:3"],
        ["forget", "H:vm:3"],
        ["purge"],
    ],
    ids=lambda a: a[0] + (" --json" if "--json" in a else ""),
)
def test_7_a_reading_command_never_creates_a_missing_sqlite_store(args, tmp_path):
    path = tmp_path / "nonexistent" / "dir" / "jobs.db"
    store = f"sqlite:///{path}"
    result = CliRunner().invoke(main, [*args, "--store", store])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"gearstash: error: no store at {store} "), result.output
    assert not path.parent.exists()


# ---------------------------------------------------------------- 9. no extras installed

NO_EXTRAS_DRIVERS = ("redis", "pymemcache", "psycopg", "pymysql")


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with gearstash installed by pip from a copy of this checkout, no extras:
    what ``pip install gearstash`` gives a new user."""
    root = tmp_path_factory.mktemp("bare")
    source = root / "src"
    for part in ("gearstash", "plugins"):
        shutil.copytree(REPO / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    # from the wheels setup.sh downloaded: the suite may run without a network
    wheelhouse = REPO / ".venv" / "wheelhouse"
    assert (wheelhouse / ".complete").is_file(), "run scripts/setup.sh: .venv/wheelhouse is missing"
    subprocess.run(
        [
            venv / "bin" / "python",
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--find-links",
            str(wheelhouse),
            str(source),
        ],
        check=True,
        timeout=900,
    )
    missing = subprocess.run(
        [
            venv / "bin" / "python",
            "-c",
            "import importlib.util as u, sys; "
            f"sys.exit(any(u.find_spec(m) for m in {NO_EXTRAS_DRIVERS!r}))",
        ],
        timeout=60,
    )
    assert missing.returncode == 0, "a store driver came in without its extra"
    return venv


def bare(venv: Path, tmp_path: Path, *args: str, store: str | None = None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEARSTASH_")}
    env["GEARSTASH_HOME"] = str(tmp_path / "home")
    if store is not None:
        env["GEARSTASH_STORE"] = store
    return subprocess.run(
        [venv / "bin" / "gearstash", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_9_without_extras_the_built_in_stores_are_quiet_until_asked_for(bare_venv, tmp_path):
    listed = bare(bare_venv, tmp_path, "plugins")
    assert listed.returncode == 0, listed.stderr
    assert listed.stderr == ""  # no PluginWarning for redis and memcache
    lines = {line.split()[0]: line for line in listed.stdout.splitlines() if "://" in line}
    for scheme, extra in [
        ("redis", "redis"),
        ("memcache", "memcache"),
        ("postgresql", "postgres"),
        ("mysql", "mysql"),
    ]:
        assert lines[f"{scheme}://"].endswith(f"(needs the [{extra}] extra)"), listed.stdout
    assert "needs" not in lines["sqlite://"]
    submitted = bare(bare_venv, tmp_path, "submit", "-b", "-s", "127.0.0.1:1", "f", "x")
    assert "PluginWarning" not in submitted.stderr and "redis" not in submitted.stderr
    for url, extra in [
        ("redis://127.0.0.1:6399/0", "redis"),
        ("memcache://127.0.0.1:11299", "memcache"),
        ("postgresql://u@127.0.0.1:5499/db", "postgres"),
        ("mysql://u@127.0.0.1:3399/db", "mysql"),
    ]:
        fetched = bare(bare_venv, tmp_path, "fetch", "-s", "127.0.0.1:1", "H:vm:1", store=url)
        assert fetched.returncode == 1
        scheme = url.partition(":")[0]
        assert fetched.stderr == (
            f"gearstash: error: the {scheme}:// store needs the [{extra}] extra: "
            f"pip install 'gearstash[{extra}]'\n"
        )


# ---------------------------------------------------------------- 13. the Perl client's handles

PERL_SUBMIT = """
use strict; use Gearman::Client;
my $client = Gearman::Client->new(job_servers => [$ARGV[0]]);
my $handle = $client->dispatch_background($ARGV[1], $ARGV[2], {uniq => $ARGV[3]})
    or die "dispatch_background failed\\n";
print $handle;
"""


def perl_submit(server: str, function: str, workload: str, unique: str) -> str:
    """Submit a background job with Perl's Gearman::Client; its handle, as Perl gives it."""
    perl = shutil.which("perl")
    need(perl is not None, "perl is not installed")
    probe = subprocess.run([perl, "-MGearman::Client", "-e", "1"], capture_output=True)
    need(probe.returncode == 0, "Gearman::Client is not installed (libgearman-client-perl)")
    done = subprocess.run(
        [perl, "-e", PERL_SUBMIT, server, function, workload, unique],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_13_perl_form_parses_to_server_and_handle():
    ref = JobRef.parse("127.0.0.1:4730//H:host:1")
    assert (ref.handle, ref.server, ref.unique) == (b"H:host:1", "127.0.0.1:4730", None)
    assert JobRef.parse("localhost//H:h:2") == JobRef(b"H:h:2", "localhost:4730")
    with pytest.raises(ConfigError):
        JobRef.parse("127.0.0.1:4730//H:h:2@127.0.0.1:4731")


@pytest.mark.gearmand
def test_13_every_command_takes_the_perl_clients_handle(gearmand_factory, cli_env, tmp_path):  # noqa: F811
    first, second = gearmand_factory(), gearmand_factory()
    servers = [first.address, second.address]
    with worker_process(
        [*(f"--server={s}" for s in servers), "clijobs:reverse"],
        env=cli_env,
        cwd=tmp_path,
        servers=[first, second],
        functions=["reverse"],
    ):
        handle = perl_submit(second.address, "reverse", "ABC123", "perl-unique-1")
        assert handle.startswith(f"{second.address}//H:"), handle
        flags = [f"--server={s}" for s in servers]
        waited = cli("wait", *flags, "-t", "20", "-q", "--json", handle)
        assert waited.exit_code == 0, waited.output
        doc = json.loads(waited.stdout)
        assert (doc["server"], doc["result"]) == (second.address, "321CBA")
        assert doc["handle"] == handle.partition("//")[2]
        fetched = json.loads(cli("fetch", *flags, "--json", handle).stdout)
        assert fetched["unique"] == "perl-unique-1" and fetched["state"] == "complete"
        status = cli("status", *flags, "--json", handle)
        assert status.exit_code == 0, status.output
        assert json.loads(status.stdout)["server"] == second.address
        followed = cli("follow", *flags, "-t", "20", handle)
        assert followed.exit_code == 0 and "chunk-2" in followed.stdout, followed.output
        assert cli("forget", handle).stdout.strip() == "forgot 1 record(s)"


# ---------------------------------------------------------------- 8. a bare handle, configured servers only


def _finished(server: str, handle: bytes, result: bytes, at: float) -> list[Event]:
    key = JobKey(server, handle, b"u-" + result)
    return [
        Event(EventKind.STARTED, key, at, function=b"f", worker="w"),
        Event(EventKind.COMPLETED, key, at + 0.1, payload=result),
    ]


@pytest.mark.gearmand
def test_8_a_bare_handle_is_looked_up_among_the_configured_servers_only(gearmand, tmp_sqlite_url):
    ours, other = gearmand.address, "127.0.0.1:56165"
    store = open_store(tmp_sqlite_url)
    try:
        store.write(_finished(ours, b"H:vm:7", b"ours", time.time() - 10))
        store.write(_finished(other, b"H:vm:7", b"theirs", time.time()))  # newer, elsewhere
        store.write(_finished(other, b"H:vm:8", b"only-theirs", time.time()))
    finally:
        store.close()
    with Client([ours], store=tmp_sqlite_url) as client:
        seven, eight = client.fetch_many(["H:vm:7", "H:vm:8"])
        assert (seven.state, seven.result, seven.record.key.server) == (
            State.COMPLETE,
            b"ours",
            ours,
        )
        assert (eight.state, eight.record) == (State.UNKNOWN, None)
        updates = list(client.follow("H:vm:7", timeout=10))
        assert updates[-1].view.record.key.server == ours
        assert [c for u in updates for c in u.chunks] == []
    result = CliRunner().invoke(main, ["fetch", "-s", ours, "--store", tmp_sqlite_url, "H:vm:8"])
    assert (
        result.exit_code == 0 and "unknown" in result.output and "only-theirs" not in result.output
    )


# ---------------------------------------------------------------- 4. a handle gearmand cannot take

LONG_HANDLE = "H:" + "x" * 62  # 64 bytes: gearmand never answers GET_STATUS for it


@pytest.mark.gearmand
@pytest.mark.parametrize("bad", [LONG_HANDLE, "H:vm:1%00x"], ids=["64 bytes", "NUL"])
def test_4_a_bad_handle_never_costs_the_others_their_answer(bad, gearmand, tmp_sqlite_url):
    with Client([gearmand.address], store=tmp_sqlite_url, timeout=60) as client:
        ref = client.submit_background("nobody-serves-this", b"x")  # stays queued
        started = time.monotonic()
        views = client.fetch_many([bad, str(ref), ref.handle])
        took = time.monotonic() - started
    assert [v.state for v in views] == [State.UNKNOWN, State.QUEUED, State.QUEUED]
    assert views[0].status is not None and not views[0].status.known
    assert all(v.status is not None and v.status.known for v in views[1:])
    assert took < 30, f"{took:.1f} s: the bad handle was sent and the server hung"
    result = CliRunner().invoke(main, ["status", "-s", gearmand.address, bad, str(ref)])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("gearstash: error: job handle "), result.output
    assert lines[1].startswith(f"{ref}\tknown=1 running=0"), result.output


# ---------------------------------------------------------------- 6. job modules


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def reverse(job:\n    return 1\n", "broken.py:1: "),
        ("import os\nraise RuntimeError('no config here')\n", "broken.py:2: "),
    ],
    ids=["syntax error", "raises on import"],
)
def test_6_a_broken_job_module_is_one_line_with_file_and_line(source, expected, tmp_path):
    (tmp_path / "broken.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEARSTASH_")}
    env["GEARSTASH_STORE"] = f"sqlite:///{tmp_path}/jobs.db"
    done = run_gearstash("worker", "-s", "127.0.0.1:1", "broken:reverse", env=env, cwd=tmp_path)
    assert done.returncode == 1
    line = _one_error_line(done.stderr)
    assert str(tmp_path / expected) in line, line
    assert "RuntimeError: no config here" in line or "SyntaxError" in line, line


@pytest.mark.gearmand
def test_6_a_path_to_a_py_file_and_app_dir(gearmand, cli_env, tmp_path):  # noqa: F811
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "myjobs.py").write_text("def reverse(job):\n    return job.workload[::-1]\n")
    here = tmp_path / "elsewhere"
    here.mkdir()
    relative = run_gearstash(
        "worker", "-s", "127.0.0.1:1", ".myjobs:reverse", env=cli_env, cwd=here
    )
    assert relative.returncode == 1
    assert "relative" in _one_error_line(relative.stderr)
    missing = run_gearstash("worker", "-s", "127.0.0.1:1", "myjobs:reverse", env=cli_env, cwd=here)
    assert missing.returncode == 1
    assert "--app-dir" in _one_error_line(missing.stderr)
    for args in (["../jobs/myjobs.py:reverse"], ["--app-dir", str(jobs), "myjobs:reverse"]):
        with worker_process(
            ["-s", gearmand.address, "--max-jobs", "1", *args],
            env=cli_env,
            cwd=here,
            servers=[gearmand],
            functions=["reverse"],
        ) as proc:
            with Client([gearmand.address], store=cli_env["GEARSTASH_STORE"]) as client:
                assert client.submit("reverse", b"abc").result == b"cba"
            assert proc.wait(20) == 0


# ---------------------------------------------------------------- 5. the store is down at start


@pytest.mark.gearmand
def test_5_a_worker_starts_with_its_store_down_spools_and_replays(
    gearmand,
    cli_env,  # noqa: F811
    tmp_path,
    own_server,
):
    redis = own_server(lambda: redis_spec(persistent=True))
    redis.stop()  # the store is down when the worker starts
    env = dict(cli_env, GEARSTASH_STORE=redis.url)
    spool = tmp_path / "spool"
    with worker_process(
        ["-s", gearmand.address, "--spool", str(spool), "clijobs:reverse"],
        env=env,
        cwd=tmp_path,
        servers=[gearmand],
        functions=["reverse"],
    ):
        with Client([gearmand.address], store="null://") as client:
            ref = client.submit_background("reverse", b"ABC123", unique="down-at-start")
            assert poll(lambda: not client.status(ref).known, 30)  # the job ran
        assert any(f.stat().st_size > 0 for f in spool.glob("*.spool"))
        redis.start()
        with Client([gearmand.address], store=redis.url) as client:
            # the replay thread retries with backoff: until then the job is unknown to both
            assert poll(lambda: client.fetch(ref).state is State.COMPLETE, 60)
            view = client.fetch(ref)
        assert (view.state, view.result) == (State.COMPLETE, b"321CBA")
        assert view.record.data == [b"chunk-0", b"chunk-1", b"chunk-2"]
    log = "\n".join(p.read_text() for p in tmp_path.glob("worker-*.log"))
    assert f"store {redis.url} unreachable at start" in log, log
    assert "Traceback" not in log, log


# ---------------------------------------------------------------- 2. job output on a terminal

HOSTILE_MODULE = """
def evil(job):
    job.send_status(1, 2)
    job.send_data(b"title\\x1b]0;PWNED\\x07 chunk")
    job.send_warning(b"warn\\x1b]0;PWNED\\x07")
    job.send_data(b"over\\rwrite")
    return b"nul\\x00 and\\r return"
"""
OSC = b"\x1b]0;PWNED\x07"


def in_pty(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 60) -> bytes:
    """Run ``gearstash ARGS`` with its stdout and stderr on a pseudo-terminal (a real tty);
    everything it wrote, with the tty's ``\\r\\n`` for ``\\n`` undone."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gearstash", *args],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        env=env,
        cwd=cwd,
    )
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            out += data
        elif proc.poll() is not None:
            break
    os.close(master)
    proc.wait(10)
    return bytes(out).replace(b"\r\n", b"\n")


def assert_escaped(shown: bytes) -> None:
    assert OSC not in shown and b"\x1b" not in shown and b"\x07" not in shown, shown
    assert b"\x00" not in shown and b"\r" not in shown, shown
    assert b"\\x1b]0;PWNED\\x07" in shown, shown


@pytest.mark.gearmand
def test_2_job_output_is_escaped_on_a_terminal_and_raw_only_to_a_pipe(
    gearmand,
    cli_env,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    (tmp_path / "hostile.py").write_text(HOSTILE_MODULE)
    cli_env["GEARSTASH_TOKEN_SECRET"] = "a token secret of at least thirty-two bytes"
    monkeypatch.setenv("GEARSTASH_TOKEN_SECRET", cli_env["GEARSTASH_TOKEN_SECRET"])
    server = ["-s", gearmand.address]
    with worker_process(
        [*server, "hostile:evil"],
        env=cli_env,
        cwd=tmp_path,
        servers=[gearmand],
        functions=["evil"],
    ):
        foreground = in_pty(["submit", *server, "evil", "x"], cli_env, tmp_path)
        assert_escaped(foreground)
        assert b"\\x00" in foreground and b"over\\x0dwrite" in foreground
        ref = cli("submit", *server, "-b", "evil", "x").stdout.strip()
        assert cli("wait", *server, "-q", "-t", "20", ref).exit_code == 0
        for args in (
            ["fetch"],
            ["wait", "-q", "-t", "20"],
            ["follow", "-t", "20"],
            ["token", "fetch"],
        ):
            if args[0] == "token":
                token = cli("token", "sign", ref).stdout.strip()
                shown = in_pty([*args, *server, token], cli_env, tmp_path)
            else:
                shown = in_pty([*args, *server, ref], cli_env, tmp_path)
            assert_escaped(shown)
        raw = in_pty(["follow", *server, "--raw", ref], cli_env, tmp_path)
        assert OSC in raw
        piped = run_gearstash("follow", *server, ref, env=cli_env, cwd=tmp_path)
        assert OSC.decode() in piped.stdout
        hostile_ref = in_pty(["status", *server, "H:vm:\x1b]0;PWNED\x07"], cli_env, tmp_path)
        assert b"\x1b" not in hostile_ref and b"\x07" not in hostile_ref, hostile_ref
        assert b"known=0" in hostile_ref


# ---------------------------------------------------------------- 11. submit, follow, worker, demo


@pytest.mark.gearmand
def test_11_foreground_submit_follow_and_the_worker_say_it_plainly(
    gearmand,
    cli_env,  # noqa: F811
    tmp_path,
):
    server = ["-s", gearmand.address]
    worker = subprocess.Popen(
        [sys.executable, "-m", "gearstash", "worker", *server, "clijobs:reverse"],
        cwd=tmp_path,
        env=cli_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        done = run_gearstash("submit", *server, "reverse", "olleh", env=cli_env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout == "chunk-0\nchunk-1\nchunk-2\nhello\n"
        assert done.stderr == "gearstash: job warning: careful\n"
        ref = cli("submit", *server, "-b", "reverse", "ABC").stdout.strip()
        followed = run_gearstash("follow", *server, "-t", "20", ref, env=cli_env, cwd=tmp_path)
        assert followed.returncode == 0, followed.stderr
        assert followed.stdout == "chunk-0\nchunk-1\nchunk-2\nCBA\n"
        assert followed.stderr.endswith(" complete --\n")
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=20)
    assert stderr.splitlines()[-1] == "gearstash worker: stopped on SIGTERM after 2 job(s)", stderr
    waited = run_gearstash(
        "submit", *server, "--timeout", "1", "nobody-serves", "x", env=cli_env, cwd=tmp_path
    )
    assert waited.returncode == 4
    assert "is a worker serving 'nobody-serves'?" in _one_line(waited.stderr)


def _one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.gearmand
def test_11_the_demo_prints_the_worker_banner_before_the_live_bars(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEARSTASH_")}
    env["GEARSTASH_HOME"] = str(tmp_path / "home")
    env["TERM"] = "xterm-256color"  # a terminal that draws live bars (a bare chroot has no TERM)
    shown = in_pty(["demo", "--steps", "3", "--delay", "0.05"], env, tmp_path, timeout=120)
    banner = shown.find(b"gearstash worker: serving reverse")
    bars = shown.find(b"\x1b[?25l")  # rich hides the cursor when the live bars start
    assert 0 <= banner < bars, shown
    assert shown.count(b"gearstash worker: serving") == 1
    assert b"Done." in shown


# ---------------------------------------------------------------- 14. other job servers, other clients


@pytest.fixture
def perl_server(own_server):
    """Perl's Gearman::Server of this test's own (``admin()`` for the text protocol)."""
    server = own_server(perl_gearman_spec)
    server.admin = lambda command: admin_command(server.host, server.port, command)
    return server


def test_14_gearstash_worker_and_client_on_perl_gearman_server(
    perl_server,
    cli_env,  # noqa: F811
    tmp_path,
):
    addr = perl_server.address
    server = ["-s", addr]
    with worker_process(
        [*server, "clijobs:reverse"],
        env=cli_env,
        cwd=tmp_path,
        servers=[perl_server],
        functions=["reverse"],
    ):
        ref = cli("submit", *server, "-b", "reverse", "ABC123").stdout.strip()
        waited = cli("wait", *server, "-q", "-t", "20", "--json", ref)
        assert waited.exit_code == 0, waited.output
        doc = json.loads(waited.stdout)
        assert (doc["state"], doc["result"]) == ("complete", "321CBA")
        assert doc["data"] == ["chunk-0", "chunk-1", "chunk-2"]  # the server took none of them
        assert doc["warnings"] == ["careful"]
        bare = json.loads(cli("fetch", *server, "--json", JobRef.parse(ref).handle).stdout)
        assert (bare["state"], bare["result"]) == ("complete", "321CBA")
        followed = run_gearstash("follow", *server, "-t", "20", ref, env=cli_env, cwd=tmp_path)
        assert followed.stdout == "chunk-0\nchunk-1\nchunk-2\n321CBA\n", followed.stderr
        foreground = run_gearstash("submit", *server, "reverse", "olleh", env=cli_env)
        assert foreground.returncode == 0 and foreground.stdout.endswith("hello\n")

        perl_handle = perl_submit(addr, "reverse", "perl", "from-perl")  # Perl client, too
        assert perl_handle.startswith(f"{addr}//H:")
        from_perl = json.loads(cli("wait", *server, "-q", "-t", "20", "--json", perl_handle).stdout)
        assert (from_perl["state"], from_perl["result"]) == ("complete", "lrep")

        queued = cli("submit", *server, "-b", "nobody-serves", "x").stdout.strip()
        status = cli("status", *server, queued)  # STATUS_RES with empty numbers
        assert status.exit_code == 0, status.output
        assert "known=1 running=0 0/0" in status.stdout
        by_unique = cli("status", *server, "#" + JobRef.parse(queued).unique.decode())
        assert by_unique.exit_code == 1
        assert "cannot do GET_STATUS_UNIQUE" in by_unique.output, by_unique.output
        low = cli("submit", *server, "-b", "--priority", "low", "reverse", "x")
        assert low.exit_code == 1
        assert "cannot do this submission" in low.output and "priority normal" in low.output
    log = "\n".join(p.read_text() for p in tmp_path.glob("worker-*.log"))
    assert "grabbing with GRAB_JOB" in log and "does not take WORK_DATA/WORK_WARNING" in log


PERL_WORKER = """
use strict; use Gearman::Worker;
$| = 1;
my $worker = Gearman::Worker->new(job_servers => [$ARGV[0]]);
$worker->register_function(perlrev => sub {
    my $job = shift;
    $job->set_status(1, 2);
    return scalar reverse $job->arg;
});
print "ready\\n";
$worker->work while 1;
"""


@pytest.mark.gearmand
def test_14_gearstash_client_with_a_perl_worker(gearmand, tmp_sqlite_url, tmp_path):
    perl = shutil.which("perl")
    need(perl is not None, "perl is not installed")
    probe = subprocess.run([perl, "-MGearman::Worker", "-e", "1"], capture_output=True)
    need(probe.returncode == 0, "Gearman::Worker is not installed (libgearman-client-perl)")
    worker = subprocess.Popen(
        [perl, "-e", PERL_WORKER, gearmand.address], stdout=subprocess.PIPE, text=True
    )
    try:
        assert worker.stdout.readline() == "ready\n"
        assert poll(lambda: "perlrev" in gearmand.admin("status"), 15)
        with Client([gearmand.address], store=tmp_sqlite_url) as client:
            view = client.submit("perlrev", b"gearman", timeout=20)
            assert (view.state, view.result) == (State.COMPLETE, b"namraeg")
            ref = client.submit_background("perlrev", b"abc")
            assert poll(lambda: not client.status(ref).known, 15)
            # a worker that does not capture: the store has only the submission marker
            assert client.fetch(ref).state is State.LOST
    finally:
        worker.kill()
        worker.wait(10)
        worker.stdout.close()


def _perl_error(command: str) -> Packet:
    text = (
        f'Can\'t locate object method "CMD_{command}" via package "Gearman::Server::Client" at '
        "/usr/share/perl5/Gearman/Server/Client.pm line 552.\n"
    )
    decoder = Decoder()
    decoder.feed(encode_response(PacketType.ERROR, b"server_error", text.encode()))
    packet = decoder.next_packet()
    assert packet is not None
    return packet


def test_14_the_worker_side_reads_perl_gearman_servers_errors():
    side = WorkerSide(b"w", [("reverse", None)])
    side.connected()
    side.grab()
    fallback = side.receive(_perl_error(""))  # GRAB_JOB_UNIQ has no name there
    assert isinstance(fallback, ErrorAnswer) and fallback.send == encode_request(
        PacketType.GRAB_JOB
    )
    assert not side.uniques and side.work_output
    refused = side.receive(_perl_error("work_data"))
    assert isinstance(refused, ErrorAnswer) and refused.no_work_output and not refused.send
    assert not side.work_output
    again = side.receive(_perl_error("work_warning"))
    assert isinstance(again, ErrorAnswer) and not again.no_work_output  # said once


# ---------------------------------------------------------------- 10. one message style

TIMESTAMPED = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", re.MULTILINE)


@pytest.mark.gearmand
def test_10_one_message_style_and_timestamps_only_with_v(gearmand, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEARSTASH_")}
    env["GEARSTASH_HOME"] = str(tmp_path / "home")
    env["GEARSTASH_STORE"] = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    args = ("submit", "-b", "-s", gearmand.address, "f", "x")
    quiet = run_gearstash(*args, env=env, cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stdout.startswith("H:")  # submitted all the same
    line = _one_line(quiet.stderr)
    assert line.startswith("gearstash: warning: 1 job(s) submitted"), line
    assert "not recorded as submitted" in line and "Connection refused" in line
    verbose = run_gearstash("-v", *args, env=env, cwd=tmp_path)
    assert TIMESTAMPED.search(verbose.stderr), verbose.stderr

    dead = f"127.0.0.1:{free_port()}"
    status = run_gearstash("status", "-s", dead, "H:x:1", env=env, cwd=tmp_path)
    assert status.returncode == 1
    assert _one_line(status.stderr).startswith("gearstash: error: ")
    assert "Connection refused" in status.stderr


def test_10_a_missing_redis_password_is_said_plainly(own_server):
    redis = own_server(lambda: redis_spec(extra=["--requirepass", "pw-9"]))
    for url, said in [
        (redis.url, "the store needs a password"),
        (redis.url.replace("//", "//:wrong-pw@"), "the store refused the user name or password"),
    ]:
        with pytest.raises(StoreError) as caught:
            open_store(url)
        assert said in str(caught.value) and "HELLO" not in str(caught.value)
        assert "wrong-pw" not in str(caught.value)


# ---------------------------------------------------------------- 12. README and behaviour agree


def test_12_fetch_json_of_an_unknown_job_has_every_key_and_exits_0(tmp_sqlite_url):
    known = JobView(JobRef.parse("H:vm:1"), State.COMPLETE, None, _record()).to_json()
    open_store(tmp_sqlite_url).close()
    fetched = CliRunner().invoke(
        main, ["fetch", "-s", "127.0.0.1:1", "--json", "--store", tmp_sqlite_url, "H:vm:404"]
    )
    assert fetched.exit_code == 0, fetched.output
    doc = json.loads(fetched.stdout)
    assert doc["state"] == "unknown"
    assert set(doc) == set(known)
    readme = (REPO / "README.md").read_text()
    assert "also `fetch` of a job nobody knows" in readme  # the exit-code table says exit 0


def _record() -> JobRecord:
    record = JobRecord(JobKey("127.0.0.1:4730", b"H:vm:1", b"u"))
    record.apply(Event(EventKind.COMPLETED, record.key, 1.0, payload=b"r"))
    return record


def test_12_the_readme_says_how_to_get_gearstash_on_path():
    readme = (REPO / "README.md").read_text()
    command_line = readme.split("## Command line", 1)[1]
    assert command_line.index(".venv/bin/activate") < command_line.index("$ gearstash")
