"""The JSON API routes (documented in ``/api/openapi.json``, :mod:`gearstash.web.openapi`).

Every error is ``{"error": "<one line>"}`` with a 4xx status (5xx only when the store or a job
server fails: 503 when it cannot be reached, 502 when a job server refuses the request).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gearstash.errors import BadCursor, ConfigError
from gearstash.model.codec import bytes_to_json
from gearstash.model.records import JobRef, State, normalize_server
from gearstash.model.views import JobView, merge_state
from gearstash.protocol.admin import parse_status, parse_workers
from gearstash.store.contract import (
    LISTED_STATES,
    JobFilter,
    JobSummary,
    count_by_state,
    get_one,
    list_jobs,
)
from gearstash.transport.connection import Connection
from gearstash.web.events import KEEPALIVE, Cursor, Follower, public
from gearstash.web.face import Face, HTTPProblem, JSONBody, parse_ref
from gearstash.web.hub import Idle

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
LIST_PARAMS = frozenset(
    {"state", "function", "server", "since", "until", "q", "limit", "cursor", "counts"}
)


def face_of(request: Request) -> Face:
    """The app's :class:`Face`."""
    face: Face = request.app.state.face
    return face


# ---------------------------------------------------------------------------------- listing


def _number(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise HTTPProblem(400, f"{name} must be a number (Unix seconds)") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise HTTPProblem(400, f"{name} must be a finite number")
    return value


def job_filter(request: Request) -> tuple[JobFilter, int, str | None, bool]:
    """(filter, limit, cursor, counts) from the query string; HTTPProblem 400 for anything
    unknown or malformed."""
    params = request.query_params
    unknown = sorted(set(params) - LIST_PARAMS)
    if unknown:
        raise HTTPProblem(
            400, f"unknown filter {unknown[0]!r}; known: {', '.join(sorted(LIST_PARAMS))}"
        )
    states: set[State] = set()
    for value in params.getlist("state"):
        for name in value.split(","):
            if not name:
                continue
            try:
                state = State(name)
            except ValueError:
                state = None
            if state not in LISTED_STATES:
                allowed = ", ".join(sorted(LISTED_STATES))
                raise HTTPProblem(400, f"unknown state {name[:40]!r}; one of {allowed}")
            states.add(state)
    server = params.get("server") or None
    if server is not None:
        try:
            server = normalize_server(server)
        except ConfigError as exc:
            raise HTTPProblem(400, str(exc)) from None
    function = params.get("function")
    since = _number("since", params["since"]) if params.get("since") else None
    until = _number("until", params["until"]) if params.get("until") else None
    prefix = params.get("q") or None
    limit_text = params.get("limit") or str(DEFAULT_LIMIT)
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_LIMIT:
        raise HTTPProblem(400, f"limit must be a whole number from 1 to {MAX_LIMIT}")
    counts = params.get("counts", "0") not in ("", "0", "false", "no")
    made = JobFilter(
        states=frozenset(states),
        function=None if function is None or function == "" else function.encode(),
        server=server,
        since=since,
        until=until,
        prefix=prefix.encode() if prefix else None,
    )
    return made, int(limit_text), params.get("cursor") or None, counts


def summary_json(summary: JobSummary, now: float) -> dict[str, Any]:
    """One job of a listing (a running job whose lease ran out shows as ``lost``)."""
    state = summary.state
    if state is State.RUNNING and summary.lease_until is not None and summary.lease_until < now:
        state = State.LOST
    key = summary.key
    return {
        "ref": str(summary.ref),
        "server": key.server,
        "handle": bytes_to_json(key.handle),
        "unique": bytes_to_json(key.unique),
        "function": bytes_to_json(summary.function),
        "state": state.value,
        "attempt": summary.attempt,
        "worker": summary.worker,
        "started_at": summary.started_at,
        "finished_at": summary.finished_at,
        "updated_at": summary.updated_at,
        "expires_at": summary.expires_at,
        "numerator": summary.numerator,
        "denominator": summary.denominator,
        "error_kind": summary.error_kind,
    }


def _require_listing(face: Face) -> None:
    if not face.can_list:
        raise HTTPProblem(
            501, f"the store {face.store.url} cannot list jobs: look a job up by its handle"
        )


async def api_jobs(request: Request) -> Response:
    """``GET /api/jobs``: stored jobs, newest first, filtered and paged; counts on request."""
    face = face_of(request)
    face.require_read(request)
    filter, limit, cursor, with_counts = job_filter(request)
    _require_listing(face)

    def read() -> dict[str, Any]:
        try:
            page = list_jobs(face.store, filter, limit, cursor)
        except BadCursor as exc:
            raise HTTPProblem(400, str(exc)) from None
        now = time.time()
        out: dict[str, Any] = {
            "jobs": [summary_json(s, now) for s in page.jobs],
            "cursor": page.cursor,
        }
        if with_counts:
            out["counts"] = {k.value: v for k, v in count_by_state(face.store, filter).items()}
        return out

    return JSONBody(await face.blocking(read))


async def api_counts(request: Request) -> Response:
    """``GET /api/counts``: counts by state (filters as ``/api/jobs``)."""
    face = face_of(request)
    face.require_read(request)
    filter, _limit, _cursor, _counts = job_filter(request)
    _require_listing(face)
    counts = await face.blocking(count_by_state, face.store, filter)
    return JSONBody({k.value: v for k, v in counts.items()})


THROUGHPUT_WINDOW = 3600
THROUGHPUT_SCAN = 20_000  # jobs looked at at most for the chart


async def api_throughput(request: Request) -> Response:
    """``GET /api/throughput``: jobs finished and failed per minute over the last hour, from the
    records (at most the newest 20,000 finished ones are looked at)."""
    face = face_of(request)
    face.require_read(request)
    _require_listing(face)
    now = time.time()
    start = (int(now) // 60 - THROUGHPUT_WINDOW // 60 + 1) * 60

    def read() -> dict[str, Any]:
        complete = [0] * (THROUGHPUT_WINDOW // 60)
        failed = [0] * (THROUGHPUT_WINDOW // 60)
        wanted = JobFilter(states=frozenset({State.COMPLETE, State.FAILED}), since=start)
        cursor: str | None = None
        seen = 0
        while seen < THROUGHPUT_SCAN:
            page = list_jobs(face.store, wanted, 1000, cursor)
            for job in page.jobs:
                at = job.finished_at
                if at is None or at < start:
                    continue
                slot = min(int(at - start) // 60, len(complete) - 1)
                (complete if job.state is State.COMPLETE else failed)[slot] += 1
            seen += len(page.jobs)
            cursor = page.cursor
            if cursor is None:
                break
        return {"start": start, "step": 60, "complete": complete, "failed": failed}

    return JSONBody(await face.blocking(read))


# ---------------------------------------------------------------------------------- one job


def fetch(face: Face, ref: JobRef) -> JobView:
    """The merged view of ``ref``: live status and record, or the record alone for a job of a
    job server this app is not configured to ask (the store may hold jobs of any server)."""
    if ref.server is not None and ref.server not in face.servers:
        return merge_state(ref, None, get_one(face.store, ref))
    return face.client.fetch(ref)


async def _view_json(face: Face, ref: JobRef, *, private: bool = True) -> dict[str, Any]:
    view = await face.blocking(fetch, face, ref)
    if view.state is State.UNKNOWN:
        raise HTTPProblem(404, "no such job: neither the job server nor the store knows it")
    out = view.to_json()
    out["restarts"] = max(0, (view.record.attempt if view.record else 0) - 1)
    return out if private else public(out)


async def api_job(request: Request) -> Response:
    """``GET /api/jobs/{ref}``: the merged view (``gearstash fetch --json``)."""
    face = face_of(request)
    face.require_read(request)
    ref = parse_ref(request.path_params["ref"])
    return JSONBody(await _view_json(face, ref))


async def api_token(request: Request) -> Response:
    """``GET /t/{token}``: the view of the one job a token names (403 for a refused token),
    without :data:`~gearstash.web.events.PRIVATE_FIELDS`."""
    face = face_of(request)
    ref = face.verify_token(request.path_params["token"])
    return JSONBody(await _view_json(face, ref, private=False))


def _cursor(request: Request) -> Cursor:
    text = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    try:
        return Cursor.parse(text)
    except ConfigError as exc:
        raise HTTPProblem(400, str(exc)) from None


async def _stream(face: Face, ref: JobRef, follower: Follower) -> AsyncIterator[str]:
    """The messages of one job's stream: each version's messages sent as one write, and a
    keepalive comment after :data:`KEEPALIVE` quiet seconds (the stream stays open)."""
    yield "retry: 2000\n\n"
    updates = face.hub.follow_idle(ref, KEEPALIVE)
    try:
        async for record in updates:
            if isinstance(record, Idle):
                yield ": keepalive\n\n"
                continue
            messages = "".join(follower.step(record, time.time()))
            if messages:
                yield messages
            if follower.done:
                return
    finally:
        await updates.aclose()


def sse(face: Face, ref: JobRef, cursor: Cursor, *, private: bool = True) -> StreamingResponse:
    """The event stream of one job (see :mod:`gearstash.web.events`); ``private=False`` for a
    token's stream."""
    return StreamingResponse(
        _stream(face, ref, Follower(cursor, private=private)),
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )


async def api_job_events(request: Request) -> Response:
    """``GET /api/jobs/{ref}/events``: Server-Sent Events, resumable with ``Last-Event-ID``."""
    face = face_of(request)
    face.require_read(request)
    ref = parse_ref(request.path_params["ref"])
    return sse(face, ref, _cursor(request))


async def api_token_events(request: Request) -> Response:
    """``GET /t/{token}/events``: the event stream of the one job a token names."""
    face = face_of(request)
    ref = face.verify_token(request.path_params["token"])
    return sse(face, ref, _cursor(request), private=False)


# ---------------------------------------------------------------------------------- servers


ADMIN_TIMEOUT = 3.0


def admin_lines(server: str, commands: tuple[str, ...]) -> list[list[str]]:
    """The answers of a job server to multi-line admin commands, on one short connection."""
    conn = Connection(server, connect_timeout=ADMIN_TIMEOUT, read_timeout=ADMIN_TIMEOUT)
    try:
        return [conn.admin(command, multiline=True) for command in commands]
    finally:
        conn.close()


def server_json(server: str) -> dict[str, Any]:
    """One job server from the admin protocol: functions, workers, reachable or not."""
    try:
        status_lines, worker_lines = admin_lines(server, ("status", "workers"))
        functions = [
            {"function": f.function, "queued": f.queued, "running": f.running,
             "workers": f.workers}
            for f in parse_status(status_lines)
        ]  # fmt: skip
        workers = [
            {"fd": w.fd, "ip": w.ip, "client_id": w.client_id, "functions": list(w.functions)}
            for w in parse_workers(worker_lines)
        ]
    except Exception as exc:  # unreachable, refused, or not a job server
        return {"server": server, "reachable": False, "error": str(exc).splitlines()[0][:200]}
    return {"server": server, "reachable": True, "functions": functions, "workers": workers}


async def api_servers(request: Request) -> Response:
    """``GET /api/servers``: every configured job server's functions and workers."""
    face = face_of(request)
    face.require_read(request)

    def read() -> list[dict[str, Any]]:
        return [server_json(server) for server in face.servers]

    return JSONBody({"servers": await face.blocking(read)})


async def api_store(request: Request) -> Response:
    """``GET /api/store``: the store's (redacted) URL and capabilities."""
    face = face_of(request)
    face.require_read(request)
    return JSONBody(
        {"url": face.store.url, "capabilities": sorted(face.store.capabilities),
         "can_list": face.can_list}
    )  # fmt: skip
