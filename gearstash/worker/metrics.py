"""Prometheus metrics of a worker process (``gearstash worker --metrics-port``).

:func:`instrument` wraps the worker's store in a :class:`MeteredStore` (every ``write`` timed into
a histogram) and returns a registry holding:

* ``gearstash_worker_jobs_total`` — jobs this worker finished (counter);
* ``gearstash_store_write_seconds`` — store write latency (histogram; a write that went to the
  spool counts too, labelled ``outcome="ok"``; one that raised, ``outcome="error"``);
* ``gearstash_spool_batches`` — batches waiting in the spool (0 without a spool);
* ``gearstash_store_down_seconds`` — how long the store has been refusing writes (0 while up).

:func:`serve` exposes it over HTTP (prometheus-client's own server thread, loopback by default).
Needs prometheus-client (the ``web`` extra).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gearstash.model.records import Event, JobRecord, JobRef
from gearstash.store.contract import Store

if TYPE_CHECKING:
    from gearstash.worker.worker import Worker

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class MeteredStore:
    """A store that times every ``write`` of the store it wraps (everything else passes through)."""

    def __init__(self, inner: Store, histogram: Histogram) -> None:
        self.inner = inner
        self.url = inner.url
        self.capabilities = inner.capabilities
        self._ok = histogram.labels(outcome="ok")
        self._error = histogram.labels(outcome="error")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def write(self, events: Sequence[Event]) -> None:
        """The inner store's write, timed."""
        started = time.perf_counter()
        try:
            self.inner.write(events)
        except BaseException:
            self._error.observe(time.perf_counter() - started)
            raise
        self._ok.observe(time.perf_counter() - started)

    def get_many(self, refs: Sequence[JobRef]) -> list[JobRecord | None]:
        """The inner store's read."""
        return self.inner.get_many(refs)

    def close(self) -> None:
        """Close the inner store."""
        self.inner.close()


class _WorkerCollector(Collector):
    def __init__(self, worker: Worker, spool: Any) -> None:
        self.worker = worker
        self.spool = spool

    def collect(self) -> Iterator[Metric]:
        jobs = CounterMetricFamily("gearstash_worker_jobs", "Jobs this worker finished.")
        jobs.add_metric([], self.worker.jobs_done)
        yield jobs
        spooled = getattr(self.spool, "spooled", 0)
        down = getattr(self.spool, "down_for", 0.0)
        yield GaugeMetricFamily("gearstash_spool_batches", "Batches waiting in the spool.", spooled)
        yield GaugeMetricFamily(
            "gearstash_store_down_seconds", "Seconds the store has been refusing writes.", down
        )


def instrument(worker: Worker) -> CollectorRegistry:
    """Meter ``worker``'s store writes and return the registry of its metrics (call before
    :meth:`Worker.work`)."""
    registry = CollectorRegistry(auto_describe=True)
    histogram = Histogram(
        "gearstash_store_write_seconds",
        "Store write latency.",
        ["outcome"],
        buckets=BUCKETS,
        registry=registry,
    )
    spool = worker.store  # a SpoolingStore when the worker spools
    worker.store = MeteredStore(spool, histogram)
    registry.register(_WorkerCollector(worker, spool))
    return registry


def serve(registry: CollectorRegistry, port: int, addr: str = "127.0.0.1") -> None:
    """Serve ``registry`` at ``http://ADDR:PORT/metrics`` from a daemon thread."""
    start_http_server(port, addr=addr, registry=registry)
