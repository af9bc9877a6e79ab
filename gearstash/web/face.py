"""The state one web app shares between its routes (:class:`Face`) and the checks every route makes.

Routes reach it as ``request.app.state.face``. Blocking work (the store, the job servers) runs on
the face's own pool of worker threads through :meth:`Face.blocking` (a plain
``concurrent.futures`` pool: a third of the cost of a hop through anyio's limiter per request);
the number of such threads is capped (:data:`THREADS`).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse

from gearstash.client.client import Client
from gearstash.client.tokens import TokenSigner
from gearstash.errors import BadToken, ConfigError
from gearstash.model.records import JobRef
from gearstash.store.contract import Store, can_list
from gearstash.web.codec import json_bytes
from gearstash.web.hub import Hub
from gearstash.web.security import (
    AdminCredential,
    LoginThrottle,
    csrf_matches,
    is_loopback,
    new_csrf,
)

THREADS = 16
"""Worker threads the app uses at most for store and job-server calls (:meth:`Face.blocking`)."""

ANYIO_THREADS = 4
"""Worker threads Starlette itself may use (anyio's limiter: static files)."""

MAX_FORM = 2 << 20
"""The largest urlencoded form body accepted (bytes)."""

MAX_QUERY = 8192
"""The longest query string accepted (bytes); a longer one gets 414."""

_T = TypeVar("_T")


class HTTPProblem(Exception):
    """An HTTP error with a one-line message, answered as ``{"error": message}`` (with
    ``headers``, such as ``Retry-After``, when given)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def problem(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """``{"error": message}`` with ``status`` (the message on one line)."""
    return JSONBody({"error": " ".join(message.split())}, status_code=status, headers=headers)


@dataclass
class Face:
    """What the routes of one app share (see :func:`gearstash.web.create_app`)."""

    store: Store
    client: Client
    hub: Hub
    servers: list[str]
    signer: TokenSigner | None = None
    admin: AdminCredential | None = None
    public: bool = False
    allow_submit: bool = False
    owns: list[Callable[[], None]] = field(default_factory=list)
    throttle: LoginThrottle = field(default_factory=LoginThrottle)
    """Admin login attempts per client address (429 beyond its limit)."""
    pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(THREADS, thread_name_prefix="gearstash-web")
    )

    @property
    def can_list(self) -> bool:
        """True when the store can list jobs (else pages offer lookup by handle)."""
        return can_list(self.store)

    async def blocking(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn(*args)`` on one of the face's worker threads (:data:`THREADS` at most)."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def close(self) -> None:
        """Let the worker threads end (calls in progress finish on their own)."""
        self.pool.shutdown(wait=False)

    # ------------------------------------------------------------------ who may do what

    def is_admin(self, request: Request) -> bool:
        """True when the request's session logged in with the admin credential."""
        return self.admin is not None and request.session.get("admin") is True

    def may_read(self, request: Request) -> bool:
        """Whether this client may list jobs and read them by reference: loopback clients
        without a credential, logged-in admins, or anyone when the app is ``public``."""
        if self.public or self.is_admin(request):
            return True
        client = request.client
        return self.admin is None and is_loopback(client.host if client else None)

    def require_read(self, request: Request) -> None:
        """HTTPProblem 403 unless :meth:`may_read`; the message says what would help (log in
        when a credential is configured, else ask from this host or start with --public)."""
        if self.may_read(request):
            return
        if self.admin is not None:
            raise HTTPProblem(403, "forbidden: log in as admin first (at /login)")
        raise HTTPProblem(
            403,
            "forbidden: only this host may read jobs (no admin credential is configured; "
            "`gearstash web --public` lets every client read)",
        )

    def require_admin(self, request: Request) -> None:
        """HTTPProblem 403 unless the session is an admin's (and a credential is configured)."""
        if self.admin is None:
            raise HTTPProblem(403, "read-only: no admin credential is configured")
        if not self.is_admin(request):
            raise HTTPProblem(403, "forbidden: log in as admin first")

    def csrf(self, request: Request) -> str:
        """The session's CSRF token (made on first use)."""
        token = request.session.get("csrf")
        if not isinstance(token, str):
            token = request.session["csrf"] = new_csrf()
        return token

    async def require_csrf(self, request: Request) -> dict[str, str]:
        """The POSTed urlencoded form (``{}`` for another body); HTTPProblem 403 without the session's
        CSRF token in the form field ``csrf`` or the header ``X-CSRF-Token``."""
        fields: dict[str, str] = {}
        kind = request.headers.get("content-type", "")
        if kind.startswith("application/x-www-form-urlencoded"):
            body = bytearray()
            async for part in request.stream():
                body += part
                if len(body) > MAX_FORM:
                    raise HTTPProblem(413, f"form larger than {MAX_FORM} bytes")
            try:
                pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
            except (UnicodeDecodeError, ValueError):
                raise HTTPProblem(400, "malformed form") from None
            fields = dict(pairs)
        offered = request.headers.get("x-csrf-token") or fields.get("csrf")
        if not csrf_matches(request.session.get("csrf"), offered):
            raise HTTPProblem(403, "forbidden: missing or wrong CSRF token")
        return fields

    def verify_token(self, token: str) -> JobRef:
        """The job a token names; HTTPProblem 404 when tokens are off, 403 (no detail) when the
        token is refused."""
        if self.signer is None:
            raise HTTPProblem(404, "job tokens are not configured on this server")
        try:
            return self.signer.verify(token)
        except BadToken:
            raise HTTPProblem(403, "forbidden") from None


def parse_ref(text: str) -> JobRef:
    """A job reference from a URL path; HTTPProblem 400 when malformed."""
    if len(text) > 2048:
        raise HTTPProblem(400, "job reference too long")
    try:
        return _parsed(text)
    except (ConfigError, ValueError) as exc:
        raise HTTPProblem(400, f"bad job reference: {exc}") from None


@functools.lru_cache(maxsize=1024)
def _parsed(text: str) -> JobRef:
    """``JobRef.parse`` of the references asked for lately (a page polls the same ones; a
    JobRef is immutable, so one object may answer many requests)."""
    return JobRef.parse(text)


class JSONBody(JSONResponse):
    """A JSON response encoded by :func:`gearstash.web.codec.json_bytes` (orjson when there)."""

    def render(self, content: Any) -> bytes:
        """The body: compact UTF-8 JSON."""
        return json_bytes(content)
