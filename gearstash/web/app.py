"""``create_app``: the one ASGI application (Starlette) behind ``gearstash web``.

Standalone: ``gearstash web --listen 127.0.0.1:8470``. Mounted in another ASGI app under a prefix::

    from starlette.applications import Starlette
    from starlette.routing import Mount
    from gearstash.web import create_app

    app = Starlette(routes=[Mount("/jobs-ui", app=create_app(store="redis://127.0.0.1/0"))])

Every link, script and API call of the pages is relative to the mount point (the ASGI
``root_path``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gearstash import config
from gearstash.client.client import Client
from gearstash.client.tokens import TokenSigner
from gearstash.errors import GearstashError, ServerError, ServerUnavailable, StoreError
from gearstash.spine.manager import open_store
from gearstash.store.contract import Store
from gearstash.transport.connection import servers_from
from gearstash.web import actions, api, metrics, openapi, pages
from gearstash.web.face import ANYIO_THREADS, MAX_QUERY, Face, HTTPProblem, problem
from gearstash.web.hub import Hub
from gearstash.web.security import (
    SECURITY_HEADERS,
    AdminCredential,
    LoginThrottle,
    session_key,
)

log = logging.getLogger("gearstash.web")
STATIC = Path(__file__).parent / "static"


class Guard:
    """Pure ASGI middleware: refuses over-long query strings (414, JSON) before anything parses
    them, and adds the security headers (CSP, nosniff, no-referrer…) to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._headers = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if len(scope.get("query_string", b"")) > MAX_QUERY:
            response = problem(414, f"query string longer than {MAX_QUERY} bytes")
            await self._send_with_headers(response, scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in self._headers if k not in names]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, sending)

    async def _send_with_headers(
        self, response: Response, scope: Scope, receive: Receive, send: Send
    ) -> None:
        for name, value in self._headers:
            response.headers[name.decode()] = value.decode()
        await response(scope, receive, send)


async def _problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPProblem)
    return problem(exc.status, exc.message, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    text = {404: "not found", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
    return problem(exc.status_code, text)


async def _gearstash_error(request: Request, exc: Exception) -> Response:
    """503 when the store or a job server cannot be reached, 502 when a job server refused the
    request (an ERROR packet), else 400 (bad input)."""
    if isinstance(exc, StoreError | ServerUnavailable):
        status = 503
    elif isinstance(exc, ServerError):
        status = 502
    else:
        status = 400
    return problem(status, str(exc))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error answering %s %s", request.method, request.url.path)
    return JSONResponse({"error": "internal error (logged on the server)"}, status_code=500)


def routes() -> list[Route | Mount]:
    """Every route of the app (the order matters: ``/events`` before the catch-all ref)."""
    return [
        # the routes asked most first (Starlette tries them in order); no earlier route matches
        # a path a later one is meant for
        Route("/api/jobs/{ref:path}/events", api.api_job_events),
        Route("/api/jobs/{ref:path}/forget", actions.forget, methods=["POST"]),
        Route("/api/jobs/{ref:path}/resubmit", actions.resubmit, methods=["POST"]),
        Route("/api/jobs/{ref:path}/share", actions.share, methods=["POST"]),
        Route("/api/jobs/{ref:path}", api.api_job),
        Route("/api/jobs", api.api_jobs),
        Route("/api/counts", api.api_counts),
        Route("/api/throughput", api.api_throughput),
        Route("/api/servers", api.api_servers),
        Route("/api/store", api.api_store),
        Route("/api/purge", actions.purge_now, methods=["POST"]),
        Route("/api/submit", actions.submit, methods=["POST"]),
        Route("/api/openapi.json", openapi.schema_route),
        Route("/", pages.overview, name="overview"),
        Route("/jobs", pages.jobs, name="jobs"),
        Route("/jobs/{ref:path}", pages.job, name="job"),
        Route("/login", pages.login_page, name="login"),
        Route("/admin/login", actions.login, methods=["POST"]),
        Route("/admin/logout", actions.logout, methods=["POST"]),
        Route("/t/{token}/events", api.api_token_events),
        Route("/t/{token}/view", pages.token_view),
        Route("/t/{token}", api.api_token),
        Route("/metrics", metrics.metrics_route),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]


def create_app(
    *,
    store: Store | str | None = None,
    servers: Sequence[str] | str | None = None,
    token_secret: str | None = None,
    admin: str | None = None,
    public: bool = False,
    allow_submit: bool = False,
    config_file: str | os.PathLike[str] | None = None,
    hub_interval: float = 0.05,
    login_limit: int = 5,
    login_window: float = 300.0,
) -> Starlette:
    """The web face as an ASGI app.

    What is not given comes from the configuration (:mod:`gearstash.config`: environment, then
    the config file): the store, the job servers, the token secret (token routes answer 404
    without one) and the admin credential ``admin`` (a password hash or a secret; without one
    the app is read-only). Never pass secrets on a command line: ``gearstash web`` reads them
    from the configuration only. ``public``: let non-loopback clients list and read jobs without
    logging in. A store given as an object is not closed with the app; one given as a URL is,
    and is never created by the app: a store that is not there is a StoreError (a mistyped SQLite
    path does not leave an empty database behind).
    ``login_limit`` / ``login_window``: admin login attempts a client address may make that do
    not succeed within that many seconds; more get 429 with ``Retry-After``
    (:class:`~gearstash.web.security.LoginThrottle`). Raises ConfigError for a malformed
    credential or setting.
    """
    settings = config.resolve(config=config_file)
    credential_text = admin if admin is not None else settings.web_admin
    credential = AdminCredential(credential_text) if credential_text else None
    secret = token_secret if token_secret is not None else settings.token_secret
    signer = TokenSigner(secret) if secret else None
    chosen = servers if servers is not None else settings.servers
    server_list = servers_from(chosen)
    owns_store = not isinstance(store, Store)
    opened: Store = (
        open_store(store if isinstance(store, str) else settings.store_url, create=False)
        if owns_store
        else store  # type: ignore[assignment]
    )
    client = Client(server_list, store=opened, connect_timeout=1.0, timeout=5.0)
    face = Face(
        store=opened,
        client=client,
        hub=Hub(opened, interval=hub_interval),
        servers=server_list,
        signer=signer,
        admin=credential,
        public=public,
        allow_submit=allow_submit,
        throttle=LoginThrottle(login_limit, login_window),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = ANYIO_THREADS
        try:
            yield
        finally:
            await face.hub.close()
            face.close()
            client.close()
            if owns_store:
                opened.close()

    handlers: dict[Any, Any] = {
        HTTPProblem: _problem,
        HTTPException: _http_error,
        GearstashError: _gearstash_error,
        Exception: _unexpected,
    }
    app = Starlette(
        routes=routes(),
        middleware=[
            Middleware(Guard),
            Middleware(
                SessionMiddleware,
                secret_key=session_key(credential),
                session_cookie="gearstash_session",
                same_site="strict",
                max_age=12 * 3600,
            ),
        ],
        exception_handlers=handlers,
        lifespan=lifespan,
    )
    app.state.face = face
    return app
