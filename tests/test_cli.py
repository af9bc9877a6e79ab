"""The ``gearstash`` command line against a real gearmand.

Commands that talk to a job server run in-process through click's CliRunner; the worker (and the
demo, and the error paths whose exact stderr matters) run as real subprocesses
(``python -m gearstash``). Worker and commands share an SQLite store named by ``$GEARSTASH_STORE``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from support.need import need
from support.waiting import poll

from gearstash import Client, JobRef, State
from gearstash.cli.main import main
from gearstash.protocol.admin import parse_workers
from gearstash.testing.gearmand import find_gearmand, free_port

JOBS_MODULE = textwrap.dedent(
    '''
    """Job functions for the CLI tests (imported by `gearstash worker clijobs:NAME`)."""
    import time

    from gearstash import JobFailed


    def reverse(job):
        for i in range(3):
            job.send_status(i + 1, 3)
            job.send_data(b"chunk-%d" % i)
        job.send_warning("careful")
        return job.workload[::-1]


    def boom(job):
        job.send_data(b"before the crash")
        raise ValueError("bad input: " + job.workload.decode())


    def refuse(job):
        raise JobFailed("refused " + job.workload.decode())


    def slow(job):
        seconds = float(job.workload or b"1")
        for i in range(10):
            job.send_status(i, 10)
            time.sleep(seconds / 10)
        return b"slept"
    '''
)

SECRET = "s3cret"


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """An SQLite store in tmp_path shared via $GEARSTASH_STORE; returns the env for subprocesses."""
    (tmp_path / "clijobs.py").write_text(JOBS_MODULE)
    monkeypatch.setenv("GEARSTASH_STORE", f"sqlite:///{tmp_path}/cli.db")
    monkeypatch.setenv("GEARSTASH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GEARSTASH_SERVERS", raising=False)
    return dict(os.environ)


def cli(*args: str, input: str | None = None) -> Result:
    """Run a gearstash command in-process; an unexpected exception fails the test."""
    result = CliRunner().invoke(main, list(args), input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def run_gearstash(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gearstash", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def forgotten(servers: list[str], ref: str) -> bool:
    """Wait until gearmand has forgotten a finished job: its record is final just before the
    worker's WORK_COMPLETE reaches the server."""
    with Client(servers, store="null://") as client:
        return bool(poll(lambda: not client.status(ref).known))


@contextmanager
def worker_process(
    args: list[str], *, env: dict[str, str], cwd: Path, servers, functions: list[str]
) -> Iterator[subprocess.Popen[bytes]]:
    """`gearstash worker ARGS` as a subprocess, ready once every server lists ``functions``."""
    log = open(cwd / f"worker-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "gearstash", "-v", "worker", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def ready() -> bool:
            assert proc.poll() is None, f"worker exited early: {_read(log)}"
            return all(set(functions) <= served(server) for server in servers)

        assert poll(ready), f"worker never registered {functions}: {_read(log)}"
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        log.close()


def served(server) -> set[str]:
    """Every function some worker registered on ``server`` (a Gearmand)."""
    rows = parse_workers(server.admin("workers").splitlines())
    return {name for row in rows for name in row.functions}


def _read(log) -> str:
    log.flush()
    return Path(log.name).read_text(errors="replace")


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("gearstash: error:"), stderr
    return lines[0]


# ---------------------------------------------------------------- the main flow


@pytest.mark.gearmand
def test_worker_submit_wait_status_fetch(gearmand, cli_env, tmp_path):
    addr = gearmand.address
    with worker_process(
        [
            "--server",
            addr,
            "--capture-workload",
            *("clijobs:reverse", "clijobs:boom", "clijobs:refuse"),
        ],
        env=cli_env,
        cwd=tmp_path,
        servers=[gearmand],
        functions=["reverse", "boom", "refuse"],
    ):
        submitted = cli("submit", "--server", addr, "reverse", "ABC123", "--background")
        assert submitted.exit_code == 0, submitted.output
        text = submitted.stdout.strip()
        assert "\n" not in text
        ref = JobRef.parse(text)
        assert ref.server == addr and ref.handle.startswith(b"H:") and ref.unique

        waited = cli("wait", "--server", addr, "--timeout", "20", text)
        assert waited.exit_code == 0, waited.output
        assert "321CBA" in waited.stdout and "complete" in waited.stdout

        assert forgotten([addr], text)
        status = cli("status", "--server", addr, text)
        assert status.exit_code == 0, status.output
        assert "known=0 running=0" in status.stdout  # gearmand forgot the finished job
        live = json.loads(cli("status", "--server", addr, "--json", text).stdout)
        assert (live["known"], live["running"]) == (False, False)

        fetched = cli("fetch", "--server", addr, "--json", text)
        assert fetched.exit_code == 0, fetched.output
        doc = json.loads(fetched.stdout)
        expected = {
            "handle": ref.handle.decode(),
            "function": "reverse",
            "unique": ref.unique.decode(),
            "state": "complete",
            "known": False,
            "running": False,
            "numerator": 3,
            "denominator": 3,
            "data": ["chunk-0", "chunk-1", "chunk-2"],
            "warnings": ["careful"],
            "result": "321CBA",
            "error": None,
            "workload": "ABC123",  # --capture-workload
        }
        assert {k: doc.get(k, "<missing>") for k in expected} == expected
        assert doc["server"] == addr

        bare = cli("fetch", "--server", addr, ref.handle.decode())
        assert bare.exit_code == 0, bare.output
        assert "complete" in bare.stdout and "321CBA" in bare.stdout
        assert "chunk-0 | chunk-1 | chunk-2" in bare.stdout
        bare_json = json.loads(cli("fetch", "--server", addr, "--json", ref.handle.decode()).stdout)
        assert bare_json["result"] == "321CBA" and bare_json["unique"] == ref.unique.decode()

        foreground = cli("submit", "--server", addr, "reverse", "hello")
        assert foreground.exit_code == 0, foreground.output
        assert foreground.stdout == "chunk-0\nchunk-1\nchunk-2\nolleh\n"  # issue 9.11
        assert "warning: careful" in foreground.stderr

        from_stdin = cli("submit", "--server", addr, "reverse", "-", input="stdin!")
        assert from_stdin.exit_code == 0 and from_stdin.stdout.endswith("!nidts\n")

        failed = cli("submit", "--server", addr, "boom", "xyz")
        assert failed.exit_code == 3, failed.output
        assert failed.stdout == "before the crash\n"
        assert "ValueError: bad input: xyz" in failed.stderr

        refused = cli("submit", "--server", addr, "refuse", "it")
        assert refused.exit_code == 3 and "refused it" in refused.stderr

        bg = cli("submit", "--server", addr, "-b", "boom", "later").stdout.strip()
        waited_failed = cli("wait", "--server", addr, "--quiet", "--timeout", "20", bg)
        assert waited_failed.exit_code == 3, waited_failed.output
        assert "failed" in waited_failed.stdout and "bad input: later" in waited_failed.stdout
        failed_doc = json.loads(cli("fetch", "--server", addr, "--json", bg).stdout)
        assert failed_doc["state"] == "failed" and failed_doc["data"] == ["before the crash"]
        assert failed_doc["error"]["kind"] == "exception"
        assert "Traceback" in failed_doc["error"]["traceback"]

        unknown = cli("wait", "--server", addr, "--quiet", "--timeout", "5", "H:nowhere:1")
        assert unknown.exit_code == 4, unknown.output


@pytest.mark.gearmand
def test_worker_name_renames_a_function(gearmand, cli_env, tmp_path):
    addr = gearmand.address
    with worker_process(
        ["--server", addr, "--name", "reverse=flip", "clijobs:reverse"],
        env=cli_env,
        cwd=tmp_path,
        servers=[gearmand],
        functions=["flip"],
    ):
        assert "flip" in served(gearmand) and "reverse" not in served(gearmand)
        result = cli("submit", "--server", addr, "flip", "hello")
        assert result.exit_code == 0, result.output
        assert result.stdout.endswith("olleh\n")
        ref = cli("submit", "--server", addr, "-b", "flip", "abc").stdout.strip()
        doc = json.loads(cli("wait", "--server", addr, "-q", "--json", "-t", "20", ref).stdout)
        assert doc["function"] == "flip" and doc["result"] == "cba"


@pytest.mark.gearmand
def test_sigterm_lets_the_running_job_finish(gearmand, cli_env, tmp_path):
    addr = gearmand.address
    with (
        worker_process(
            ["--server", addr, "clijobs:slow"],
            env=cli_env,
            cwd=tmp_path,
            servers=[gearmand],
            functions=["slow"],
        ) as proc,
        Client([addr]) as client,
    ):
        ref = client.submit_background("slow", b"1.5")
        assert poll(lambda: client.fetch(ref).state is State.RUNNING)
        signalled = time.time()
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert proc.wait(10) == 0
        assert time.monotonic() - started < 5
        view = client.fetch(ref)
        assert view.state is State.COMPLETE and view.result == b"slept"
        assert view.record is not None and view.record.finished_at is not None
        assert view.record.finished_at > signalled  # it really was still running at SIGTERM
        assert len(view.record.status) == 10
        # and the worker is gone from the server
        assert poll(lambda: "slow" not in served(gearmand))


@pytest.mark.gearmand
def test_servers_from_the_environment_and_repeated_option(
    gearmand_factory, cli_env, tmp_path, monkeypatch
):
    a, b = gearmand_factory(), gearmand_factory()
    # the worker finds both servers in $GEARSTASH_SERVERS (comma-separated)
    worker_env = dict(cli_env, GEARSTASH_SERVERS=f"{a.address},{b.address}")
    with worker_process(
        ["clijobs:reverse"], env=worker_env, cwd=tmp_path, servers=[a, b], functions=["reverse"]
    ):
        monkeypatch.setenv("GEARSTASH_SERVERS", a.address)
        only_env = cli("submit", "-b", "reverse", "env")
        assert only_env.exit_code == 0, only_env.output
        ref = JobRef.parse(only_env.stdout.strip())
        assert ref.server == a.address
        assert "vne" in cli("wait", "-q", "-t", "20", str(ref)).stdout
        monkeypatch.delenv("GEARSTASH_SERVERS")

        placer = Client([a.address, b.address], store="null://")
        unique = next(
            u
            for u in (f"cli-{i}" for i in range(100))
            if placer.placement(u.encode())[0] == b.address
        )
        both = ["--server", a.address, "--server", b.address]
        submitted = cli("submit", *both, "-b", "-u", unique, "reverse", "twice")
        assert submitted.exit_code == 0, submitted.output
        ref_b = JobRef.parse(submitted.stdout.strip())
        assert (ref_b.server, ref_b.unique) == (b.address, unique.encode())
        waited = cli("wait", *both, "-q", "-t", "20", str(ref_b))
        assert waited.exit_code == 0 and "eciwt" in waited.stdout
        # a bare handle is looked up on every --server given
        assert forgotten([b.address], str(ref_b))
        bare = json.loads(cli("fetch", *both, "--json", ref_b.handle.decode()).stdout)
        assert bare["result"] == "eciwt" and bare["server"] == b.address
        # ... and b alone is enough when named
        alone = cli("status", "--server", b.address, str(ref_b))
        assert alone.exit_code == 0 and "known=0" in alone.stdout


# ---------------------------------------------------------------- errors


def test_unreachable_server_is_one_line_and_exit_1(cli_env):
    dead = f"127.0.0.1:{free_port()}"
    for args in (
        ["submit", "--server", dead, "-b", "reverse", "x"],
        ["submit", "--server", dead, "reverse", "x"],
        ["status", "--server", dead, "H:x:1"],
    ):
        proc = run_gearstash(*args, env=cli_env)
        assert proc.returncode == 1, (args, proc.stdout, proc.stderr)
        line = _one_error_line(proc.stderr)
        assert dead in line
        assert "Traceback" not in proc.stderr + proc.stdout
        assert proc.stdout == ""
    # the same through CliRunner (exit code and message, no exception escaping)
    result = cli("submit", "--server", dead, "-b", "reverse", "x")
    assert result.exit_code == 1 and result.stderr.startswith("gearstash: error:")


@pytest.mark.parametrize(
    "store",
    [
        "postgresql://u:{secret}@127.0.0.1:{port}/x",
        "postgresql+psycopg://u:{secret}@127.0.0.1:{port}/x?sslmode=disable",
        "nosuchscheme://u:{secret}@127.0.0.1:{port}/x",
        "sqlite:///{tmp}/a-regular-file/jobs.db",
    ],
    ids=["postgresql", "postgresql-driver", "unknown-scheme", "sqlite-under-a-file"],
)
def test_bad_store_is_one_line_exit_1_and_never_shows_the_password(store, cli_env, tmp_path):
    (tmp_path / "a-regular-file").write_text("not a folder")
    url = store.format(secret=SECRET, port=free_port(), tmp=tmp_path)
    env = dict(cli_env, GEARSTASH_STORE=url)
    dead = f"127.0.0.1:{free_port()}"
    down = store.startswith("postgresql")  # a server that may come back: the worker serves
    for args in (
        ["fetch", "--server", dead, "H:x:1"],
        ["wait", "--server", dead, "-q", "-t", "5", "H:x:1"],
        *([] if down else [["worker", "--server", dead, "clijobs:reverse"]]),
    ):
        proc = run_gearstash(*args, env=env, cwd=tmp_path)
        assert proc.returncode == 1, (args, proc.stdout, proc.stderr)
        assert SECRET not in proc.stdout + proc.stderr
        assert "Traceback" not in proc.stdout + proc.stderr
        error = [line for line in proc.stderr.splitlines() if line.startswith("gearstash: error:")]
        assert len(error) == 1, proc.stderr
        assert "***" in error[0] or "store" in error[0]
    if down:  # issue 9.5: the worker starts, says the store is unreachable, without the password
        worker = subprocess.Popen(
            [sys.executable, "-m", "gearstash", "worker", "--server", dead, "clijobs:reverse"],
            env=env,
            cwd=tmp_path,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            line = worker.stderr.readline()
        finally:
            worker.terminate()
            rest = worker.communicate(timeout=20)[1]
        assert "unreachable at start" in line, line + rest
        assert SECRET not in line + rest and "Traceback" not in line + rest
    # --store on the command line: same care
    proc = run_gearstash("fetch", "--server", dead, "--store", url, "H:x:1", env=cli_env)
    assert proc.returncode == 1 and SECRET not in proc.stdout + proc.stderr
    # `plugins` shows the configured store redacted
    listed = cli("plugins")
    assert listed.exit_code == 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GEARSTASH_STORE", url)
        listed = cli("plugins")
    assert listed.exit_code == 0 and SECRET not in listed.output
    if SECRET in url:
        assert "u:***@" in listed.stdout


def test_plugins_lists_the_built_in_stores(cli_env):
    result = cli("plugins")
    assert result.exit_code == 0, result.output
    for scheme in ("sqlite://", "memory://", "null://", "postgresql://"):
        assert scheme in result.stdout
    doc = json.loads(cli("plugins", "--json").stdout)
    assert {"sqlite", "memory", "null", "postgresql"} <= set(doc["stores"])
    assert {p["name"] for p in doc["plugins"]} >= {"memory", "sql"}
    assert doc["failed"] == []


# ---------------------------------------------------------------- demo


@pytest.mark.gearmand
def test_demo_runs_end_to_end(cli_env, tmp_path):
    need(find_gearmand() is not None, "gearmand is not installed (the demo starts its own)")
    env = {k: v for k, v in cli_env.items() if k not in ("GEARSTASH_STORE", "GEARSTASH_SERVERS")}
    env["GEARSTASH_HOME"] = str(tmp_path)
    proc = run_gearstash("demo", "--steps", "3", "--delay", "0.05", env=env, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "321CBA" in proc.stdout and "654FED" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    # the demo keeps its jobs in a private temporary store, never in the user's default one
    assert not (tmp_path / "jobs.db").exists()


# ---------------------------------------------------------------- follow / forget / purge

PACED = textwrap.dedent(
    """
    import time


    def paced(job):
        for i in range(4):
            job.send_data(b"line %d" % i)
            time.sleep(0.05)
        return b"done"
    """
)


def test_follow_prints_chunks_like_tail_then_forget_and_purge(gearmand, cli_env, tmp_path):
    (tmp_path / "pacedjobs.py").write_text(PACED)
    with worker_process(
        ["--server", gearmand.address, "pacedjobs:paced"],
        env=cli_env,
        cwd=tmp_path,
        servers=[gearmand],
        functions=["paced"],
    ):
        ref = cli("submit", "-s", gearmand.address, "paced", "x", "--background").output.strip()
        followed = run_gearstash(
            "follow", "-s", gearmand.address, ref, "--timeout", "20", env=cli_env
        )
        assert followed.returncode == 0, followed.stderr
        assert followed.stdout == "line 0\nline 1\nline 2\nline 3\ndone\n"  # then the result
        assert "complete" in followed.stderr
    forgot = cli("forget", ref)
    assert forgot.exit_code == 0 and "forgot 1 record" in forgot.output
    gone = cli("fetch", "-s", gearmand.address, ref, "--json")
    assert json.loads(gone.output)["state"] == "unknown"
    purged = cli("purge")
    assert purged.exit_code == 0 and "purged" in purged.output
