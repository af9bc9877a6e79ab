"""Connections to a Redis Cluster, and one round trip of commands spread over its masters.

redis-py's cluster client (:class:`redis.cluster.RedisCluster`) finds the cluster from the
nodes it is given, keeps the slot → master map and a connection pool per node, and refreshes the
map after a failover. Its own pipelines send a command again after a broken connection, which
could apply a write twice; so :meth:`ClusterConnections.roundtrip` does the sending itself: the
commands, each for the slot of its keys, are grouped by the master serving that slot, written to
every master first and then read (the masters work in parallel), and answered in order.

What is sent again (up to :data:`ROUNDS` rounds, a short pause between them; the slot map is
taken from a ``MOVED`` answer, and read again after a connection failed), and what is not:

* a command the master answered ``MOVED`` (its slot moved: a failover, a resharding), ``ASK``
  (its slot is moving: sent again to the map's master, not followed with ``ASKING``) or
  ``NOSCRIPT`` (a new master lacks the script: it is loaded first) — it did not run;
* every command of a master that could not be reached — none was sent;
* with ``retry``, any command whose connection broke after it was sent (reads);
* without ``retry`` such commands are *in doubt*: :class:`InDoubt` names them (and the ones
  that were surely applied), so the caller can find out later which happened; so does a write
  part of which was applied when the rest could not be sent.

``CLUSTERDOWN``, ``TRYAGAIN`` and other error answers are returned as ResponseError objects.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    AskError,
    AuthenticationError,
    MovedError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.retry import Retry

from gearstash.errors import ConfigError

from .connection import DEFAULT_TIMEOUT, Command
from .failures import to_store_error


def _packer() -> Callable[[tuple[Any, ...]], bytes] | None:
    """hiredis's ``pack_command`` (in the redis extra: C, where redis-py packs in Python)."""
    try:
        from hiredis import pack_command
    except ImportError:  # pragma: no cover
        return None
    return pack_command


_pack = _packer()

SlotCommand = tuple[int, Command]
"""A command and the hash slot of its keys."""

ROUNDS = 4
"""Rounds of sending (the first, and after refreshes of the slot map) before giving up."""
PAUSE = 0.05
"""Seconds before the second round (twice that before the third, and so on)."""


def _answer(conn: Any) -> Any:
    """The next answer on ``conn``; an error answer as a ResponseError object (not raised)."""
    try:
        return conn.read_response()
    except ResponseError as exc:
        return exc


class InDoubt(Exception):
    """Some commands of a round trip may or may not have run (their connection broke after they
    were sent). ``doubtful``: their indexes; ``applied``: the indexes answered without error
    in the same round trip; ``cause``: the StoreError to raise."""

    def __init__(self, cause: Exception, doubtful: set[int], applied: set[int]) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.doubtful = doubtful
        self.applied = applied


def _refusal(exc: BaseException) -> BaseException | None:
    """The AuthenticationError (or NOAUTH answer) behind a RedisClusterException, if any: redis-py
    wraps a node's refusal in "cannot be connected"."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, AuthenticationError) or str(seen).startswith("NOAUTH"):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class ClusterConnections:
    """The cluster of one store (``startup``: some of its nodes; ``kwargs`` for redis-py).

    ``name`` (the redacted URL) and ``secrets`` make error messages. ``scripts`` (sha → source)
    are loaded on a master that answers NOSCRIPT. Connects when made: raises StoreError when no
    node answers, ConfigError for options redis-py does not take. Thread-safe; redis-py's pools
    reconnect after a fork.
    """

    def __init__(
        self,
        startup: Sequence[tuple[str, int]],
        kwargs: dict[str, Any],
        name: str,
        secrets: list[str],
        scripts: dict[bytes, bytes],
    ) -> None:
        self.name = name
        self._secrets = secrets
        self._scripts = scripts
        self._refresh_lock = threading.Lock()
        self._replicas: dict[str, int] | None = None  # master name -> its replicas (ROLE)
        self._stale = False  # a WAIT came back short: read the slot map after this round trip
        options = dict(kwargs)
        options.setdefault("socket_connect_timeout", DEFAULT_TIMEOUT)
        options.setdefault("socket_timeout", DEFAULT_TIMEOUT)
        node_class: Any = ClusterNode  # redis-py's cluster module is untyped
        try:
            self.cluster: Any = RedisCluster(
                startup_nodes=[node_class(host, port) for host, port in startup],
                retry=Retry(NoBackoff(), 0),
                client_name="gearstash",
                **options,
            )
        except TypeError as exc:
            raise ConfigError(f"{name}: {exc}") from None
        except (RedisError, RedisClusterException, OSError) as exc:
            raise self._error(_refusal(exc) or exc, "opening the store") from exc

    def _error(self, exc: BaseException, doing: str) -> Exception:
        return to_store_error(exc, self.name, doing, self._secrets)

    def close(self) -> None:
        """Close every connection. Idempotent."""
        self.cluster.close()

    def refresh(self) -> None:
        """Read the slot map again (after a failover); errors are left for the next send."""
        with self._refresh_lock:
            self._replicas = None
            with contextlib.suppress(RedisError, RedisClusterException, OSError):
                self.cluster.nodes_manager.initialize()

    def replicas_of(self, node: Any) -> int:
        """How many replicas the master ``node`` has connected (``ROLE``, asked once and again
        after a refresh or a short ``WAIT``; 0 when it does not answer)."""
        replicas = self._replicas
        if replicas is None:
            replicas = self._replicas = {}
        count = replicas.get(node.name)
        if count is None:
            try:
                role = self.cluster.get_redis_connection(node).execute_command("ROLE")
                count = len(role[2]) if role and role[0] in (b"master", "master") else 0
            except (RedisError, OSError, IndexError, TypeError):
                count = 0
            replicas[node.name] = count
        return count

    def pubsub(self, slot: int) -> redis.client.PubSub:
        """A redis-py PubSub on a connection of its own to the master of ``slot`` (any node hears
        every announcement; the slot map is read again when that master does not answer)."""
        for attempt in (1, 2):
            try:
                node = self.cluster.nodes_manager.get_node_from_slot(slot)
                client = self.cluster.get_redis_connection(node)
                client.ping()
                return redis.client.PubSub(client.connection_pool)
            except (RedisError, RedisClusterException, OSError) as exc:
                self.refresh()
                if attempt == 2:
                    raise self._error(exc, "watch") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def roundtrip(
        self,
        commands: Sequence[SlotCommand],
        doing: str,
        retry: bool,
        after: Callable[[Any], list[Command]] | None = None,
    ) -> list[Any]:
        """Send ``commands`` (each to the master of its slot) in one round trip per round; their
        replies in order (a ResponseError object for an error answer).

        ``after(node)``: commands sent after the ones for ``node`` on the same connection (their
        answers are read and dropped; a broken connection there puts the node's commands in
        doubt). Raises StoreError, or :class:`InDoubt` (only without ``retry``).
        """
        replies: list[Any] = [None] * len(commands)
        pending = list(range(len(commands)))
        applied: set[int] = set()
        doubtful: set[int] = set()
        failure: BaseException | None = None
        broken: BaseException | None = None
        for round_ in range(ROUNDS):
            if round_:
                time.sleep(PAUSE * round_)  # a failover's news takes a moment to reach every node
                if broken is not None:
                    self.refresh()
            again, broken = self._round(commands, pending, replies, retry, after, doubtful)
            for i in pending:
                if (
                    i not in again
                    and i not in doubtful
                    and not isinstance(replies[i], ResponseError)
                ):
                    applied.add(i)
            if broken is not None:
                failure = broken
            pending = again
            if not pending:
                break
        if self._stale:
            self._stale = False
            self.refresh()
        if doubtful:
            cause = self._error(failure or RedisError("connection lost"), doing)
            raise InDoubt(cause, doubtful, {i for i in applied if i not in doubtful})
        if pending:
            cause = self._error(failure or RedisError("the cluster did not settle"), doing)
            if applied and not retry:
                raise InDoubt(cause, set(), applied)
            raise cause
        return replies

    def _round(
        self,
        commands: Sequence[SlotCommand],
        pending: list[int],
        replies: list[Any],
        retry: bool,
        after: Callable[[Any], list[Command]] | None,
        doubtful: set[int],
    ) -> tuple[list[int], BaseException | None]:
        """One round: send the pending commands, read every answer. Returns the indexes to send
        again and the last connection failure (None if none)."""
        manager = self.cluster.nodes_manager
        groups: dict[str, tuple[Any, list[int]]] = {}
        again: list[int] = []
        failure: BaseException | None = None
        unknown = {i for i in pending if isinstance(replies[i], NoScriptError)}
        for i in pending:
            replies[i] = None  # an answer of an earlier round (MOVED…) is not this round's
            try:
                node = manager.get_node_from_slot(commands[i][0])
            except (RedisError, RedisClusterException) as exc:
                failure = exc
                again.append(i)
                continue
            groups.setdefault(node.name, (node, []))[1].append(i)
        sent: list[tuple[Any, Any, list[int], int, list[Command]]] = []
        for node, indexes in groups.values():
            client = self.cluster.get_redis_connection(node)
            pool = client.connection_pool
            loads = self._loads([i for i in indexes if i in unknown], commands)
            trailer = after(node) if after is not None else []
            batch = [*loads, *(commands[i][1] for i in indexes), *trailer]
            try:
                conn: Any = pool.get_connection()
            except (RedisError, OSError) as exc:
                failure = exc
                again += indexes
                continue
            try:
                packed = (
                    conn.pack_commands(batch)  # pragma: no cover - hiredis is in the extra
                    if _pack is None
                    else [b"".join([_pack(c) for c in batch])]
                )
                conn.send_packed_command(packed, check_health=False)
            except (RedisError, OSError) as exc:  # nothing reached the master
                conn.disconnect()
                pool.release(conn)
                failure = exc
                again += indexes
                continue
            sent.append((pool, conn, indexes, len(loads), trailer))
        for pool, conn, indexes, loaded, trailing in sent:
            try:
                for _ in range(loaded):
                    _answer(conn)  # SCRIPT LOAD: an error shows in the command's own answer
                for i in indexes:
                    replies[i] = _answer(conn)
                for command in trailing:
                    answer = _answer(conn)  # WAIT: how many replicas have the writes
                    if command[0] == b"WAIT" and isinstance(answer, int) and answer < command[1]:
                        self._replicas = None  # a replica is gone? ask the masters again
                        self._stale = True
            except (RedisError, OSError) as exc:
                # The master may have run them, and (WAIT not answered) maybe not its replica.
                conn.disconnect()
                failure = exc
                if retry:
                    again += indexes
                else:
                    doubtful.update(indexes)
            finally:
                pool.release(conn)
        for i in list(pending):
            reply = replies[i]
            if isinstance(reply, MovedError):  # the slot's master now (a failover, a resharding)
                self._replicas = None
                with contextlib.suppress(RedisError, RedisClusterException, KeyError):
                    manager.move_slot(reply)
            redirected = isinstance(reply, (MovedError, AskError, NoScriptError))
            if redirected and i not in again and i not in doubtful:
                again.append(i)
        again.sort()
        return again, failure

    def _loads(self, indexes: list[int], commands: Sequence[SlotCommand]) -> list[Command]:
        """SCRIPT LOADs for the scripts of ``indexes`` (a master answered NOSCRIPT to them)."""
        shas = {commands[i][1][1] for i in indexes if commands[i][1][0] == b"EVALSHA"}
        return [(b"SCRIPT", b"LOAD", self._scripts[sha]) for sha in shas if sha in self._scripts]
