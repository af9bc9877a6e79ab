"""The one place where redis-py and socket exceptions become :class:`~gearstash.errors.StoreError`.

Messages name the store by its redacted URL, say what failed, carry redis-py's own first line and
never a password (the ones the URL holds are replaced by ``***`` should a driver ever echo them).
"""

from __future__ import annotations

from collections.abc import Iterable

from gearstash.errors import GearstashError, StoreDenied, StoreError

MAX_DETAIL = 400


def to_store_error(
    exc: BaseException, name: str, doing: str, secrets: Iterable[str] = ()
) -> GearstashError:
    """A StoreError for ``exc`` saying what failed (``doing``) in store ``name`` (a redacted URL).

    A :class:`~gearstash.errors.GearstashError` (already mapped) is returned unchanged.
    """
    if isinstance(exc, GearstashError):
        return exc
    secrets = list(secrets)
    if _refused_login(exc):
        if secrets:
            said = _scrubbed(str(exc).splitlines()[0] if str(exc) else "", secrets)
            return StoreDenied(
                f"{name}: {doing} failed: authentication failed: the store refused the user "
                f"name or password ({said})"
            )
        return StoreDenied(
            f"{name}: {doing} failed: authentication required: the store needs a password "
            "(put it in the URL, redis://:PASSWORD@host/0, from $GEARSTASH_STORE or the config "
            "file)"
        )
    if isinstance(exc, OSError) and exc.strerror:
        detail = f"{type(exc).__name__}: {exc.strerror}"
    else:
        text = str(exc)
        detail = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
    detail = _scrubbed(" ".join(detail.split()), secrets)  # one line
    if len(detail) > MAX_DETAIL:
        detail = detail[: MAX_DETAIL - 3] + "..."
    return StoreError(f"{name}: {doing} failed: {detail}")


def _refused_login(exc: BaseException) -> bool:
    """redis-py's AuthenticationError, or a NOAUTH reply: the server wants (other) credentials."""
    text = str(exc)
    return (
        type(exc).__name__ == "AuthenticationError"
        or text.startswith("NOAUTH")
        or "Authentication required" in text
    )


def _scrubbed(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if len(secret) >= 3:  # shorter would mangle the message; redis-py never echoes it anyway
            text = text.replace(secret, "***")
    return text
