"""The one place the memcached store touches pymemcache's private API.

Private API used: ``pymemcache.client.base.Client._connect()``, which opens the client's socket
with the options the client was made with (``connect_timeout``, then ``timeout``,
``no_delay``, the address family from ``getaddrinfo``, TLS when given) and sets the public
``Client.sock``. pymemcache has no public "connect now": its own commands connect lazily, and the
store sends its own pipelined commands on ``Client.sock`` instead (see
:mod:`gearstash_memcache.protocol`). Checked against pymemcache 4.0.0, the newest release on PyPI
when this was written (3.x has the same method). ``tests/test_drivers.py`` checks on the
installed version that every name in :data:`PRIVATE_NAMES` is still there, and fails naming it
if a release removed it; that is why the dependency is not capped at ``<5``.
"""

from __future__ import annotations

from pymemcache.client.base import Client

PRIVATE_NAMES = ("_connect",)
"""The private attributes of ``pymemcache.client.base.Client`` this module uses."""


def connect(client: Client) -> None:
    """Open ``client``'s socket (``client.sock``) unless it is open already."""
    if client.sock is None:
        client._connect()


def missing_private_names() -> list[str]:
    """The names of :data:`PRIVATE_NAMES` that the installed pymemcache's ``Client`` lacks."""
    return [name for name in PRIVATE_NAMES if not callable(getattr(Client, name, None))]
