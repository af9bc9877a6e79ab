"""Polling with wide bounds: the suite waits for a state, never for a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT = 30.0  # wide on purpose: a busy 2-core machine is slow, never wrong


def poll(
    check: Callable[[], T], timeout: float = DEFAULT_TIMEOUT, interval: float = 0.02
) -> T | None:
    """Call ``check`` until it returns something truthy and return that; after ``timeout``
    seconds return its last (falsy) answer. ``check`` runs at least once after the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    return check()


def wait_until(
    check: Callable[[], T],
    timeout: float = DEFAULT_TIMEOUT,
    what: str = "condition",
    interval: float = 0.02,
) -> T:
    """Poll ``check`` until it returns something truthy and return that; fail the test with
    ``timed out after N s waiting for <what>`` otherwise."""
    value = poll(check, timeout, interval)
    assert value, f"timed out after {timeout} s waiting for {what}"
    return value
