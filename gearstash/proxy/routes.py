"""A route of the proxy: where it listens, which job server it relays to, how that server is
named in the records, and the upstream's health (backoff while it is unreachable)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from gearstash.errors import ConfigError
from gearstash.model.records import normalize_server
from gearstash.transport.connection import split_address

log = logging.getLogger("gearstash.proxy")

MAX_BACKOFF = 5.0
STILL_DOWN_EVERY = 60.0


@dataclass
class Route:
    """Connections accepted on ``listen`` are relayed to ``upstream``; their jobs are recorded
    under ``server_name`` (the upstream server as clients name it)."""

    listen: str
    upstream: str
    server_name: str
    backoff: float = 0.0
    retry_at: float = 0.0
    down_since: float = 0.0
    said_at: float = 0.0
    upstream_host: str = field(init=False)
    upstream_port: int = field(init=False)

    def __post_init__(self) -> None:
        self.upstream_host, self.upstream_port = split_address(self.upstream)

    @classmethod
    def parse(cls, text: str, server_name: str | None = None) -> Route:
        """``LISTEN=UPSTREAM`` (each ``host[:port]``); ``server_name`` defaults to UPSTREAM."""
        listen, sep, upstream = text.partition("=")
        if not sep or not listen.strip() or not upstream.strip():
            raise ConfigError(f"bad route {text!r}: expected LISTEN=UPSTREAM (host:port each)")
        up = normalize_server(upstream)
        return cls(normalize_server(listen), up, normalize_server(server_name or up))

    def wait_for_retry(self) -> float:
        """Seconds a new connection waits before trying the upstream (0 while it is up)."""
        return max(self.retry_at - time.monotonic(), 0.0)

    def failed(self, exc: BaseException) -> None:
        """A connection to the upstream failed: back off (0.1 s doubling to 5 s)."""
        now = time.monotonic()
        reason = str(exc) or type(exc).__name__
        if not self.backoff:
            self.down_since = self.said_at = now
            log.warning(
                "upstream %s unreachable (%s): closing worker connections on %s; retrying with "
                "backoff",
                self.upstream,
                reason,
                self.listen,
            )
        elif now - self.said_at >= STILL_DOWN_EVERY:
            self.said_at = now
            log.warning(
                "upstream %s still unreachable after %.0f s (%s)",
                self.upstream,
                now - self.down_since,
                reason,
            )
        self.backoff = min(self.backoff * 2, MAX_BACKOFF) if self.backoff else 0.1
        self.retry_at = now + self.backoff

    def succeeded(self) -> None:
        """A connection to the upstream was made."""
        if self.backoff:
            log.warning(
                "upstream %s back after %.1f s", self.upstream, time.monotonic() - self.down_since
            )
        self.backoff = 0.0
        self.retry_at = 0.0
