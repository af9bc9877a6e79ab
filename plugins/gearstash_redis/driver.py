"""The one place the Redis store touches redis-py's private API.

Private API used: ``AbstractConnection._sock`` (redis-py's connection classes keep the connected
socket there, ``None`` while not connected; there is no public accessor). Checked against
redis-py 8.2.0 (the version installed when this was written; the attribute has had this name
and meaning since redis-py 2.x). ``tests/test_drivers.py`` checks on the installed version that
every name in :data:`PRIVATE_NAMES` is still there, and fails naming it if a release removed it.

Why: before reusing an idle connection the store asks whether the server closed it meanwhile (a
Redis restart). For a plain TCP or unix socket that is one ``poll(0)`` on a poller kept with the
connection, about 2.4 µs; the public ``Connection.can_read(timeout=0)`` answers the same through
the parser in about 7 µs (timeit, redis-py 8.2.0 with hiredis, loopback Redis). TLS sockets go
through ``can_read`` (a readable TLS socket may only hold a session ticket).
"""

from __future__ import annotations

import select
import socket
from typing import Any

from redis.exceptions import RedisError

PRIVATE_NAMES = ("_sock",)
"""The private attributes of a redis-py connection object this module reads."""

_POLLER = "_gearstash_poll"  # (socket, poller registered for it), kept on the connection object


def connected(conn: Any) -> bool:
    """True when the redis-py connection ``conn`` holds an open socket."""
    return conn._sock is not None


def stale(conn: Any) -> bool:
    """True when the connected, idle ``conn`` has data or EOF waiting: the server closed it.

    Call it only on a connection for which :func:`connected` is true.
    """
    sock = conn._sock
    if type(sock) is socket.socket:  # TCP or unix: one poll() on a poller kept with it
        watched = getattr(conn, _POLLER, None)
        if watched is None or watched[0] is not sock:
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            watched = (sock, poller)
            setattr(conn, _POLLER, watched)
        return bool(watched[1].poll(0))
    try:  # TLS: a readable socket may hold a session ticket; ask redis-py's parser
        return bool(conn.can_read())
    except (RedisError, OSError):
        return True


def missing_private_names(conn: Any) -> list[str]:
    """The names of :data:`PRIVATE_NAMES` that the redis-py connection ``conn`` lacks."""
    return [name for name in PRIVATE_NAMES if not hasattr(conn, name)]
