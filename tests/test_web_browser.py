"""The pages in a real browser: Debian's Chromium headless (selenium), a real uvicorn, and for the
live job a real gearmand and gearstash worker writing to a real SQLite store.

No timing is asserted: conditions are polled with wide bounds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx2
import pytest
from support.browser import chrome, serving, wait_for
from workers import running_worker

from gearstash.client.client import Client
from gearstash.client.tokens import TokenSigner
from gearstash.model.records import Event, EventKind, JobKey, JobRef
from gearstash.spine.manager import open_store
from gearstash.store.contract import Store
from gearstash.testing.contract import full_job, new_key
from gearstash.testing.gearmand import Gearmand
from gearstash.web.app import create_app
from gearstash.web.security import hash_password
from gearstash.worker.job import Job

pytestmark = pytest.mark.browser

SECRET = "token-secret-for-the-browser-tests-0123"
PASSWORD = "browser admin password"
STEPS = 12


def steps(job: Job) -> bytes:
    """STEPS status points and chunks, a little apart, then a result."""
    for i in range(STEPS):
        job.send_status(i + 1, STEPS)
        job.send_data(b"step %d" % i)
        time.sleep(0.4)
    return b"all done"


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/web.db"


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    try:
        yield opened
    finally:
        opened.close()


def _page(base: str, ref: JobRef | JobKey) -> str:
    if isinstance(ref, JobKey):
        ref = JobRef(ref.handle, ref.server, ref.unique)
    return f"{base}/jobs/{quote(str(ref), safe='')}"


def _text(driver: Any, element_id: str) -> str:
    return str(driver.execute_script(f"return document.getElementById('{element_id}').textContent"))


def _chunks(driver: Any) -> list[str]:
    return list(
        driver.execute_script(
            "return [...document.querySelectorAll('#chunks li')].map(li => li.textContent)"
        )
    )


def test_live_job_page_moves_and_completes_without_reload(
    gearmand: Gearmand, store_url: str, store: Store
) -> None:
    app = create_app(store=store, servers=[gearmand.address], token_secret=SECRET)
    with (
        serving(app) as base,
        running_worker([gearmand.address], store_url, {"steps": steps}),
        Client([gearmand.address], store=store) as client,
        chrome() as driver,
    ):
        ref = client.submit_background("steps", b"")
        wait_for(lambda: store.get_many([ref])[0] is not None, 20)
        driver.get(_page(base, ref))
        driver.execute_script("window.__samePage = 42")
        widths: set[float] = set()
        partial_chunks: set[int] = set()

        def sample() -> bool:
            width = driver.execute_script(
                "const b = document.getElementById('bar'); return b ? b.style.width : ''"
            )
            state = _text(driver, "state")
            count = len(_chunks(driver))
            if state == "running":
                if width.endswith("%"):
                    widths.add(float(width[:-1]))
                if 0 < count < STEPS:
                    partial_chunks.add(count)
            return state == "complete"

        wait_for(sample, 60)
        # the bar moved through intermediate values and chunks arrived one by one, live
        assert len({w for w in widths if 0 < w < 100}) >= 2, widths
        assert len(partial_chunks) >= 2, partial_chunks
        assert _chunks(driver) == [f"step {i}" for i in range(STEPS)]
        assert _text(driver, "result") == "all done"
        assert driver.execute_script("return window.__samePage") == 42  # never reloaded
        width = driver.execute_script("return document.getElementById('bar').style.width")
        assert float(width.rstrip("%")) == 100


def test_hostile_job_output_is_shown_as_text_and_never_runs(store: Store) -> None:
    key = JobKey("127.0.0.1:4730", b"H:xss:1", b"<b>u</b>")
    hostile = [
        b'<img src=x onerror="window.__pwned = 1">',
        b"<script>window.__pwned = 2</script>",
        b'"><svg onload="window.__pwned = 3">',
    ]
    now = time.time()
    store.write([Event(EventKind.STARTED, key, now, function=b"<i>f</i>", worker="<w>")])
    store.write([Event(EventKind.DATA, key, now, hostile[0])])
    app = create_app(store=store, servers=["127.0.0.1:9"], token_secret=SECRET, hub_interval=0.05)
    with serving(app) as base, chrome() as driver:
        driver.get(_page(base, key))
        wait_for(lambda: _chunks(driver) == [hostile[0].decode()], 20)  # from the first fetch
        # and the same through the live stream
        store.write([Event(EventKind.DATA, key, now + 1, hostile[1])])
        store.write([Event(EventKind.WARNING, key, now + 1, hostile[2])])
        store.write(
            [Event(EventKind.EXCEPTION, key, now + 2, hostile[2], traceback=hostile[1].decode())]
        )
        wait_for(lambda: _text(driver, "state") == "failed", 20)
        assert _chunks(driver) == [hostile[0].decode(), hostile[1].decode()]
        assert hostile[2].decode() in _text(driver, "warnings")
        assert hostile[2].decode() in _text(driver, "exception")
        assert _text(driver, "traceback") == hostile[1].decode()
        assert driver.execute_script("return window.__pwned") is None
        assert (
            driver.execute_script(
                "return document.querySelectorAll('main img, main svg image, main script').length"
            )
            == 0
        )
        assert _text(driver, "title") == "H:xss:1"


def test_token_page_shows_its_one_job_and_forged_tokens_are_refused(store: Store) -> None:
    mine, other = new_key(), new_key()
    store.write(full_job(mine) + full_job(other))
    signer = TokenSigner(SECRET)
    token = signer.sign(JobRef(mine.handle, mine.server, mine.unique))
    forged = token[:-3] + ("abc" if not token.endswith("abc") else "xyz")
    app = create_app(store=store, servers=["127.0.0.1:9"], token_secret=SECRET)
    with serving(app) as base, chrome() as driver:
        driver.get(f"{base}/t/{token}/view")
        wait_for(lambda: _text(driver, "result") == "done", 20)
        assert _text(driver, "title").startswith("Shared job: ")
        assert _chunks(driver) == ["one", "two", "three"]
        source = driver.page_source
        assert other.handle.decode() not in source
        # nor where it ran: its server, handle, unique and worker are not on the page
        assert mine.handle.decode() not in source and mine.server not in source
        assert "Handle" not in _text(driver, "facts") and "Worker" not in _text(driver, "facts")
        assert driver.execute_script("return document.querySelectorAll('nav a').length") == 0
        driver.get(f"{base}/t/{forged}/view")
        body = driver.execute_script("return document.body.textContent")
        assert '"forbidden"' in body and mine.handle.decode() not in driver.page_source
        for path in (f"/t/{forged}/view", f"/t/{forged}", f"/t/{forged}/events"):
            response = httpx2.get(base + path)
            assert response.status_code == 403 and response.json() == {"error": "forbidden"}


def _body_text(driver: Any) -> str:
    return str(driver.execute_script("return document.body.textContent"))


def _log_in(driver: Any, base: str) -> None:
    """Log in as admin through the login page; back on the overview."""
    driver.get(base + "/login")
    field = driver.find_element("css selector", "input[name=password]")
    field.send_keys(PASSWORD)
    field.submit()
    wait_for(lambda: driver.current_url.rstrip("/") == base, 20)


def test_admin_actions_need_login_and_csrf_in_the_browser(store: Store) -> None:
    key = new_key()
    store.write(full_job(key))
    ref = JobRef(key.handle, key.server, key.unique)
    app = create_app(
        store=store, servers=["127.0.0.1:9"], token_secret=SECRET, admin=hash_password(PASSWORD)
    )
    with serving(app) as base, chrome() as driver:
        driver.get(_page(base, key))  # a credential is configured: sent to log in first
        wait_for(lambda: driver.current_url == base + "/login", 20)
        field = driver.find_element("css selector", "input[name=password]")
        field.send_keys("not the password")
        field.submit()  # refused: the login page again, with the reason
        wait_for(lambda: "wrong password" in _body_text(driver), 20)
        assert driver.find_element("css selector", "input[name=password]").is_displayed()
        _log_in(driver, base)
        driver.get(_page(base, key))
        wait_for(lambda: _text(driver, "result") == "done", 20)
        # a POST without the CSRF token is refused, even from the logged-in page
        status = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(location.pathname.replace('/jobs/', '/api/jobs/') + '/forget',"
            " {method: 'POST', credentials: 'same-origin'}).then(r => done(r.status));"
        )
        assert status == 403 and store.get_many([ref])[0] is not None
        forget = driver.find_element("id", "forget")
        assert forget.is_displayed()
        forget.click()
        driver.switch_to.alert.accept()
        wait_for(lambda: "forgotten" in _text(driver, "error-line"), 20)
        assert store.get_many([ref]) == [None]


_VISIBILITY = (
    "Object.defineProperty(document, 'visibilityState', {value: arguments[0], configurable: true});"
    "document.dispatchEvent(new Event('visibilitychange'));"
)


def test_hidden_tab_pauses_and_resumes_without_losing_or_repeating(store: Store) -> None:
    key = new_key()
    now = time.time()
    store.write(
        [Event(EventKind.STARTED, key, now, function=b"f")]
        + [Event(EventKind.DATA, key, now, b"chunk %d" % i) for i in range(2)]
    )
    app = create_app(store=store, servers=["127.0.0.1:9"], token_secret=SECRET, hub_interval=0.05)
    hub = app.state.face.hub
    with serving(app) as base, chrome() as driver:
        driver.get(_page(base, key))
        wait_for(lambda: _chunks(driver) == ["chunk 0", "chunk 1"] and hub.followed == 1, 20)
        driver.execute_script(_VISIBILITY, "hidden")
        wait_for(lambda: hub.followed == 0, 20)  # the page closed its stream: nobody follows
        store.write([Event(EventKind.DATA, key, now + 1, b"chunk %d" % i) for i in (2, 3)])
        store.write([Event(EventKind.STATUS, key, now + 1, numerator=1, denominator=2)])
        time.sleep(1)  # a live page would show the new chunks by now
        assert _chunks(driver) == ["chunk 0", "chunk 1"]
        driver.execute_script(_VISIBILITY, "visible")
        wait_for(lambda: len(_chunks(driver)) >= 4, 20)
        store.write([Event(EventKind.COMPLETED, key, now + 2, b"fine")])
        wait_for(lambda: _text(driver, "state") == "complete", 20)
        assert _chunks(driver) == [f"chunk {i}" for i in range(4)]  # nothing lost, nothing twice
        assert _text(driver, "percent").startswith("50.0 %")


def test_admin_resubmits_a_failed_job_from_its_page(
    gearmand: Gearmand, store_url: str, store: Store
) -> None:
    seen: set[bytes] = set()

    def flaky(job: Job) -> bytes:
        """Fails the first time it sees a workload, completes with it the next."""
        if job.workload not in seen:
            seen.add(job.workload)
            raise RuntimeError("first try fails")
        return b"ok:" + job.workload

    app = create_app(
        store=store, servers=[gearmand.address], token_secret=SECRET, admin=hash_password(PASSWORD)
    )
    load = b'<img src=x onerror="window.__pwned = 1"> \xff'
    with (
        serving(app) as base,
        running_worker([gearmand.address], store_url, {"flaky": flaky}, capture_workload=True),
        Client([gearmand.address], store=store) as client,
        chrome() as driver,
    ):
        failed = client.submit_background("flaky", load)
        assert client.wait(failed, timeout=30).state.value == "failed"
        _log_in(driver, base)
        driver.get(_page(base, failed))
        wait_for(lambda: _text(driver, "state") == "failed", 20)
        shown = _text(driver, "workload")
        assert shown.startswith("binary, ") and "base64: " in shown  # not UTF-8: hex and base64
        assert driver.execute_script("return window.__pwned") is None
        button = driver.find_element("id", "resubmit")
        assert button.is_displayed()
        button.click()
        driver.switch_to.alert.accept()
        wait_for(lambda: driver.current_url != _page(base, failed), 20)
        new = JobRef.parse(unquote(driver.current_url.rsplit("/jobs/", 1)[1]))
        assert new.server == failed.server and new.handle != failed.handle
        wait_for(lambda: _text(driver, "state") == "complete", 30)
        assert _text(driver, "result").startswith("binary, ")
        assert not driver.find_element("id", "resubmit").is_displayed()
        assert client.fetch(new).result == b"ok:" + load
