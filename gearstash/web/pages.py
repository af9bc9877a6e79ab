"""The HTML pages: server-rendered shells (Jinja2, autoescaped) that ``static/app.js`` fills from
the JSON API and the event streams. No job value is put into a page by the server except through
autoescaping; the script writes job values with ``textContent`` only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from gearstash.web.api import face_of
from gearstash.web.face import parse_ref

TEMPLATES = Path(__file__).parent / "templates"
_env = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def render(
    request: Request,
    name: str,
    status: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> Response:
    """Render template ``name`` with what every page needs (base path, CSRF token, session)."""
    face = face_of(request)
    base = str(request.scope.get("root_path", "")).rstrip("/")
    page = _env.get_template(name).render(
        base=base,
        csrf=face.csrf(request),
        is_admin=face.is_admin(request),
        admin_configured=face.admin is not None,
        may_read=face.may_read(request),
        can_list=face.can_list,
        tokens=face.signer is not None,
        allow_submit=face.allow_submit,
        **context,
    )
    return HTMLResponse(page, status_code=status, headers=headers)


def wants_html(request: Request) -> bool:
    """True for a browser's request (``Accept`` names ``text/html``): a form it posted gets a
    page back, not the API's JSON."""
    return "text/html" in request.headers.get("accept", "")


def _login_first(request: Request) -> Response | None:
    """For a page this client may not read: a 303 to the login page when an admin credential is
    configured (a browser that is not logged in), else :meth:`Face.require_read`'s 403; None
    when the client may read."""
    face = face_of(request)
    if face.may_read(request):
        return None
    if face.admin is not None:
        base = str(request.scope.get("root_path", "")).rstrip("/")
        return RedirectResponse(base + "/login", status_code=303)
    face.require_read(request)
    return None  # pragma: no cover - require_read raised


async def overview(request: Request) -> Response:
    """``GET /``: counts by state, throughput, job servers."""
    if (sent := _login_first(request)) is not None:
        return sent
    return render(request, "overview.html", page="overview")


async def jobs(request: Request) -> Response:
    """``GET /jobs``: the filterable, live job list (or lookup by handle)."""
    if (sent := _login_first(request)) is not None:
        return sent
    return render(request, "jobs.html", page="jobs")


async def job(request: Request) -> Response:
    """``GET /jobs/{ref}``: one job, live."""
    if (sent := _login_first(request)) is not None:
        return sent
    ref = parse_ref(request.path_params["ref"])
    return render(request, "job.html", page="job", ref=str(ref), token=None)


async def token_view(request: Request) -> Response:
    """``GET /t/{token}/view``: the public page of the one job a token names."""
    face = face_of(request)
    face.verify_token(request.path_params["token"])
    return render(request, "job.html", page="job", ref=None, token=request.path_params["token"])


async def login_page(request: Request) -> Response:
    """``GET /login``: the admin login form."""
    return render(request, "login.html", page="login")
