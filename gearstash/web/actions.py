"""What changes things: admin login/logout, forget, purge, submit, resubmit, and minting a share
link.

Every action is a POST carrying the session's CSRF token; forget, purge, submit and resubmit also
need an admin session (a credential must be configured). Submitting is off unless the app was made
with ``allow_submit=True`` (``gearstash web --allow-submit``); resubmitting a failed or lost job
whose workload was captured is always offered to an admin. Login attempts are rate limited per
client address (:class:`~gearstash.web.security.LoginThrottle`).
"""

from __future__ import annotations

import hashlib
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from gearstash.client.client import Client
from gearstash.client.tokens import DEFAULT_TTL
from gearstash.model.records import JobRef, State
from gearstash.store.contract import delete, purge
from gearstash.web.api import face_of, fetch
from gearstash.web.face import Face, HTTPProblem, parse_ref
from gearstash.web.pages import render, wants_html
from gearstash.web.security import new_csrf

MAX_WORKLOAD = 1 << 20


def _base(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


async def login(request: Request) -> Response:
    """``POST /admin/login`` (form: ``password``, ``csrf``): an admin session, then to ``/``.

    A refusal (wrong password, too many attempts, a stale form) is the API's one-line JSON
    error, or for a browser (:func:`~gearstash.web.pages.wants_html`) the login page again with
    the same status and the reason (nothing the client sent is shown)."""
    try:
        return await _login(request)
    except HTTPProblem as exc:
        if not wants_html(request):
            raise
        return render(request, "login.html", exc.status, exc.headers, error=exc.message)


async def _login(request: Request) -> Response:
    face = face_of(request)
    fields = await face.require_csrf(request)
    if face.admin is None:
        raise HTTPProblem(403, "read-only: no admin credential is configured")
    client = request.client.host if request.client else ""
    wait = face.throttle.attempt(client)
    if wait:
        raise HTTPProblem(
            429,
            f"too many login attempts from this address: try again in {wait} s",
            {"retry-after": str(wait)},
        )
    offered = fields.get("password", "")
    if not await face.blocking(face.admin.check, offered):
        raise HTTPProblem(403, "forbidden: wrong password")
    face.throttle.succeeded(client)
    request.session.clear()
    request.session["admin"] = True
    request.session["csrf"] = new_csrf()  # a new session gets a new token
    return RedirectResponse(_base(request) + "/", status_code=303)


async def logout(request: Request) -> Response:
    """``POST /admin/logout``: end the session."""
    face = face_of(request)
    await face.require_csrf(request)
    request.session.clear()
    return RedirectResponse(_base(request) + "/", status_code=303)


async def forget(request: Request) -> Response:
    """``POST /api/jobs/{ref}/forget``: delete the job's stored record (admin).

    A reference short of its server or unique (a bare handle, ``#UNIQUE``) forgets the one job
    ``GET /api/jobs/{ref}`` shows — never the other records it would match in a shared store
    (other job servers' jobs, older jobs under a reused handle). ``{"forgotten": N}``.
    """
    face = face_of(request)
    face.require_admin(request)
    await face.require_csrf(request)
    ref = await _the_job(face, parse_ref(request.path_params["ref"]))
    if ref is None:
        return JSONResponse({"forgotten": 0})
    count = await face.blocking(delete, face.store, [ref])
    return JSONResponse({"forgotten": count})


async def _the_job(face: Face, ref: JobRef) -> JobRef | None:
    """``ref`` when it is a full reference; else (a bare handle, ``#UNIQUE``) the full reference
    of the job ``GET /api/jobs/{ref}`` shows for it, or None when nobody knows one."""
    if ref.handle and ref.server and ref.unique is not None:
        return ref
    record = (await face.blocking(fetch, face, ref)).record
    if record is None:
        return None
    return JobRef(record.key.handle, record.key.server, record.key.unique)


async def purge_now(request: Request) -> Response:
    """``POST /api/purge``: remove expired records now (admin)."""
    face = face_of(request)
    face.require_admin(request)
    await face.require_csrf(request)
    return JSONResponse({"purged": await face.blocking(purge, face.store)})


async def submit(request: Request) -> Response:
    """``POST /api/submit`` (form: ``function``, ``workload``, optional ``unique``): submit a
    background job (admin, and only when submitting is enabled)."""
    face = face_of(request)
    face.require_admin(request)
    fields = await face.require_csrf(request)
    if not face.allow_submit:
        raise HTTPProblem(403, "submitting jobs is not enabled on this server")
    function = fields.get("function", "").strip()
    if not function or len(function) > 255:
        raise HTTPProblem(400, "function must be 1 to 255 characters")
    workload = fields.get("workload", "").encode()
    if len(workload) > MAX_WORKLOAD:
        raise HTTPProblem(413, f"workload larger than {MAX_WORKLOAD} bytes")
    unique = fields.get("unique") or None
    ref = await face.blocking(
        lambda: face.client.submit_background(function, workload, unique=unique)
    )
    return JSONResponse({"ref": str(ref)}, status_code=201)


RESUBMITTABLE = frozenset({State.FAILED, State.LOST})
"""The states of a job an admin may resubmit (``failed`` covers WORK_FAIL and exceptions)."""


def _submit_to(
    face: Face, server: str, function: bytes, workload: bytes, unique: bytes
) -> JobRef:
    """Submit a background job to ``server`` alone (a client of its own, closed after)."""
    with Client([server], store=face.store, connect_timeout=1.0, timeout=5.0) as client:
        return client.submit_background(function, workload, unique=unique)


def resubmit_unique(old: JobRef) -> bytes:
    """The unique a resubmit of ``old`` (a full reference) is sent with: the same for every
    resubmit of one job, so a repeated POST (a double click, a retried request) while the first
    resubmit is still queued or running is coalesced by the job server into that same job."""
    return b"resubmit-" + hashlib.sha256(str(old).encode()).hexdigest()[:40].encode()


async def resubmit(request: Request) -> Response:
    """``POST /api/jobs/{ref}/resubmit``: submit a failed or lost job again (admin).

    The same function and the captured workload, as a new background job (a new handle; the
    unique :func:`resubmit_unique`, so a repeated request while that job is queued or running
    answers the same job) on the job server that ran the job; the old record stays as it was. 201 with
    ``{"ref", "path", "resubmitted"}`` (``path``: the new job's page). 404 for an unknown job,
    409 when the job is not failed or lost, when no workload was captured, or when its job
    server is not one this app is configured with.
    """
    face = face_of(request)
    face.require_admin(request)
    await face.require_csrf(request)
    ref = parse_ref(request.path_params["ref"])
    view = await face.blocking(fetch, face, ref)
    record = view.record
    if record is None:
        raise HTTPProblem(404, "no such job in the store")
    if view.state not in RESUBMITTABLE:
        raise HTTPProblem(
            409, f"only a failed or lost job can be resubmitted; this one is {view.state.value}"
        )
    if record.workload is None:
        raise HTTPProblem(
            409,
            "no workload was captured for this job (its worker ran without --capture-workload, "
            "or the workload was over --workload-max-bytes)",
        )
    if not record.function:
        raise HTTPProblem(409, "the job's function is not known")
    server = record.key.server
    if server not in face.servers:
        raise HTTPProblem(409, f"the job's server {server} is not one this app submits to")
    old = JobRef(record.key.handle, server, record.key.unique)
    new = await face.blocking(
        _submit_to, face, server, record.function, record.workload, resubmit_unique(old)
    )
    return JSONResponse(
        {
            "ref": str(new),
            "path": f"{_base(request)}/jobs/{quote(str(new), safe='')}",
            "resubmitted": str(old),
        },
        status_code=201,
    )


async def share(request: Request) -> Response:
    """``POST /api/jobs/{ref}/share``: a token link to the job's public page (anyone who may
    read the job; tokens must be configured). The token names the job's full reference (for a
    bare handle: the job shown for it), so a later job under the same handle is never shown
    through it; 404 for a job nobody knows."""
    face = face_of(request)
    face.require_read(request)
    await face.require_csrf(request)
    if face.signer is None:
        raise HTTPProblem(404, "job tokens are not configured on this server")
    ref = await _the_job(face, parse_ref(request.path_params["ref"]))
    if ref is None:
        raise HTTPProblem(404, "no stored record of this job (yet): no job to name in a token")
    token = face.signer.sign(ref, ttl=DEFAULT_TTL)
    return JSONResponse(
        {"token": token, "path": f"{_base(request)}/t/{token}/view", "ttl": DEFAULT_TTL}
    )
