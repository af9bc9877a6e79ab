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
    "Client": "gearstash.client.client",
    "JobView": "gearstash.client.client",
    "Status": "gearstash.client.client",
    "BadToken": "gearstash.errors",
    "ConfigError": "gearstash.errors",
    "GearstashError": "gearstash.errors",
    "JobFailed": "gearstash.errors",
    "JobNotFound": "gearstash.errors",
    "NotSupported": "gearstash.errors",
    "ProtocolError": "gearstash.errors",
    "ServerError": "gearstash.errors",
    "PartlySubmitted": "gearstash.client.submitting",
    "ServerUnavailable": "gearstash.errors",
    "StoreDenied": "gearstash.errors",
    "StoreError": "gearstash.errors",
    "StoreRejected": "gearstash.errors",
    "WaitTimeout": "gearstash.errors",
    "hookimpl": "gearstash.spine.manager",
    "open_store": "gearstash.spine.manager",
    "Event": "gearstash.model.records",
    "EventKind": "gearstash.model.records",
    "JobError": "gearstash.model.records",
    "JobKey": "gearstash.model.records",
    "JobRecord": "gearstash.model.records",
    "JobRef": "gearstash.model.records",
    "State": "gearstash.model.records",
    "Store": "gearstash.store.contract",
    "Job": "gearstash.worker.job",
    "Worker": "gearstash.worker.worker",
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
    "NotSupported",
    "PartlySubmitted",
    "ProtocolError",
    "ServerError",
    "ServerUnavailable",
    "State",
    "Status",
    "Store",
    "StoreDenied",
    "StoreError",
    "StoreRejected",
    "WaitTimeout",
    "Worker",
    "__version__",
    "hookimpl",
    "open_store",
]

if TYPE_CHECKING:
    from gearstash.client.client import Client, JobView, Status
    from gearstash.client.submitting import PartlySubmitted
    from gearstash.errors import (
        BadToken,
        ConfigError,
        GearstashError,
        JobFailed,
        JobNotFound,
        NotSupported,
        ProtocolError,
        ServerError,
        ServerUnavailable,
        StoreDenied,
        StoreError,
        StoreRejected,
        WaitTimeout,
    )
    from gearstash.model.records import Event, EventKind, JobError, JobKey, JobRecord, JobRef, State
    from gearstash.spine.manager import hookimpl, open_store
    from gearstash.store.contract import Store
    from gearstash.worker.job import Job
    from gearstash.worker.worker import Worker


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gearstash' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
