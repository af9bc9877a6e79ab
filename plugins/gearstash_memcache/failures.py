"""The one place where memcached failures become :class:`~gearstash.errors.StoreError`.

Messages name the store by its redacted URL, say what failed, on which server and why, in one line.
"""

from __future__ import annotations

import socket

from pymemcache.exceptions import MemcacheError

from gearstash.errors import StoreError

from . import protocol
from .protocol import ServerFailure

MAX_DETAIL = 400
# Everything a memcached conversation can raise; mapped to StoreError by to_store_error.
MAPPED = (StoreError, ServerFailure, OSError, MemcacheError, protocol.ReplyError, ValueError)


def to_store_error(exc: BaseException, name: str, timeout: float, doing: str) -> StoreError:
    """The StoreError for ``exc``: the redacted URL ``name``, what failed, where and why.

    ``timeout`` is the store's, for the message of a timeout. A StoreError is returned unchanged.
    """
    if isinstance(exc, StoreError):
        return exc
    where = ""
    if isinstance(exc, ServerFailure):
        where = f" (memcached {exc.server})"
        exc = exc.cause
    if isinstance(exc, TimeoutError | socket.timeout):
        detail = f"no answer within {timeout:g} s"
    elif isinstance(exc, ConnectionRefusedError):
        detail = "connection refused (is memcached running there?)"
    elif isinstance(exc, OSError):
        detail = f"{type(exc).__name__}: {exc.strerror or exc}"
    elif isinstance(exc, protocol.ReplyError):
        detail = str(exc)
    elif isinstance(exc, ValueError):
        detail = f"unreadable value ({exc})"
    else:
        detail = f"{type(exc).__name__}: {exc}"
    detail = " ".join(detail.split())
    if len(detail) > MAX_DETAIL:
        detail = detail[: MAX_DETAIL - 3] + "..."
    return StoreError(f"{name}: {doing} failed{where}: {detail}")
