"""Test helpers for the web face: a real uvicorn serving an app in a thread, and Debian's
Chromium headless driven by selenium (nothing is downloaded: the binaries must be installed)."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from gearstash.testing.gearmand import free_port
from support.need import SETUP_HINT, need
from support.waiting import wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free 127.0.0.1 port in a thread; yields the base URL."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True, name="uvicorn")
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


def chromium_present() -> bool:
    """True when Debian's chromium and chromedriver are installed."""
    return bool(shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER))


@contextmanager
def chrome(*, dark: bool = False, width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A headless Chromium (selenium WebDriver); ``dark`` emulates prefers-color-scheme: dark."""
    need(chromium_present(), "chromium and chromium-driver are not installed: " + SETUP_HINT)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in CI containers
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        if dark:
            driver.execute_cdp_cmd(
                "Emulation.setEmulatedMedia",
                {"features": [{"name": "prefers-color-scheme", "value": "dark"}]},
            )
        yield driver
    finally:
        driver.quit()


def wait_for(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """:func:`support.waiting.wait_until` with the page's pace (a check every 50 ms)."""
    return wait_until(check, timeout, "the page", interval=0.05)
