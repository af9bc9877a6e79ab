"""Pipelined memcached text protocol on pymemcache connections.

pymemcache sends one command type per round trip and never returns the CAS value of what it just
stored; the store needs both (a job's whole write — chunks, head, tombstone, index — is one
round trip, and ``gets`` right after ``cas``). So commands are built here, sent together with one
``sendall`` per server and their replies parsed in order. pymemcache's :class:`Client` still owns
each socket (connect and read timeouts, ``TCP_NODELAY``, address families, TLS if ever wanted).

Every command here gets a reply (no ``noreply``): a reply that is an error line is raised as
:class:`ReplyError`, and the connection it came on is closed, so a stream can never get out of step.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pymemcache.client.base import Client

from . import driver

STORE, NUMBER, TOUCH, DELETE, VALUES = range(5)
RECV_SIZE = 256 * 1024
KEYS_PER_GET = 100
MAX_IDLE = 32  # idle connections kept per server
SLICE_BYTES = 256 * 1024  # the most request bytes sent before reading the answers

Values = dict[bytes, tuple[bytes, int | None]]  # key -> (value, cas or None)


class ReplyError(Exception):
    """memcached answered ERROR, CLIENT_ERROR or SERVER_ERROR, or something unparseable."""


@dataclass(frozen=True, slots=True)
class Cmd:
    """One command: its full text (with the data block) and the kind of reply it gets."""

    text: bytes
    kind: int


def store(verb: bytes, key: bytes, value: bytes, exptime: int, cas: int | None = None) -> Cmd:
    """``set``/``add``/``append``/``cas``: reply STORED, NOT_STORED, EXISTS or NOT_FOUND."""
    tail = b"" if cas is None else b" %d" % cas
    return Cmd(b"%s %s 0 %d %d%s\r\n%s\r\n" % (verb, key, exptime, len(value), tail, value), STORE)


def incr(key: bytes, delta: int) -> Cmd:
    """Reply: the new value (int) or None when the key does not exist."""
    return Cmd(b"incr %s %d\r\n" % (key, delta), NUMBER)


def touch(key: bytes, exptime: int) -> Cmd:
    """Reply: True (TOUCHED) or False (NOT_FOUND)."""
    return Cmd(b"touch %s %d\r\n" % (key, exptime), TOUCH)


def delete(key: bytes) -> Cmd:
    """Reply: True (DELETED) or False (NOT_FOUND)."""
    return Cmd(b"delete %s\r\n" % key, DELETE)


def get(keys: Iterable[bytes], cas: bool = False) -> list[Cmd]:
    """``get``/``gets`` commands for ``keys`` (several commands for many keys).

    Each reply is a dict key -> (value, cas or None) of the keys found.
    """
    verb = b"gets " if cas else b"get "
    keys = list(keys)
    return [
        Cmd(verb + b" ".join(keys[i : i + KEYS_PER_GET]) + b"\r\n", VALUES)
        for i in range(0, len(keys), KEYS_PER_GET)
    ]


_STORE_REPLIES = {b"STORED", b"NOT_STORED", b"EXISTS", b"NOT_FOUND"}


class Reader:
    """Replies read from one socket: a buffer and a position in it."""

    __slots__ = ("buf", "pos", "sock")

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.buf = b""
        self.pos = 0

    def _more(self) -> None:
        chunk = self.sock.recv(RECV_SIZE)
        if not chunk:
            raise ConnectionResetError("memcached closed the connection")
        self.buf = self.buf[self.pos :] + chunk if self.pos else self.buf + chunk
        self.pos = 0

    def line(self) -> bytes:
        end = self.buf.find(b"\r\n", self.pos)
        while end < 0:
            scanned = len(self.buf) - self.pos
            self._more()
            end = self.buf.find(b"\r\n", max(0, scanned - 1))
        line = self.buf[self.pos : end]
        self.pos = end + 2
        return line

    def exact(self, size: int) -> bytes:
        if len(self.buf) - self.pos < size + 2:
            parts = [self.buf[self.pos :]]
            have = len(parts[0])
            while have < size + 2:  # a big value: gather its pieces, join once
                chunk = self.sock.recv(min(max(RECV_SIZE, size + 2 - have), 1 << 22))
                if not chunk:
                    raise ConnectionResetError("memcached closed the connection")
                parts.append(chunk)
                have += len(chunk)
            self.buf = b"".join(parts)
            self.pos = 0
        end = self.pos + size
        if self.buf[end : end + 2] != b"\r\n":
            raise ReplyError("value not followed by CRLF")
        value = self.buf[self.pos : end]
        self.pos = end + 2
        return value

    def leftover(self) -> bool:
        return self.pos < len(self.buf)

    def reply(self, kind: int) -> Any:
        if kind == VALUES:
            found: Values = {}
            while True:
                line = self.line()
                if line == b"END":
                    return found
                words = line.split()
                if len(words) not in (4, 5) or words[0] != b"VALUE":
                    raise ReplyError(_describe(line))
                value = self.exact(int(words[3]))
                found[words[1]] = (value, int(words[4]) if len(words) == 5 else None)
        line = self.line()
        if kind == STORE and line in _STORE_REPLIES:
            return line
        if kind == NUMBER:
            if line == b"NOT_FOUND":
                return None
            if line.isdigit():
                return int(line)
        if kind == TOUCH and line in (b"TOUCHED", b"NOT_FOUND"):
            return line == b"TOUCHED"
        if kind == DELETE and line in (b"DELETED", b"NOT_FOUND"):
            return line == b"DELETED"
        raise ReplyError(_describe(line))


def _describe(line: bytes) -> str:
    text = line[:200].decode("ascii", "replace")
    return f"memcached answered {text!r}"


class Pool:
    """Idle pymemcache clients (one socket each) for one server; thread-safe."""

    def __init__(self, name: str, host: str, port: int, timeout: float) -> None:
        self.name = name  # host:port, IPv6 in brackets
        self.host = host
        self.port = port
        self.timeout = timeout
        self._idle: deque[Client] = deque()
        self._lock = threading.Lock()
        self._closed = False

    def _new(self) -> Client:
        return Client(
            (self.host, self.port),
            connect_timeout=self.timeout,
            timeout=self.timeout,
            no_delay=True,  # TCP_NODELAY: a request never waits for the previous reply's ACK
        )

    def acquire(self) -> Client:
        """A connected client of this server for the caller's exclusive use."""
        with self._lock:
            client = self._idle.pop() if self._idle else None
        if client is None:
            client = self._new()
        driver.connect(client)
        return client

    def release(self, client: Client) -> None:
        with self._lock:
            if len(self._idle) < MAX_IDLE and not self._closed:
                self._idle.append(client)
                return
        client.close()

    def clear(self, close: bool = True) -> None:
        """Forget the idle connections (closing them unless ``close`` is false); for good."""
        with self._lock:
            self._closed = True
            idle, self._idle = list(self._idle), deque()
        if close:
            for client in idle:
                client.close()


class ServerFailure(Exception):
    """A failure talking to one server: ``server`` is ``host:port``, ``cause`` what went wrong."""

    def __init__(self, server: str, cause: BaseException) -> None:
        super().__init__(f"{server}: {cause}")
        self.server = server
        self.cause = cause


def _slices(commands: list[Cmd]) -> list[list[Cmd]]:
    """``commands`` cut where the request passes SLICE_BYTES (a big command is a slice alone)."""
    slices: list[list[Cmd]] = [[]]
    size = 0
    for command in commands:
        if size and size + len(command.text) > SLICE_BYTES:
            slices.append([])
            size = 0
        slices[-1].append(command)
        size += len(command.text)
    return slices


def run(pools: list[Pool], batches: dict[int, list[Cmd]]) -> dict[int, list[Any]]:
    """Send each server its commands (all servers first), then read every reply, in order.

    One round trip per server, in parallel. A request over SLICE_BYTES goes in slices, each
    answered before the next is sent: memcached stops reading while its answers wait, and a
    client still sending could never read them. Any failure closes the connections of the round
    and raises :class:`ServerFailure`.
    """
    used: list[tuple[int, Client, list[list[Cmd]]]] = []
    current = -1
    try:
        for current, commands in batches.items():
            client = pools[current].acquire()
            used.append((current, client, _slices(commands)))
        out: dict[int, list[Any]] = {index: [] for index, _, _ in used}
        rounds = max(len(slices) for _, _, slices in used)
        for n in range(rounds):
            for index, client, slices in used:
                current = index
                if n < len(slices):
                    part = slices[n]
                    client.sock.sendall(
                        part[0].text if len(part) == 1 else b"".join([c.text for c in part])
                    )
            for index, client, slices in used:
                current = index
                if n < len(slices):
                    reader = Reader(client.sock)
                    out[index] += [reader.reply(c.kind) for c in slices[n]]
                    if reader.leftover():
                        raise ReplyError("memcached sent more than was asked for")
    except Exception as exc:
        for _, client, _ in used:
            client.close()
        pool = pools[current] if current >= 0 else pools[0]
        raise ServerFailure(pool.name, exc) from exc
    for index, client, _ in used:
        pools[index].release(client)
    return out
