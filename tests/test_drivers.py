"""The private driver APIs the stores use, each behind one adapter module, still exist in the
installed driver versions (a release that removed one fails here, naming it, rather than in a
store at run time): redis-py (``gearstash_redis.driver``), pymemcache
(``gearstash_memcache.driver``), PyMySQL (``gearstash_sql.driver``)."""

from __future__ import annotations

import importlib.metadata

import pymemcache
import pymysql
import redis
from gearstash_memcache import driver as memcache_driver
from gearstash_redis import driver as redis_driver
from gearstash_sql import driver as sql_driver
from pymemcache.client.base import Client


def _version(distribution: str) -> str:
    return importlib.metadata.version(distribution)


def test_redis_py_connections_have_what_the_adapter_reads() -> None:
    for cls in (redis.Connection, redis.UnixDomainSocketConnection, redis.SSLConnection):
        conn = cls()  # not connected: nothing is sent anywhere
        missing = redis_driver.missing_private_names(conn)
        assert not missing, (
            f"redis-py {_version('redis')} {cls.__name__} has no {missing}, which "
            "plugins/gearstash_redis/driver.py reads: update the adapter for this release"
        )
        assert not redis_driver.connected(conn)


def test_pymemcache_client_has_what_the_adapter_calls() -> None:
    missing = memcache_driver.missing_private_names()
    assert not missing, (
        f"pymemcache {pymemcache.__version__} Client has no {missing}, which "
        "plugins/gearstash_memcache/driver.py calls: update the adapter for this release"
    )


def test_pymemcache_adapter_connects_a_client(memcached: str) -> None:
    host, _, port = memcached.rpartition(":")
    client = Client((host, int(port)), connect_timeout=5, timeout=5, no_delay=True)
    try:
        assert client.sock is None
        memcache_driver.connect(client)
        sock = client.sock
        assert sock is not None and sock.gettimeout() == 5
        memcache_driver.connect(client)  # open already: the same socket
        assert client.sock is sock
        sock.sendall(b"version\r\n")
        assert sock.recv(100).startswith(b"VERSION ")
    finally:
        client.close()


def test_pymysql_connections_have_what_the_adapter_reads() -> None:
    conn = pymysql.connections.Connection(defer_connect=True)  # not connected
    missing = sql_driver.missing_pymysql_names(conn)
    assert not missing, (
        f"PyMySQL {pymysql.__version__} Connection has no {missing}, which "
        "plugins/gearstash_sql/driver.py reads: update the adapter for this release"
    )
    assert sql_driver.socket_fd(conn) is None  # no socket yet
