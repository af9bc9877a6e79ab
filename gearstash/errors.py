"""The gearstash exception tree.

Every error gearstash raises on purpose is a :class:`GearstashError`. Socket and timeout failures
are mapped to :class:`ServerUnavailable` in exactly one place (``gearstash.transport.connection``);
store drivers map their own failures to :class:`StoreError`. Nothing here shadows a builtin name.
"""

from __future__ import annotations


class GearstashError(Exception):
    """Root of every gearstash error."""


class ProtocolError(GearstashError):
    """The Gearman protocol was broken.

    ``side`` says who broke it: ``"server"`` (bytes we received) or ``"local"`` (what we were asked to
    send, for example a unique longer than 63 bytes). The connection that saw a server-side protocol
    error is dropped and re-made.
    """

    def __init__(self, message: str, *, side: str = "server") -> None:
        super().__init__(message)
        self.side = side


class ServerUnavailable(GearstashError):
    """A job server could not be reached, or stopped answering within the timeout."""

    def __init__(self, message: str, *, server: str = "") -> None:
        super().__init__(message)
        self.server = server


class ServerError(GearstashError):
    """The job server answered with an ERROR packet (``code`` is its string code, e.g. ``JOB_NOT_FOUND``).

    ``Client.submit_background_many`` raises its subclass
    :class:`~gearstash.client.submitting.PartlySubmitted`, which says what was submitted before.
    """

    def __init__(self, code: str, text: str, *, server: str = "") -> None:
        super().__init__(f"{server or 'job server'} answered ERROR {code}: {text}")
        self.code = code
        self.text = text
        self.server = server


class NotSupported(ServerError):
    """The job server does not know the request: an older or other implementation that speaks
    only part of the protocol (no ``GET_STATUS_UNIQUE``, no low-priority submits…). The message
    says what it cannot do."""

    def __init__(self, code: str, text: str, *, server: str = "", request: str = "") -> None:
        super().__init__(code, text, server=server)
        reason = (text.strip().splitlines() or [""])[0]
        self.args = (
            f"job server {server or '?'} cannot do {request or 'this request'}: it speaks an "
            f"older or other protocol (it answered {code}: {reason})",
        )
        self.request = request


class StoreError(GearstashError):
    """A store could not be reached, or refused a read or a write.

    The message never contains a password: stores describe themselves with a redacted URL.
    """


class StoreRejected(StoreError):
    """The store is up but refuses this write for good (a value over its size limit, say):
    retrying or spooling it cannot help. Nothing of the refused batch was written."""


REFUSED_FOR_GOOD: tuple[type[Exception], ...] = (StoreRejected, ValueError, TypeError)
"""What a store write raises when retrying it cannot help: :class:`StoreRejected`, or a
ValueError/TypeError escaping a store that could not encode the batch (a bug in that store)."""


class StoreDenied(StoreError):
    """The store is up but refuses these credentials (a missing or wrong password, a user
    without permission): a configuration error, not an outage — a worker does not wait for it."""


class ConfigError(GearstashError):
    """Bad configuration: an unknown store scheme, a malformed server address or URL."""


class BadCursor(GearstashError, ValueError):
    """A listing cursor the store did not hand out (altered, or from another store or kind)."""


class JobNotFound(GearstashError, KeyError):
    """Neither the job server nor the store knows the job asked for."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "job not found"


class JobFailed(GearstashError):
    """Raise inside a job function to fail the job (WORK_FAIL) without an exception traceback.

    On the client side, a foreground job that failed raises this too; ``record`` then holds what
    the worker said.
    """


class WaitTimeout(GearstashError):
    """``Client.wait`` gave up before the job reached a final state."""


class BadToken(GearstashError):
    """A job token was refused (see :mod:`gearstash.client.tokens`).

    ``reason`` is short and safe to show to whoever sent the token: ``"malformed"``,
    ``"bad signature"`` or ``"expired"``. It never carries the expected signature or the secret.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"job token refused: {reason}")
        self.reason = reason
