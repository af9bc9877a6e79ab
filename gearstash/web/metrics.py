"""``GET /metrics``: Prometheus text format (prometheus-client), gathered on each scrape.

* ``gearstash_jobs{state}`` — stored jobs by state (stores that can list);
* ``gearstash_jobs_by_function{function,state}`` — the same for the newest
  :data:`FUNCTION_SCAN` jobs, by function (an approximation on larger stores: see ``help``);
* ``gearman_server_up{server}``, ``gearman_queued{server,function}``,
  ``gearman_running{server,function}``, ``gearman_workers{server,function}`` — from each job
  server's admin ``status``.

The scrape answers like the other reading routes (loopback, admin or ``--public``).
"""

from __future__ import annotations

from collections import Counter

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from gearstash.protocol.admin import parse_status
from gearstash.store.contract import JobFilter, count_by_state, list_jobs
from gearstash.web.api import admin_lines, face_of
from gearstash.web.face import Face

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FUNCTION_SCAN = 10_000


class StoreAndServers(Collector):
    """Collects the metrics above from one :class:`~gearstash.web.face.Face` (blocking)."""

    def __init__(self, face: Face) -> None:
        self.face = face

    def collect(self) -> list[GaugeMetricFamily]:
        """Read the store and the job servers now."""
        face = self.face
        out: list[GaugeMetricFamily] = []
        if face.can_list:
            jobs = GaugeMetricFamily("gearstash_jobs", "Stored jobs by state.", labels=["state"])
            for state, count in count_by_state(face.store).items():
                jobs.add_metric([state.value], count)
            out.append(jobs)
            by_function = GaugeMetricFamily(
                "gearstash_jobs_by_function",
                f"Stored jobs by function and state, among the newest {FUNCTION_SCAN}.",
                labels=["function", "state"],
            )
            tally: Counter[tuple[str, str]] = Counter()
            cursor: str | None = None
            seen = 0
            while seen < FUNCTION_SCAN:
                page = list_jobs(face.store, JobFilter(), 1000, cursor)
                for job in page.jobs:
                    tally[(job.function.decode("utf-8", "replace"), job.state.value)] += 1
                seen += len(page.jobs)
                cursor = page.cursor
                if cursor is None:
                    break
            for (function, state_name), count in sorted(tally.items()):
                by_function.add_metric([function, state_name], count)
            out.append(by_function)
        up = GaugeMetricFamily("gearman_server_up", "Job server answers.", labels=["server"])
        queued = GaugeMetricFamily("gearman_queued", "Jobs queued.", labels=["server", "function"])
        running = GaugeMetricFamily(
            "gearman_running", "Jobs running.", labels=["server", "function"]
        )
        workers = GaugeMetricFamily(
            "gearman_workers", "Workers able to run.", labels=["server", "function"]
        )
        for server in face.servers:
            try:
                (lines,) = admin_lines(server, ("status",))
                statuses = parse_status(lines)
            except Exception:
                up.add_metric([server], 0)
                continue
            up.add_metric([server], 1)
            for status in statuses:
                labels = [server, status.function]
                queued.add_metric(labels, status.queued)
                running.add_metric(labels, status.running)
                workers.add_metric(labels, status.workers)
        return [*out, up, queued, running, workers]


def render(face: Face) -> bytes:
    """The metrics text (blocking)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreAndServers(face))
    return generate_latest(registry)


async def metrics_route(request: Request) -> Response:
    """``GET /metrics``."""
    face = face_of(request)
    face.require_read(request)
    body = await face.blocking(render, face)
    return Response(body, media_type=CONTENT_TYPE)
