"""The run's random seed: printed in pytest's header, replayed with ``GEARSTASH_TEST_SEED``.

Tests that draw random cases seed ``random.Random(f"{seed()}-<name>")`` and put the seed in
their failure messages; Hypothesis prints its own (the ``ci`` profile in conftest.py).
"""

from __future__ import annotations

import os
import secrets

SEED_ENV = "GEARSTASH_TEST_SEED"
_SEED = os.environ.get(SEED_ENV) or secrets.token_hex(4)


def seed() -> str:
    """This run's seed (from ``$GEARSTASH_TEST_SEED`` when set)."""
    return _SEED
