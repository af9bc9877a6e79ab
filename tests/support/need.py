"""Skip or fail: the one place that decides what a missing server or binary means.

The suite runs everything by default, so a missing server or binary *fails* the test. Skipping
is asked for explicitly with ``GEARSTASH_ALLOW_SKIP=1`` (``make test-some``); the former
``GEARSTASH_REQUIRE_ALL=1`` is still accepted and means the default.
"""

from __future__ import annotations

import os

import pytest

ALLOW_SKIP_ENV = "GEARSTASH_ALLOW_SKIP"
SETUP_HINT = "run scripts/setup.sh (or make setup)"


def skipping_allowed() -> bool:
    """True only when the run asked for missing servers to skip their tests."""
    return os.environ.get(ALLOW_SKIP_ENV, "").strip().lower() in ("1", "true", "yes")


def need(condition_ok: bool, reason: str) -> None:
    """Go on when ``condition_ok``; else fail with ``reason`` (skip under GEARSTASH_ALLOW_SKIP=1)."""
    if condition_ok:
        return
    if skipping_allowed():
        pytest.skip(reason)
    pytest.fail(f"{reason} [set {ALLOW_SKIP_ENV}=1 to skip instead]", pytrace=False)
