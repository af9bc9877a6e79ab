"""The one place where database and driver exceptions become :class:`~gearstash.errors.StoreError`.

Messages name the store by its redacted URL, carry the driver's own first line (without SQL
parameters: engines are created with ``hide_parameters=True``) and never a password.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from gearstash.errors import GearstashError, StoreError, StoreRejected

MAX_DETAIL = 400

# Errors after which the whole transaction is simply run again.
_PG_RETRY_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock
# 1213 deadlock; 1062 duplicate key: a concurrent writer created the same job row first
_MYSQL_RETRY_CODES = frozenset({1213, 1062})


def is_retryable(exc: BaseException, family: str) -> bool:
    """True for a transient conflict with another writer (deadlock, lost race to insert a row).

    ``exc`` is a DBAPI exception, or SQLAlchemy's wrapper of one.
    """
    orig: BaseException | None = exc
    if isinstance(exc, sa.exc.DBAPIError):
        if exc.connection_invalidated:
            return False
        orig = exc.orig
    if orig is None:
        return False
    if family == "postgresql":
        return getattr(orig, "sqlstate", None) in _PG_RETRY_SQLSTATES
    if family == "mysql":
        args: tuple[Any, ...] = orig.args
        return bool(args) and args[0] in _MYSQL_RETRY_CODES
    return False


def is_disconnect(exc: BaseException) -> bool:
    """True when SQLAlchemy saw the connection die (it refreshed the pool; a new try may work)."""
    return isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated


def to_store_error(
    exc: BaseException, name: str, doing: str, passwords: Sequence[str] = ()
) -> GearstashError:
    """A StoreError for ``exc`` saying what failed (``doing``) in store ``name``.

    ``passwords`` (the store's and its read replica's) never show in the message. A
    :class:`~gearstash.errors.GearstashError` (already mapped) is returned unchanged.
    """
    if isinstance(exc, GearstashError):
        return exc
    if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None:
        detail = f"{type(exc.orig).__name__}: {exc.orig}"
    elif isinstance(exc, sa.exc.SQLAlchemyError):
        detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    elif isinstance(exc, OSError):
        detail = f"{type(exc).__name__}: {exc.strerror or exc}"
        if exc.filename:
            detail += f" ({exc.filename})"
    else:
        detail = f"{type(exc).__name__}: {exc}"
    detail = " ".join(detail.split())  # one line
    for password in sorted(passwords, key=len, reverse=True):
        if len(password) >= 3:  # shorter would mangle the message; drivers never echo it anyway
            detail = detail.replace(password, "***")
    if len(detail) > MAX_DETAIL:
        detail = detail[: MAX_DETAIL - 3] + "..."
    if _is_data_error(exc):  # the database refuses these values: retrying cannot help
        return StoreRejected(f"{name}: {doing} refused: {detail}")
    return StoreError(f"{name}: {doing} failed: {detail}")


def _is_data_error(exc: BaseException) -> bool:
    """True for a DBAPI ``DataError`` (bad value: NUL in PostgreSQL text, out of range...),
    raw or wrapped by SQLAlchemy; every DBAPI driver names the class so (PEP 249)."""
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else exc
    if isinstance(orig, UnicodeError):  # text that cannot be encoded (a lone surrogate)
        return True
    return any(cls.__name__ == "DataError" for cls in type(orig).__mro__)
