"""What changes things: admin login/logout, forget, purge, submit, and minting a share link.

Every action is a POST carrying the session's CSRF token; forget, purge and submit also need an
admin session (a credential must be configured). Submitting is off unless the app was made with
``allow_submit=True`` (``gearstash web --allow-submit``).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from gearstash.client.tokens import DEFAULT_TTL
from gearstash.store.contract import delete, purge
from gearstash.web.api import face_of
from gearstash.web.face import HTTPProblem, parse_ref
from gearstash.web.security import new_csrf

MAX_WORKLOAD = 1 << 20


def _base(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


async def login(request: Request) -> Response:
    """``POST /admin/login`` (form: ``password``, ``csrf``): an admin session, then to ``/``."""
    face = face_of(request)
    fields = await face.require_csrf(request)
    if face.admin is None:
        raise HTTPProblem(403, "read-only: no admin credential is configured")
    offered = fields.get("password", "")
    if not await face.blocking(face.admin.check, offered):
        raise HTTPProblem(403, "forbidden: wrong password")
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
    """``POST /api/jobs/{ref}/forget``: delete the job's stored records (admin)."""
    face = face_of(request)
    face.require_admin(request)
    await face.require_csrf(request)
    ref = parse_ref(request.path_params["ref"])
    count = await face.blocking(delete, face.store, [ref])
    return JSONResponse({"forgotten": count})


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


async def share(request: Request) -> Response:
    """``POST /api/jobs/{ref}/share``: a token link to the job's public page (anyone who may
    read the job; tokens must be configured)."""
    face = face_of(request)
    face.require_read(request)
    await face.require_csrf(request)
    ref = parse_ref(request.path_params["ref"])
    if face.signer is None:
        raise HTTPProblem(404, "job tokens are not configured on this server")
    token = face.signer.sign(ref, ttl=DEFAULT_TTL)
    return JSONResponse(
        {"token": token, "path": f"{_base(request)}/t/{token}/view", "ttl": DEFAULT_TTL}
    )
