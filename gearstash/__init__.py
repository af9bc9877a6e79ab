"""gearstash: keep what Gearman background jobs say.

The public API: :class:`Worker` and :class:`Job` (capture), :class:`Client` (submit, status, fetch,
wait), the record types, the error tree, and :data:`hookimpl` for plugins. Names are imported lazily
on first use, so ``import gearstash`` is cheap and has no side effects.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Client": "gearstash.client",
    "JobView": "gearstash.client",
    "Status": "gearstash.client",
    "BadToken": "gearstash.errors",
    "ConfigError": "gearstash.errors",
    "GearstashError": "gearstash.errors",
    "JobFailed": "gearstash.errors",
    "JobNotFound": "gearstash.errors",
    "ProtocolError": "gearstash.errors",
    "ServerError": "gearstash.errors",
    "ServerUnavailable": "gearstash.errors",
    "StoreError": "gearstash.errors",
    "StoreRejected": "gearstash.errors",
    "WaitTimeout": "gearstash.errors",
    "hookimpl": "gearstash.plugins",
    "open_store": "gearstash.plugins",
    "Event": "gearstash.records",
    "EventKind": "gearstash.records",
    "JobError": "gearstash.records",
    "JobKey": "gearstash.records",
    "JobRecord": "gearstash.records",
    "JobRef": "gearstash.records",
    "State": "gearstash.records",
    "Store": "gearstash.store",
    "Job": "gearstash.worker",
    "Worker": "gearstash.worker",
}

__all__ = [
    "BadToken",
    "Client",
    "ConfigError",
    "Event",
    "EventKind",
    "GearstashError",
    "Job",
    "JobError",
    "JobFailed",
    "JobKey",
    "JobNotFound",
    "JobRecord",
    "JobRef",
    "JobView",
    "ProtocolError",
    "ServerError",
    "ServerUnavailable",
    "State",
    "Status",
    "Store",
    "StoreError",
    "StoreRejected",
    "WaitTimeout",
    "Worker",
    "__version__",
    "hookimpl",
    "open_store",
]

if TYPE_CHECKING:
    from gearstash.client import Client, JobView, Status
    from gearstash.errors import (
        BadToken,
        ConfigError,
        GearstashError,
        JobFailed,
        JobNotFound,
        ProtocolError,
        ServerError,
        ServerUnavailable,
        StoreError,
        StoreRejected,
        WaitTimeout,
    )
    from gearstash.plugins import hookimpl, open_store
    from gearstash.records import Event, EventKind, JobError, JobKey, JobRecord, JobRef, State
    from gearstash.store import Store
    from gearstash.worker import Job, Worker


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gearstash' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
