"""What trying the product as a new user, README in hand, turned up in the web face, the proxy
and the CLI: one test per defect, each failing before its fix, against real servers (a job server
that is down is a loopback port nothing listens on).
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import pytest
from starlette.testclient import TestClient
from support.waiting import wait_until

from gearstash.cli.main import main
from gearstash.model.records import Event, EventKind, JobKey, JobRef
from gearstash.spine.manager import open_store
from gearstash.store.contract import Store
from gearstash.testing.gearmand import free_port
from gearstash.web.app import create_app

ADMIN = "an-admin-secret-of-some-length"
TOKENS = "token-secret-for-the-first-use-tests"
LOCAL = ("127.0.0.1", 41000)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = open_store(f"sqlite:///{tmp_path}/first.db")
    try:
        yield opened
    finally:
        opened.close()


def _csrf(client: TestClient) -> str:
    page = client.get("/login").text
    start = page.index('data-csrf="') + len('data-csrf="')
    return page[start : page.index('"', start)]


def _login(client: TestClient) -> str:
    """Log in as admin; the new session's CSRF token."""
    response = client.post(
        "/admin/login", data={"password": ADMIN, "csrf": _csrf(client)}, follow_redirects=False
    )
    assert response.status_code == 303, response.text
    return _csrf(client)


def _one_line(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and "\n" not in body["error"]
    return str(body["error"])


# ------------------------------------------------ web: a job server that is down is no bad input


def test_web_submit_and_resubmit_to_a_job_server_that_is_down_answer_503(store: Store) -> None:
    down = f"127.0.0.1:{free_port()}"  # nothing listens there
    failed = JobKey(down, b"H:first:1", b"u-first")
    store.write(
        [
            Event(EventKind.STARTED, failed, time.time(), function=b"f", workload=b"load"),
            Event(EventKind.EXCEPTION, failed, time.time(), b"boom"),
        ]
    )
    app = create_app(
        store=store, servers=[down], admin=ADMIN, token_secret=TOKENS, allow_submit=True
    )
    with TestClient(app, client=LOCAL, raise_server_exceptions=False) as client:
        csrf = _login(client)
        submitted = client.post("/api/submit", data={"csrf": csrf, "function": "f"})
        assert "no job server accepted the job" in _one_line(submitted, 503)
        ref = str(JobRef(failed.handle, failed.server, failed.unique))
        again = client.post(f"/api/jobs/{ref}/resubmit".replace("#", "%23"), data={"csrf": csrf})
        assert "cannot connect" in _one_line(again, 503)
        assert client.get("/api/jobs/H:first:1").json()["state"] == "failed"
        # bad input stays a 400
        bad = client.post("/api/submit", data={"csrf": csrf, "function": "f", "unique": "u" * 64})
        assert "longer than 63" in _one_line(bad, 400)


# ------------------------------------- web: a logged-out browser is sent to the login page


def test_pages_send_a_logged_out_browser_to_the_login_page(store: Store) -> None:
    key = JobKey("127.0.0.1:9", b"H:page:1", b"u-page")
    store.write([Event(EventKind.STARTED, key, time.time(), function=b"f")])
    page = "/jobs/" + str(JobRef(key.handle, key.server, key.unique)).replace("#", "%23")
    app = create_app(store=store, servers=["127.0.0.1:9"], admin=ADMIN, token_secret=TOKENS)
    with TestClient(app, client=LOCAL, raise_server_exceptions=False) as client:
        for path in ("/", "/jobs", page):
            sent = client.get(path, follow_redirects=False)
            assert sent.status_code == 303, (path, sent.text)
            assert sent.headers["location"] == "/login"
        # the API says what helps: with a credential configured, asking from this host does not
        message = _one_line(client.get("/api/jobs"), 403)
        assert "log in" in message and "this host" not in message
        _login(client)
        assert client.get("/").status_code == 200
        assert client.get(page).status_code == 200
    # without a credential there is no login page to send anyone to: a remote client gets 403
    open_app = create_app(store=store, servers=["127.0.0.1:9"], token_secret=TOKENS)
    with TestClient(open_app, client=("203.0.113.9", 1), raise_server_exceptions=False) as remote:
        for path in ("/", "/api/jobs"):
            message = _one_line(remote.get(path, follow_redirects=False), 403)
            assert "log in" not in message and "--public" in message


# ------------------------------------------ `gearstash web` / `gearstash proxy` on a busy port


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["GEARSTASH_STORE"] = f"sqlite:///{tmp_path}/first.db"
    env["GEARSTASH_HOME"] = str(tmp_path / "home")
    env["GEARSTASH_SERVERS"] = f"127.0.0.1:{free_port()}"
    for name in ("GEARSTASH_WEB_ADMIN", "GEARSTASH_WEB_ADMIN_FILE", "GEARSTASH_CONFIG"):
        env.pop(name, None)
    return env


def _gearstash(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gearstash", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@contextmanager
def _busy_port() -> Iterator[str]:
    """A loopback address something else already listens on."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        yield f"127.0.0.1:{taken.getsockname()[1]}"


def test_web_on_a_busy_port_is_one_error_line_and_exit_1(tmp_path: Path) -> None:
    env = _env(tmp_path)
    open_store(env["GEARSTASH_STORE"]).close()  # the web face never creates its store
    with _busy_port() as address:
        done = _gearstash("web", "--listen", address, env=env)
    assert done.returncode == 1, done.stderr  # not uvicorn's 3 ("the job failed" here)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [f"gearstash: error: cannot listen on {address}: address already in use"]


def test_worker_metrics_on_a_busy_port_is_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "firstjobs.py").write_text("def echo(job):\n    return job.workload\n")
    with _busy_port() as address:
        port = address.rpartition(":")[2]
        done = _gearstash(
            "worker", "--store", "memory://", "--app-dir", str(tmp_path), "--metrics-port", port,
            "firstjobs:echo", env=_env(tmp_path),
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert errors == [
        f"gearstash: error: cannot serve metrics on {address}: address already in use"
    ]


def test_proxy_on_a_busy_port_is_one_error_line_and_exit_1(tmp_path: Path) -> None:
    env = _env(tmp_path)
    for processes in ("1", "2"):
        with _busy_port() as address:
            done = _gearstash(
                "proxy", "--listen", address, "--upstream", env["GEARSTASH_SERVERS"],
                "--processes", processes, env=env,
            )  # fmt: skip
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        errors = [line for line in done.stderr.splitlines() if "error" in line]
        assert errors, done.stderr
        assert all(
            line == f"gearstash: error: cannot listen on {address}: address already in use"
            for line in errors
        ), done.stderr


# ------------------------------------------------------- every CLI option is in the README


def _commands(group: click.Group, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    for name, command in sorted(group.commands.items()):
        path = f"{prefix} {name}".strip()
        yield path, command
        if isinstance(command, click.Group):
            yield from _commands(command, path)


def test_readme_names_every_command_and_option() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    missing = []
    for path, command in [("", main), *_commands(main)]:
        if path and f"gearstash {path}" not in readme:
            missing.append(f"gearstash {path}")
        for param in command.params:
            if not isinstance(param, click.Option):
                continue
            names = [o for o in param.opts + param.secondary_opts if o.startswith("--")]
            if names and names != ["--help"] and not any(o in readme for o in names):
                missing.append(f"gearstash {path} {names[0]}".replace("  ", " "))
    assert not missing, "not in README.md: " + ", ".join(missing)


def test_readme_names_every_http_route() -> None:
    from starlette.routing import Route

    from gearstash.web.app import routes

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    paths = [r.path.replace(":path", "") for r in routes() if isinstance(r, Route)]
    assert "/api/jobs/{ref}/resubmit" in paths
    pages = {"/": "(`/`)", "/jobs": "(`/jobs`)", "/jobs/{ref}": "(`/jobs/REF`)"}
    missing = [
        p
        for p in paths
        if pages.get(p, "\0") not in readme and not re.search(f"[` ]{re.escape(p)}[`?,]", readme)
    ]
    assert not missing, "not in README.md: " + ", ".join(missing)


# ------------------------------------------- CLI: a negative timeout or chunk number is refused


@pytest.mark.parametrize(
    "args",
    [
        ["wait", "H:x:1", "--timeout", "-1"],
        ["follow", "H:x:1", "--timeout", "-1"],
        ["follow", "H:x:1", "--after", "-5"],
        ["spool", "replay", "--timeout", "-1"],
        ["worker", "--max-jobs", "0", "--store", "memory://", "nomodule:f"],  # it ran one job
    ],
)
def test_cli_refuses_negative_timeouts_and_chunk_numbers(args: list[str], tmp_path: Path) -> None:
    env = _env(tmp_path)
    done = _gearstash(*args, env=env)
    assert done.returncode == 2, done.stderr  # usage, before any server or store is asked
    assert "Invalid value for" in done.stderr and "still running" not in done.stderr


# ------------------------------------- web: a refused login form comes back as the login page

BROWSER = {"accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def test_a_refused_login_form_shows_the_login_page_again(store: Store) -> None:
    app = create_app(
        store=store, servers=["127.0.0.1:9"], admin=ADMIN, token_secret=TOKENS, login_limit=2
    )
    with TestClient(app, client=LOCAL, raise_server_exceptions=False) as client:
        for status, reason in ((403, "wrong password"), (403, "wrong password"), (429, "too many")):
            form = {"password": "<b>not it</b>", "csrf": _csrf(client)}
            page = client.post("/admin/login", data=form, headers=BROWSER)
            assert page.status_code == status, page.text
            assert page.headers["content-type"].startswith("text/html")
            assert reason in page.text and 'name="password"' in page.text
            assert "<b>not it</b>" not in page.text  # nothing offered is echoed
        assert "retry-after" in page.headers
        stale = client.post("/admin/login", data={"password": ADMIN, "csrf": "x"}, headers=BROWSER)
        assert stale.status_code == 403 and "CSRF" in stale.text and 'name="csrf"' in stale.text
        # an API client still gets the one-line JSON error
        assert "too many" in _one_line(
            client.post("/admin/login", data={"password": ADMIN, "csrf": _csrf(client)}), 429
        )


# ------------------------------- web: Forget on a page reached by bare handle forgets that job


def test_forget_by_bare_handle_forgets_the_job_shown_and_no_other(store: Store) -> None:
    mine = f"127.0.0.1:{free_port()}"  # the app's job server (down: the store alone answers)
    now = time.time()
    older = JobKey(mine, b"H:same:1", b"before-a-restart")
    shown = JobKey(mine, b"H:same:1", b"the-newest")
    elsewhere = JobKey("gearman-other:4730", b"H:same:1", b"another-servers-job")
    for i, key in enumerate((older, elsewhere, shown)):
        store.write(
            [
                Event(EventKind.STARTED, key, now + i, function=b"f"),
                Event(EventKind.COMPLETED, key, now + i, b"done"),
            ]
        )
    app = create_app(store=store, servers=[mine], admin=ADMIN, token_secret=TOKENS)
    with TestClient(app, client=LOCAL, raise_server_exceptions=False) as client:
        csrf = _login(client)
        assert client.get("/api/jobs/H:same:1").json()["unique"] == "the-newest"
        done = client.post("/api/jobs/H:same:1/forget", headers={"x-csrf-token": csrf})
        assert done.json() == {"forgotten": 1}
        left = store.get_many([JobRef(k.handle, k.server, k.unique) for k in (older, elsewhere)])
        assert [r.key.unique if r else None for r in left] == [older.unique, elsewhere.unique]
        assert store.get_many([JobRef(shown.handle, shown.server, shown.unique)]) == [None]
        # a job nobody knows: nothing to forget
        none = client.post("/api/jobs/H:none:1/forget", headers={"x-csrf-token": csrf})
        assert none.json() == {"forgotten": 0}


def test_share_link_of_a_bare_handle_names_the_job_shown(store: Store) -> None:
    from gearstash.client.tokens import TokenSigner

    mine = f"127.0.0.1:{free_port()}"
    shown = JobKey(mine, b"H:share:1", b"the-job-shown")
    store.write([Event(EventKind.STARTED, shown, time.time(), function=b"f")])
    app = create_app(store=store, servers=[mine], token_secret=TOKENS)
    with TestClient(app, client=LOCAL, raise_server_exceptions=False) as client:
        made = client.post("/api/jobs/H:share:1/share", headers={"x-csrf-token": _csrf(client)})
        assert made.status_code == 200, made.text
        # the token names this job, not whatever later gets the handle (a gearmand restart)
        named = TokenSigner(TOKENS).verify(made.json()["token"])
        assert named == JobRef(shown.handle, shown.server, shown.unique)
        unknown = client.post("/api/jobs/H:none:1/share", headers={"x-csrf-token": _csrf(client)})
        assert "no stored record" in _one_line(unknown, 404)


@pytest.mark.parametrize("ref", ["H:vm:1", "H:vm:1@127.0.0.1:4730", "#u1", "127.0.0.1:4730//H:x:1"])
def test_cli_token_sign_refuses_a_reference_that_could_name_another_job(
    ref: str, tmp_path: Path
) -> None:
    env = {**_env(tmp_path), "GEARSTASH_TOKEN_SECRET": TOKENS}
    done = _gearstash("token", "sign", ref, env=env)
    assert done.returncode == 1 and not done.stdout, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gearstash: error: "), done.stderr
    assert "full job reference" in lines[0]
    # a full one (an empty unique too: a job from a server without GRAB_JOB_UNIQ) is signed
    for full in ("H:vm:1@127.0.0.1:4730#u1", "H:vm:1@127.0.0.1:4730#"):
        assert _gearstash("token", "sign", full, env=env).stdout.startswith("gs1.")


def test_web_says_where_it_serves_and_that_allow_submit_needs_a_credential(
    tmp_path: Path,
) -> None:
    open_store(_env(tmp_path)["GEARSTASH_STORE"]).close()  # the web face never creates its store
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gearstash", "web", "--listen", f"127.0.0.1:{port}",
         "--allow-submit"],
        env=_env(tmp_path),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    said = b""
    try:
        assert proc.stderr is not None
        fd = proc.stderr.fileno()
        deadline = time.monotonic() + 60
        while b"gearstash web:" not in said or not said.endswith(b"\n"):
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(fd, 4096) if ready else b""
            if not chunk:
                break  # EOF, or no banner within the deadline
            said += chunk
    finally:
        proc.terminate()
        proc.communicate(timeout=30)  # and close the pipe
    lines = said.decode().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("gearstash: warning: --allow-submit does nothing without"), lines
    assert lines[1].startswith(f"gearstash web: http://127.0.0.1:{port}/; store sqlite:"), lines
    assert "read-only (no admin credential)" in lines[1]


# ---------------------------------------------- wait: no state is shown before one is known


def test_wait_progress_claims_no_state_before_the_first_answer() -> None:
    import io

    from rich.console import Console

    from gearstash.cli.progress import ProgressDisplay

    out = io.StringIO()
    with ProgressDisplay(console=Console(file=out, force_terminal=True, width=120)) as display:
        display.add("H:vm:7")  # a job that is complete, or unknown: nothing asked yet
    shown = out.getvalue()
    assert "H:vm:7" in shown
    assert "queued" not in shown  # said of every job, even a complete one, until the first fetch


# ----------------------------- worker --processes N --max-jobs M: each child stops after M jobs


@contextmanager
def _supervisor(args: list[str], env: dict[str, str], cwd: Path) -> Iterator[subprocess.Popen[str]]:
    """`gearstash worker ARGS` in a session of its own; whatever is left of the session is
    killed at the end."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gearstash", "worker", *args],
        env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)


def _children(pid: int) -> set[int]:
    try:
        return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except FileNotFoundError:
        return set()


def _alive(pid: int) -> bool:
    try:
        return not Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except FileNotFoundError:
        return False


JOBS = "def echo(job):\n    return job.workload\n"


@pytest.mark.gearmand
def test_processes_with_max_jobs_stop_after_their_jobs(gearmand: Any, tmp_path: Path) -> None:
    from gearstash import Client
    from gearstash.model.records import State

    (tmp_path / "firstjobs.py").write_text(JOBS)
    env = _env(tmp_path)
    args = ["-s", gearmand.address, "-p", "2", "--max-jobs", "1", "firstjobs:echo"]
    with Client([gearmand.address], store=env["GEARSTASH_STORE"]) as client:
        refs = [client.submit_background("echo", b"%d" % i) for i in range(3)]
        with _supervisor(args, env, tmp_path) as proc:
            try:
                code = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                code = None  # it went on: the children were replaced
            views = client.fetch_many(refs)
        assert proc.stderr is not None
    assert code == 0
    states = [v.state for v in views]
    assert states.count(State.COMPLETE) == 2 and states.count(State.QUEUED) == 1, states


@pytest.mark.gearmand
def test_processes_stop_when_their_supervisor_is_killed(gearmand: Any, tmp_path: Path) -> None:
    (tmp_path / "firstjobs.py").write_text(JOBS)
    args = ["-s", gearmand.address, "-p", "2", "firstjobs:echo"]
    with _supervisor(args, _env(tmp_path), tmp_path) as proc:
        kids = wait_until(lambda: len(c := _children(proc.pid)) == 2 and c, what="2 children")
        os.kill(proc.pid, signal.SIGKILL)  # the OOM killer, say: SIGTERM cannot be passed on
        proc.wait(timeout=30)
        wait_until(
            lambda: not any(_alive(pid) for pid in kids),
            timeout=30,
            what="the orphaned worker processes stopped",
        )


def test_web_never_creates_a_store_at_a_mistyped_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "jobs.db"
    url = f"sqlite:///{missing}"
    listen = f"127.0.0.1:{free_port()}"
    done = _gearstash("web", "--listen", listen, "--store", url, env=_env(tmp_path))
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert errors == [
        f"gearstash: error: no store at {url} (a command that only reads never creates one;"
        " check the URL, or start a worker or submit a job first)"
    ], done.stderr
    assert not missing.parent.exists()
