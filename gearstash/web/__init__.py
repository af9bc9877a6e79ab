"""The web face of gearstash: one ASGI application (Starlette) with a JSON API, Server-Sent
Events, token routes, HTML pages and Prometheus metrics. Needs the ``web`` extra
(``pip install gearstash[web]``).

:func:`create_app` (in :mod:`gearstash.web.app`) makes the app; ``gearstash web`` serves it with
uvicorn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.applications import Starlette

__all__ = ["create_app"]


def create_app(**options: Any) -> Starlette:
    """:func:`gearstash.web.app.create_app` (imported on first call)."""
    from gearstash.web.app import create_app as make

    return make(**options)
