"""The web face's JSON API, event streams and security, through Starlette's TestClient (the app
in-process, so a test can be a remote client) against real stores.

Browser tests (real Chromium, gearmand, worker) are in ``test_web_browser.py``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from gearstash.cli.main import main
from gearstash.client.client import Client
from gearstash.client.tokens import TokenSigner
from gearstash.errors import ConfigError
from gearstash.model.records import Event, EventKind, JobKey, JobRef
from gearstash.spine.manager import open_store
from gearstash.store.contract import Store
from gearstash.testing.contract import full_job, new_key, new_server
from gearstash.testing.gearmand import Gearmand
from gearstash.web.app import create_app
from gearstash.web.events import PRIVATE_FIELDS, Cursor
from gearstash.web.hub import Hub
from gearstash.web.openapi import SCHEMA
from gearstash.web.security import AdminCredential, LoginThrottle, hash_password

SECRET = "token-secret-for-the-web-tests-0123456789"
PASSWORD = "correct horse battery"
LOCAL = ("127.0.0.1", 41000)
REMOTE = ("203.0.113.9", 41000)  # TEST-NET-3: never routed; only a label in the ASGI scope


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Store]:
    url = (
        f"memory://web-{uuid.uuid4().hex}"
        if request.param == "memory"
        else f"sqlite:///{tmp_path}/web.db"
    )
    opened = open_store(url)
    try:
        yield opened
    finally:
        opened.close()


def _app(store: Store, **options: Any) -> Starlette:
    options.setdefault("servers", ["127.0.0.1:9"])  # nothing listens on the discard port
    options.setdefault("token_secret", SECRET)
    return create_app(store=store, hub_interval=0.02, **options)


def _client(app: Starlette, address: tuple[str, int] = LOCAL) -> TestClient:
    return TestClient(app, client=address, raise_server_exceptions=False)


def _one_line_error(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and "\n" not in body["error"] and body["error"]
    assert "Traceback" not in response.text
    return str(body["error"])


def _ref(key: JobKey) -> str:
    return str(JobRef(key.handle, key.server, key.unique))


def _q(key: JobKey) -> str:
    """The job's reference as one URL path segment."""
    return quote(_ref(key), safe="")


def _events(text: str) -> list[tuple[str, str, Any]]:
    """(id, event, data) of each message of an SSE body."""
    out = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            name, _, value = line.partition(": ")
            fields[name] = value
        if "event" in fields:
            out.append((fields.get("id", ""), fields["event"], json.loads(fields["data"])))
    return out


# ---------------------------------------------------------------------------------- the API


def test_jobs_list_filters_pages_and_counts(store: Store) -> None:
    server = new_server("web")
    keys = [JobKey(server, b"H:web:%d" % i, b"u%d" % i) for i in range(5)]
    for key in keys:
        store.write(full_job(key, time.time()))
    store.write([Event(EventKind.STARTED, keys[4], time.time() + 1, function=b"other")])
    with _client(_app(store)) as client:
        first = client.get("/api/jobs", params={"server": server, "limit": 2, "counts": 1})
        assert first.status_code == 200
        page = first.json()
        assert [j["handle"] for j in page["jobs"]] == ["H:web:4", "H:web:3"]
        assert page["counts"]["complete"] == 4 and page["counts"]["running"] == 1
        assert page["jobs"][0]["state"] == "running" and page["jobs"][0]["function"] == "other"
        second = client.get(
            "/api/jobs", params={"server": server, "limit": 2, "cursor": page["cursor"]}
        ).json()
        assert [j["handle"] for j in second["jobs"]] == ["H:web:2", "H:web:1"]
        only = client.get("/api/jobs", params={"server": server, "state": "running"}).json()
        assert [j["ref"] for j in only["jobs"]] == [_ref(keys[4])]
        by_prefix = client.get("/api/jobs", params={"server": server, "q": "H:web:2"}).json()
        assert [j["handle"] for j in by_prefix["jobs"]] == ["H:web:2"]
        by_unique = client.get("/api/jobs", params={"server": server, "q": "u3"}).json()
        assert [j["handle"] for j in by_unique["jobs"]] == ["H:web:3"]
        view = client.get("/api/jobs/" + _q(keys[1])).json()
        assert view["data"] == ["one", "two", "three"] and view["result"] == "done"
        assert view["state"] == "complete" and view["restarts"] == 0
        counts = client.get("/api/counts", params={"server": server}).json()
        assert counts["complete"] == 4


def test_bad_input_gets_one_line_json_4xx(store: Store) -> None:
    key = new_key()
    store.write(full_job(key))
    with _client(_app(store)) as client:
        assert "unknown filter" in _one_line_error(client.get("/api/jobs?color=red"), 400)
        assert "unknown state" in _one_line_error(client.get("/api/jobs?state=lost"), 400)
        assert "unknown state" in _one_line_error(client.get("/api/jobs?state=%00%ff"), 400)
        _one_line_error(client.get("/api/jobs?limit=0"), 400)
        _one_line_error(client.get("/api/jobs?limit=abc"), 400)
        _one_line_error(client.get("/api/jobs?since=nan"), 400)
        _one_line_error(client.get("/api/jobs?server=bad%20host:99999"), 400)
        assert "cursor" in _one_line_error(client.get("/api/jobs?cursor=r.55"), 400)
        _one_line_error(client.get("/api/jobs?cursor=" + "9" * 50), 400)
        _one_line_error(client.get("/api/jobs/%40%40"), 400)  # '@@': empty server
        _one_line_error(client.get("/api/jobs/" + "h" * 5000), 400)
        events = "/api/jobs/" + _q(key) + "/events"
        _one_line_error(client.get(events, headers={"last-event-id": "1.2"}), 400)
        _one_line_error(client.get(events, headers={"last-event-id": "1.2.x.4"}), 400)
        _one_line_error(client.get("/api/jobs/H:none:1"), 404)
        _one_line_error(client.get("/nothing/here"), 404)
        _one_line_error(client.post("/api/jobs"), 405)
        assert "longer" in _one_line_error(client.get("/api/jobs?q=" + "x" * 60_000), 414)
    # 10 MB: more than an HTTP client sends; straight through the ASGI interface
    status, headers, body = asyncio.run(_asgi_get(_app(store), b"q=" + b"x" * 10_000_000))
    assert status == 414 and headers[b"content-type"].startswith(b"application/json")
    assert json.loads(body) == {"error": "query string longer than 8192 bytes"}


async def _asgi_get(app: Starlette, query: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    """GET /api/jobs?QUERY on the ASGI app itself: (status, headers, body)."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": "/api/jobs", "raw_path": b"/api/jobs", "root_path": "",
        "query_string": query, "headers": [(b"host", b"testserver")], "client": LOCAL,
        "server": ("testserver", 80),
    }  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], dict(start["headers"]), body


def test_memcached_cannot_list_but_looks_up(memcached: str) -> None:
    store = open_store(f"memcache://{memcached}")
    try:
        key = new_key()
        store.write(full_job(key))
        with _client(_app(store)) as client:
            assert "cannot list" in _one_line_error(client.get("/api/jobs"), 501)
            assert client.get("/api/store").json()["can_list"] is False
            assert client.get("/api/jobs/" + _q(key)).json()["result"] == ("done")
            page = client.get("/jobs")
            assert page.status_code == 200 and "look a job up by its handle" in page.text
    finally:
        store.close()


def test_openapi_describes_every_api_route(store: Store) -> None:
    app = _app(store)
    with _client(app) as client:
        schema = client.get("/api/openapi.json").json()
    assert schema == json.loads(json.dumps(SCHEMA))
    paths = {
        route.path.replace(":path", "")  # type: ignore[attr-defined]
        for route in app.routes
        if getattr(route, "path", "").startswith(("/api/", "/t/"))
        and route.path not in ("/api/openapi.json", "/t/{token}/view")  # type: ignore[attr-defined]
    }
    assert paths <= set(schema["paths"]), paths - set(schema["paths"])


def test_mounted_under_a_prefix(store: Store) -> None:
    key = new_key()
    store.write(full_job(key))
    outer = Starlette(routes=[Mount("/ops/jobs-ui", app=_app(store))])
    with _client(outer) as client:
        page = client.get("/ops/jobs-ui/")
        assert page.status_code == 200
        assert 'src="/ops/jobs-ui/static/app.js"' in page.text
        assert 'data-base="/ops/jobs-ui"' in page.text
        assert client.get("/ops/jobs-ui/static/app.js").status_code == 200
        got = client.get("/ops/jobs-ui/api/jobs/" + _q(key))
        assert got.json()["result"] == "done"


# ---------------------------------------------------------------------------------- events


def test_events_stream_in_order_and_resume(store: Store) -> None:
    key = new_key()
    events = full_job(key, time.time())
    store.write(events)
    path = "/api/jobs/" + _q(key) + "/events"
    with _client(_app(store)) as client:
        whole = _events(client.get(path).text)
        kinds = [kind for _id, kind, _data in whole]
        assert kinds == ["state", "status", "status", "chunk", "chunk", "chunk", "warning", "final"]
        assert [d["data"] for _i, k, d in whole if k == "chunk"] == ["one", "two", "three"]
        final = whole[-1][2]
        assert final["result"] == "done" and "data" not in final and final["chunks"] == 3
        # resume after the second chunk: the rest only, nothing twice
        after = whole[4][0]
        assert Cursor.parse(after) == Cursor(1, 2, 0, 2)
        rest = _events(client.get(path, headers={"last-event-id": after}).text)
        assert [k for _i, k, _d in rest] == ["state", "chunk", "warning", "final"]
        assert rest[1][2] == {"index": 2, "data": "three"}
        # the same through the query (a reconnect after the tab was hidden)
        again = _events(client.get(path + "?last_event_id=" + after).text)
        assert [k for _i, k, _d in again] == ["state", "chunk", "warning", "final"]


def test_events_after_a_restart_start_the_new_attempt_over(store: Store) -> None:
    key = new_key()
    now = time.time()
    store.write(full_job(key, now)[:3])  # attempt 1: started, two chunks
    store.write(
        [
            Event(EventKind.STARTED, key, now + 1, function=b"resize", worker="w2"),
            Event(EventKind.DATA, key, now + 2, b"fresh"),
            Event(EventKind.COMPLETED, key, now + 3, b"ok"),
        ]
    )
    path = "/api/jobs/" + _q(key) + "/events"
    with _client(_app(store)) as client:
        got = _events(client.get(path, headers={"last-event-id": "1.2.0.0"}).text)
    assert [k for _i, k, _d in got] == ["restart", "state", "chunk", "final"]
    assert got[0][2] == {"attempt": 2} and got[0][0] == "2.0.0.0"
    assert got[2][2] == {"index": 0, "data": "fresh"}


def test_live_events_arrive_as_they_are_written(store: Store) -> None:
    key = new_key()
    store.write([Event(EventKind.STARTED, key, time.time(), function=b"f")])
    path = "/api/jobs/" + _q(key) + "/events"

    def writer() -> None:
        for i in range(3):
            time.sleep(0.2)
            store.write([Event(EventKind.DATA, key, time.time(), b"live %d" % i)])
        store.write([Event(EventKind.COMPLETED, key, time.time(), b"r")])

    thread = threading.Thread(target=writer)
    with _client(_app(store)) as client:
        thread.start()
        with client.stream("GET", path) as response:
            text = "".join(response.iter_text())
        thread.join()
    got = _events(text)
    assert [d["data"] for _i, k, d in got if k == "chunk"] == ["live 0", "live 1", "live 2"]
    assert got[-1][1] == "final" and got[-1][2]["state"] == "complete"


def test_one_hub_read_serves_many_followers(store: Store) -> None:
    """200 followers of 100 jobs: each round is ONE get_many; no thread per follower."""
    keys = [new_key() for _ in range(100)]
    store.write([Event(EventKind.STARTED, k, time.time(), function=b"f") for k in keys])
    calls: list[int] = []
    real = store.get_many

    def counting(refs: Any) -> Any:
        calls.append(len(refs))
        return real(refs)

    store.get_many = counting  # type: ignore[method-assign]

    async def scenario() -> tuple[int, int]:
        hub = Hub(store, interval=0.02)
        threads_before = threading.active_count()
        seen: list[int] = []

        async def follower(ref: JobRef) -> None:
            async for record in hub.follow(ref):
                if record is not None and record.data:
                    seen.append(len(record.data))
                    return

        tasks = [
            asyncio.create_task(follower(JobRef(k.handle, k.server, k.unique))) for k in keys * 2
        ]
        await asyncio.sleep(0.3)
        assert hub.followed == 100
        threads_during = threading.active_count()
        await asyncio.to_thread(
            store.write, [Event(EventKind.DATA, k, time.time(), b"x") for k in keys]
        )
        await asyncio.wait_for(asyncio.gather(*tasks), 20)
        await hub.close()
        assert len(seen) == 200 and hub.followed == 0
        return threads_before, threads_during

    before, during = asyncio.run(scenario())
    assert during - before <= 2  # anyio's worker thread (and asyncio's for the write)
    assert calls and max(calls) == 100  # every follower's job in one read per round


# ---------------------------------------------------------------------------------- security


def test_remote_clients_without_credential_see_nothing_but_tokens(store: Store) -> None:
    key = new_key()
    store.write(full_job(key))
    ref = _q(key)
    token = TokenSigner(SECRET).sign(JobRef.parse(_ref(key)))
    with _client(_app(store), REMOTE) as remote:
        for path in (
            "/",
            "/jobs",
            "/jobs/" + ref,
            "/api/jobs",
            "/api/jobs/" + ref,
            "/api/jobs/" + ref + "/events",
            "/api/servers",
            "/api/counts",
            "/metrics",
        ):
            _one_line_error(remote.get(path), 403)  # fmt: skip
        assert remote.get("/t/" + token).json()["result"] == "done"
        assert "final" in remote.get("/t/" + token + "/events").text
        assert remote.get("/t/" + token + "/view").status_code == 200
    with _client(_app(store, public=True), REMOTE) as public:
        assert public.get("/api/jobs").status_code == 200
        assert public.get("/api/jobs/" + ref).json()["result"] == "done"


def test_tokens_show_their_one_job_and_refuse_forgeries(store: Store) -> None:
    mine, other = new_key(), new_key()
    store.write(full_job(mine) + full_job(other))
    signer = TokenSigner(SECRET)
    token = signer.sign(JobRef.parse(_ref(mine)))
    with _client(_app(store), REMOTE) as client:
        got = client.get("/t/" + token).json()
        assert got["data"] == ["one", "two", "three"] and got["state"] == "complete"
        # what the job said, not where it ran: no server, handle, unique or worker
        assert set(got) & set(PRIVATE_FIELDS) == set()
        stream = client.get("/t/" + token + "/events").text
        assert "final" in stream and mine.handle.decode() not in stream
        assert mine.server not in stream
        assert all(set(data) & set(PRIVATE_FIELDS) == set() for _i, _n, data in _events(stream))
        # the admin's own view has them all
        with _client(_app(store), LOCAL) as local:
            assert local.get("/api/jobs/" + _q(mine)).json()["handle"] == mine.handle.decode()
        page = client.get("/t/" + token + "/view").text
        assert other.handle.decode() not in page and mine.handle.decode() not in page
        assert f'data-json="/t/{token}"' in page
        forged = [
            token[:-2] + ("AA" if token[-2:] != "AA" else "BB"),
            TokenSigner("another-secret-entirely-0123456789").sign(JobRef.parse(_ref(other))),
            signer.sign(JobRef.parse(_ref(other)), ttl=1, now=time.time() - 10),  # expired
            "gs1.garbage",
            "x" * 5000,
        ]
        for bad in forged:
            for suffix in ("", "/events", "/view"):
                response = client.get("/t/" + bad + suffix)
                assert response.status_code == 403
                assert response.json() == {"error": "forbidden"}
                assert other.handle.decode() not in response.text
    with _client(_app(store, token_secret=""), LOCAL) as off:
        assert "not configured" in _one_line_error(off.get("/t/" + token), 404)


def test_admin_actions_need_the_credential_and_the_csrf_token(store: Store) -> None:
    key, kept = new_key(), new_key()
    store.write(full_job(key) + full_job(kept))
    ref = _q(key)
    forget = "/api/jobs/" + ref + "/forget"
    # no credential configured: read-only, whoever asks
    with _client(_app(store)) as client:
        csrf = _csrf(client)
        assert "read-only" in _one_line_error(
            client.post(forget, headers={"x-csrf-token": csrf}), 403
        )
        _one_line_error(client.post("/admin/login", data={"password": PASSWORD, "csrf": csrf}), 403)
    app = _app(store, admin=hash_password(PASSWORD), allow_submit=False)
    with _client(app) as client:
        csrf = _csrf(client)
        _one_line_error(client.post(forget, headers={"x-csrf-token": csrf}), 403)  # not logged in
        _one_line_error(client.post("/admin/login", data={"password": PASSWORD}), 403)  # no csrf
        wrong = client.post("/admin/login", data={"password": "not it", "csrf": csrf})
        assert "wrong password" in _one_line_error(wrong, 403)
        login = client.post(
            "/admin/login", data={"password": PASSWORD, "csrf": csrf}, follow_redirects=False
        )
        assert login.status_code == 303
        csrf = _csrf(client)  # a new session, a new token
        _one_line_error(client.post(forget), 403)  # logged in, no CSRF token
        _one_line_error(client.post(forget, headers={"x-csrf-token": csrf + "x"}), 403)
        assert store.get_many([JobRef.parse(_ref(key))])[0] is not None  # nothing happened yet
        done = client.post(forget, headers={"x-csrf-token": csrf})
        assert done.json() == {"forgotten": 1}
        assert store.get_many([JobRef.parse(_ref(key))]) == [None]
        assert store.get_many([JobRef.parse(_ref(kept))])[0] is not None
        assert client.post("/api/purge", data={"csrf": csrf}).json() == {"purged": 0}
        submit = client.post("/api/submit", data={"csrf": csrf, "function": "f"})
        assert "not enabled" in _one_line_error(submit, 403)
        client.post("/admin/logout", data={"csrf": csrf})
        _one_line_error(client.post("/api/purge", data={"csrf": csrf}), 403)
    # a session cookie signed with another key is no session
    other = _app(store, admin="a-secret-of-at-least-16-characters")
    with _client(other) as client:
        client.cookies.set("gearstash_session", "eyJhZG1pbiI6IHRydWV9.forged.sig")
        _one_line_error(client.post(forget, headers={"x-csrf-token": "x"}), 403)


def _csrf(client: TestClient) -> str:
    page = client.get("/login")  # the one page anyone may see
    marker = 'data-csrf="'
    start = page.text.index(marker) + len(marker)
    return page.text[start : page.text.index('"', start)]


def test_pages_send_a_csp_and_escape_job_values(store: Store) -> None:
    hostile = JobKey(new_server(), b'H:<script>alert("x")</script>', b'"><img src=x>')
    store.write(full_job(hostile))
    with _client(_app(store)) as client:
        page = client.get("/jobs/" + _q(hostile))
        assert page.status_code == 200, page.text
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["referrer-policy"] == "no-referrer"
        assert "<script>alert" not in page.text and "<img src=x>" not in page.text
        assert "<script>" not in page.text.replace(
            '<script src="/static/app.js" defer></script>', ""
        )
        static = client.get("/static/app.js")
        assert "innerHTML" not in static.text and "eval(" not in static.text


def test_admin_credential_rules() -> None:
    hashed = hash_password(PASSWORD)
    credential = AdminCredential(hashed)
    assert credential.check(PASSWORD) and not credential.check(PASSWORD + "!")
    assert "scrypt" in hashed and PASSWORD not in hashed and PASSWORD not in repr(credential)
    assert AdminCredential("s" * 16).check("s" * 16)
    from gearstash.errors import ConfigError

    with pytest.raises(ConfigError):
        AdminCredential("short")
    with pytest.raises(ConfigError):
        AdminCredential("scrypt$broken")
    with pytest.raises(ConfigError):
        hash_password("short")


def test_credential_from_the_environment_file(
    store: Store, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_file = tmp_path / "admin"
    secret_file.write_text(hash_password(PASSWORD) + "\n")
    secret_file.chmod(0o600)
    monkeypatch.setenv("GEARSTASH_WEB_ADMIN_FILE", str(secret_file))
    app = create_app(store=store, servers=["127.0.0.1:9"])
    assert app.state.face.admin is not None and app.state.face.admin.check(PASSWORD)


def test_cli_hash_password_and_listen_check() -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["web", "hash-password"], input=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    assert AdminCredential(result.output.strip()).check(PASSWORD)
    result = runner.invoke(main, ["web", "--listen", "nonsense"])
    assert result.exit_code == 2 and "HOST:PORT" in result.output


def test_admin_submits_a_job_when_enabled(gearmand: Gearmand, store: Store) -> None:
    app = create_app(
        store=store,
        servers=[gearmand.address],
        token_secret=SECRET,
        admin="an-admin-secret-of-some-length",
        allow_submit=True,
    )
    with _client(app) as client:
        csrf = _csrf(client)
        fields = {"password": "an-admin-secret-of-some-length", "csrf": csrf}
        assert client.post("/admin/login", data=fields).status_code == 200
        csrf = _csrf(client)
        assert 'id="submit"' in client.get("/").text  # the form, for an admin
        _one_line_error(client.post("/api/submit", data={"csrf": csrf}), 400)  # no function
        made = client.post(
            "/api/submit", data={"csrf": csrf, "function": "nobody-serves", "workload": "w"}
        )
        assert made.status_code == 201
        ref = JobRef.parse(made.json()["ref"])
        assert ref.server == gearmand.address
        view = client.get("/api/jobs/" + quote(str(ref), safe="")).json()
        assert view["state"] == "queued" and view["known"] is True


def test_hub_close_waits_for_the_read_in_progress(tmp_path: Any) -> None:
    """close() returns only after the worker thread's read ended, so closing the store right
    after is safe (closing a SQLite connection mid-read can crash the interpreter)."""
    store = open_store(f"sqlite:///{tmp_path}/close.db")
    key = new_key()
    store.write([Event(EventKind.STARTED, key, time.time(), function=b"f")])
    reading = threading.Event()
    release = threading.Event()
    finished: list[bool] = []
    real = store.get_many

    def slow(refs: Any) -> Any:
        reading.set()
        release.wait(5)
        got = real(refs)
        finished.append(True)
        return got

    store.get_many = slow  # type: ignore[method-assign]

    async def scenario() -> None:
        hub = Hub(store, interval=0.01)

        async def follower() -> None:
            async for _record in hub.follow(JobRef(key.handle, key.server, key.unique)):
                pass

        task = asyncio.create_task(follower())
        await asyncio.to_thread(reading.wait, 5)
        threading.Timer(0.3, release.set).start()
        await hub.close()
        assert finished  # the read ended before close() returned
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(scenario())
    finally:
        store.close()


def test_metrics_describe_the_store_and_the_job_servers(gearmand: Gearmand, store: Store) -> None:
    server = new_server("m")
    for i in range(3):
        store.write(full_job(JobKey(server, b"H:m:%d" % i, b"m%d" % i)))
    store.write(
        [Event(EventKind.STARTED, JobKey(server, b"H:m:9", b"m9"), time.time(), function=b"f2")]
    )
    app = create_app(store=store, servers=[gearmand.address, "127.0.0.1:9"], token_secret=SECRET)
    with _client(app) as client, Client([gearmand.address], store=store) as gearman:
        gearman.submit_background("queued-fn", b"x")  # no worker: it stays queued
        text = client.get("/metrics").text
    assert 'gearstash_jobs{state="complete"} 3.0' in text
    assert 'gearstash_jobs{state="running"} 1.0' in text
    assert 'gearstash_jobs_by_function{function="resize",state="complete"} 3.0' in text
    assert f'gearman_server_up{{server="{gearmand.address}"}} 1.0' in text
    assert 'gearman_server_up{server="127.0.0.1:9"} 0.0' in text
    assert f'gearman_queued{{function="queued-fn",server="{gearmand.address}"}} 1.0' in text


# ---------------------------------------------------------------------------------- workloads


def test_workload_shown_in_the_job_view_and_never_through_a_token(store: Store) -> None:
    binary, text, plain = new_key(), new_key(), new_key()
    load = b"\x00\xff<script>alert(1)</script>"
    now = time.time()
    store.write([Event(EventKind.STARTED, binary, now, function=b"f", workload=load)])
    store.write([Event(EventKind.STARTED, text, now, function=b"f", workload=b'{"a": 1}')])
    store.write([Event(EventKind.COMPLETED, binary, now + 1, b"ok")])
    store.write(full_job(plain))
    token = TokenSigner(SECRET).sign(JobRef.parse(_ref(binary)))
    with _client(_app(store)) as client:
        view = client.get("/api/jobs/" + _q(binary)).json()
        assert view["workload"] == {"base64": "AP88c2NyaXB0PmFsZXJ0KDEpPC9zY3JpcHQ+"}
        assert client.get("/api/jobs/" + _q(text)).json()["workload"] == '{"a": 1}'
        assert client.get("/api/jobs/" + _q(plain)).json()["workload"] is None
        assert "<script>alert" not in client.get("/jobs/" + _q(binary)).text
        final = [
            d
            for _id, name, d in _events(client.get("/api/jobs/" + _q(binary) + "/events").text)
            if name == "final"
        ]
        assert final and "workload" not in final[0]
    with _client(_app(store), REMOTE) as remote:
        shown = remote.get("/t/" + token)
        assert shown.status_code == 200 and shown.json()["result"] == "ok"
        assert "workload" not in shown.json() and "AP88" not in shown.text
        assert "AP88" not in remote.get("/t/" + token + "/events").text


def _failing_once(seen: set[bytes]) -> Any:
    def flaky(job: Any) -> bytes:
        """Fails the first time it sees a workload, completes with it the next."""
        if job.workload not in seen:
            seen.add(job.workload)
            raise RuntimeError("first try fails")
        return b"ok:" + job.workload

    return flaky


def _login(client: TestClient, password: str) -> str:
    """Log in as admin; the new session's CSRF token."""
    csrf = _csrf(client)
    response = client.post(
        "/admin/login", data={"password": password, "csrf": csrf}, follow_redirects=False
    )
    assert response.status_code == 303, response.text
    return _csrf(client)


def _lost_job(store: Store, key: JobKey, function: bytes, workload: bytes) -> None:
    """Store a job that started a minute ago under a 1 s lease and never ended: ``lost``."""
    started = Event(
        EventKind.STARTED, key, time.time() - 60, function=function, lease=1.0, workload=workload
    )
    store.write([started])


def test_admin_resubmits_a_failed_job_with_its_captured_workload(
    gearmand: Gearmand, store: Store
) -> None:
    from workers import running_worker

    secret = "an-admin-secret-of-some-length"
    app = create_app(store=store, servers=[gearmand.address], token_secret=SECRET, admin=secret)
    load = b"\x00resize \xff 640x480"
    with (
        running_worker(
            [gearmand.address], store, {"flaky": _failing_once(set())}, capture_workload=True
        ),
        Client([gearmand.address], store=store) as submitter,
        _client(app) as client,
    ):
        failed = submitter.submit_background("flaky", load)
        view = submitter.wait(failed, timeout=30)
        assert view.state.value == "failed" and view.record is not None
        assert view.record.workload == load
        path = "/api/jobs/" + quote(str(failed), safe="") + "/resubmit"
        csrf = _csrf(client)
        assert "log in" in _one_line_error(client.post(path, headers={"x-csrf-token": csrf}), 403)
        csrf = _login(client, secret)
        _one_line_error(client.post(path), 403)  # no CSRF token
        made = client.post(path, headers={"x-csrf-token": csrf})
        assert made.status_code == 201, made.text
        body = made.json()
        new = JobRef.parse(body["ref"])
        assert new.server == failed.server and new.handle != failed.handle
        assert body["path"] == "/jobs/" + quote(body["ref"], safe="")
        assert JobRef.parse(body["resubmitted"]) == failed
        done = submitter.wait(new, timeout=30)
        assert done.state.value == "complete" and done.result == b"ok:" + load
        assert done.record is not None and done.record.function == b"flaky"
        assert store.get_many([failed])[0].state.value == "failed"  # type: ignore[union-attr]
        # a complete job is not resubmitted; nor a failed one whose workload was not captured
        again = client.post(
            "/api/jobs/" + quote(str(new), safe="") + "/resubmit", headers={"x-csrf-token": csrf}
        )
        assert "this one is complete" in _one_line_error(again, 409)
        bare = JobKey(failed.server or "", b"H:bare:1", b"u-bare")
        store.write(
            [
                Event(EventKind.STARTED, bare, time.time(), function=b"flaky"),
                Event(EventKind.EXCEPTION, bare, time.time(), b"boom"),
            ]
        )
        refused = client.post("/api/jobs/" + _q(bare) + "/resubmit", headers={"x-csrf-token": csrf})
        assert "no workload was captured" in _one_line_error(refused, 409)
        unknown = client.post(
            "/api/jobs/" + _q(new_key()) + "/resubmit", headers={"x-csrf-token": csrf}
        )
        _one_line_error(unknown, 404)
        # a lost job (its worker died: the lease ran out, the job server forgot it) is resubmitted
        lost = JobKey(failed.server or "", b"H:lost:1", b"u-lost")
        _lost_job(store, lost, b"flaky", b"lost load")
        assert client.get("/api/jobs/" + _q(lost)).json()["state"] == "lost"
        revived = client.post("/api/jobs/" + _q(lost) + "/resubmit", headers={"x-csrf-token": csrf})
        assert revived.status_code == 201, revived.text
        assert JobRef.parse(revived.json()["ref"]).server == failed.server
        # a repeated resubmit while the first is still queued answers that same job
        queued = JobKey(failed.server or "", b"H:lost:2", b"u-lost-2")
        _lost_job(store, queued, b"nobody-serves-this", b"wait")
        twice = [
            client.post("/api/jobs/" + _q(queued) + "/resubmit", headers={"x-csrf-token": csrf})
            for _ in range(2)
        ]
        assert [r.status_code for r in twice] == [201, 201], twice[1].text
        first, second = (JobRef.parse(r.json()["ref"]) for r in twice)
        assert first == second and first.unique is not None
        assert first.unique.startswith(b"resubmit-")


def test_worker_stores_no_workload_over_its_cap(gearmand: Gearmand, store: Store) -> None:
    from workers import running_worker

    with (
        running_worker([gearmand.address], store, capture_workload=True, workload_max_bytes=8),
        Client([gearmand.address], store=store) as client,
    ):
        small = client.submit_background("echo", b"12345678")
        big = client.submit_background("echo", b"123456789")
        assert client.wait(small, timeout=30).record.workload == b"12345678"  # type: ignore[union-attr]
        got = client.wait(big, timeout=30).record
        assert got is not None and got.result == b"123456789" and got.workload is None
    with (
        running_worker([gearmand.address], store),
        Client([gearmand.address], store=store) as client,
    ):
        off = client.submit_background("echo", b"x")
        assert client.wait(off, timeout=30).record.workload is None  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------- logins


def test_admin_login_is_rate_limited_per_address(store: Store) -> None:
    app = _app(store, admin=hash_password(PASSWORD), login_limit=3, login_window=600)
    with _client(app, REMOTE) as client, _client(app, ("198.51.100.7", 1)) as other:
        for _ in range(3):
            csrf = _csrf(client)
            wrong = client.post("/admin/login", data={"password": "nope", "csrf": csrf})
            assert "wrong password" in _one_line_error(wrong, 403)
        csrf = _csrf(client)
        limited = client.post("/admin/login", data={"password": PASSWORD, "csrf": csrf})
        assert "too many login attempts" in _one_line_error(limited, 429)
        assert 1 <= int(limited.headers["retry-after"]) <= 600
        assert client.get("/api/jobs").status_code == 403  # the right password did not log in
        # another address is not limited, and a success clears its count
        for _ in range(2):
            csrf = _csrf(other)
            other.post("/admin/login", data={"password": "nope", "csrf": csrf})
        _login(other, PASSWORD)
        assert other.get("/api/jobs").status_code == 200
        other.post("/admin/logout", data={"csrf": _csrf(other)})
        for _ in range(3):
            csrf = _csrf(other)
            wrong = other.post("/admin/login", data={"password": "nope", "csrf": csrf})
            _one_line_error(wrong, 403)
        csrf = _csrf(other)
        _one_line_error(other.post("/admin/login", data={"password": "no", "csrf": csrf}), 429)


def test_login_throttle_window_and_memory_bound() -> None:
    now = [1000.0]
    throttle = LoginThrottle(2, 60.0, max_clients=3, clock=lambda: now[0])
    assert throttle.attempt("a") == 0
    now[0] += 10
    assert throttle.attempt("a") == 0
    assert throttle.attempt("a") == 50  # refused attempts are not counted
    now[0] += 49.5
    assert throttle.attempt("a") == 1
    now[0] += 0.5  # the first attempt left the window
    assert throttle.attempt("a") == 0 and throttle.attempt("a") == 10
    throttle.succeeded("a")
    assert throttle.attempt("a") == 0
    for client in ("b", "c", "d"):  # "a" is now the least recently seen of four
        throttle.attempt(client)
        throttle.attempt(client)
    assert throttle.attempt("d") > 0
    assert throttle.attempt("a") == 0  # forgotten, and so counted afresh
    with pytest.raises(ConfigError):
        LoginThrottle(0)
