"""Every gearstash hook, grouped by phase.

Plugins implement these with ``@gearstash.hookimpl`` (never import pluggy yourself). Hooks discover
things and observe events; objects (stores) do the work.

Worker-event hooks are broadcast: every implementation is called, in the worker's thread (the
proxy's event-loop thread for proxied jobs), after the event has been handed to the store. An
exception raised by an observer is logged and swallowed: an observer can never fail a job. Keep
them fast; they run on the worker's hot path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from gearstash.model.records import JobError, JobInfo

hookspec = pluggy.HookspecMarker("gearstash")

RegisterStore = Callable[..., None]

# ---------------------------------------------------------------- discovery


@hookspec
def register_stores(register: RegisterStore) -> None:
    """Register store implementations by URL scheme.

    Call ``register(scheme, factory, description="...")`` once per scheme. ``factory(url)``
    receives the whole URL and returns an object implementing
    :class:`gearstash.store.contract.Store`. A scheme registered by two plugins is logged as a
    warning; the first registration wins.

    Optional keywords: ``exists`` (``exists(url) -> bool``: whether the store is there already,
    so that commands which only read never create one), ``driver`` (the module the store needs,
    imported only when the store is opened) and ``extra`` (the pip extra installing it): while
    ``driver`` is missing the scheme is listed as needing the extra and stays quiet until asked
    for, then says ``pip install 'gearstash[EXTRA]'``.

    :param register: ``register(scheme: str, factory: StoreFactory, *, description: str = "",
        exists=None, driver: str = "", extra: str = "")``.
    """


# ---------------------------------------------------------------- worker events


@hookspec
def job_started(job: JobInfo) -> None:
    """A worker took ``job`` from its server and is about to run the function.

    :param job: a :class:`gearstash.model.records.JobInfo`: the :class:`gearstash.worker.job.Job`,
        or for a job relayed by ``gearstash proxy`` its view (``handle``, ``unique``,
        ``function``, ``workload``, ``server``, ``key``, ``ref``; ``attempt`` is not known here).
    """


@hookspec
def job_data(job: JobInfo, data: bytes) -> None:
    """The job function sent a WORK_DATA chunk.

    :param data: the chunk, as sent.
    """


@hookspec
def job_warning(job: JobInfo, warning: bytes) -> None:
    """The job function sent a WORK_WARNING.

    :param warning: the warning, as sent.
    """


@hookspec
def job_status(job: JobInfo, numerator: int, denominator: int) -> None:
    """The job function sent WORK_STATUS.

    :param numerator: progress so far.
    :param denominator: progress at completion.
    """


@hookspec
def job_completed(job: JobInfo, result: bytes) -> None:
    """The job function returned; ``result`` was stored and is being sent as WORK_COMPLETE.

    :param result: the return value as bytes.
    """


@hookspec
def job_failed(job: JobInfo, error: JobError) -> None:
    """The job failed: the function raised ``gearstash.JobFailed`` (``error.kind == "fail"``) or any
    other exception (``error.kind == "exception"``, with ``error.traceback``).

    :param error: what was stored as the job's error.
    """


@hookspec
def store_failed(store_url: str, error: Exception, events: int) -> None:
    """A store write failed; the worker logged it and goes on serving jobs.

    :param store_url: the store's redacted URL.
    :param error: the exception raised by the store.
    :param events: how many events the failed write carried.
    """
