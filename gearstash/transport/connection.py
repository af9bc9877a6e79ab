"""Sockets to job servers: connect and read timeouts, TCP_NODELAY, reconnects.

This is the one place where ``OSError`` and socket timeouts become gearstash errors
(:class:`~gearstash.errors.ServerUnavailable`). The protocol itself lives in ``gearstash.protocol.packets``;
this module only moves its bytes.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import time
from collections.abc import Iterable

from gearstash import config
from gearstash.errors import ConfigError, ProtocolError, ServerUnavailable
from gearstash.model.records import normalize_server
from gearstash.protocol.admin import AdminReader, encode_admin
from gearstash.protocol.packets import DEFAULT_MAX_PACKET, Decoder, Packet

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 30.0
RECV_SIZE = 64 * 1024


def servers_from(values: Iterable[str] | str | None) -> list[str]:
    """Normalise server addresses; ``None`` → ``$GEARSTASH_SERVERS`` or ``127.0.0.1:4730``.

    Each value may hold several addresses separated by commas or spaces.
    """
    if values is None:
        values = config.server_list_default()
    if isinstance(values, str):
        values = [values]
    out: list[str] = []
    for value in values:
        for part in value.replace(",", " ").split():
            server = normalize_server(part)
            if server not in out:
                out.append(server)
    if not out:
        raise ConfigError("no job server given")
    return out


def split_address(server: str) -> tuple[str, int]:
    """``host:port`` (as made by ``normalize_server``) → ``(host, port)``."""
    host, _, port = server.rpartition(":")
    return host.strip("[]"), int(port)


def cannot_listen(address: str, exc: OSError, doing: str = "listen") -> ConfigError:
    """The one-line error for a listening address that cannot be bound (taken, not local, no
    permission): ``cannot listen on HOST:PORT: address already in use`` (``doing``: what was
    to be done there, such as ``serve metrics``)."""
    reason = os.strerror(exc.errno).lower() if exc.errno else _reason(exc)
    return ConfigError(f"cannot {doing} on {address}: {reason}")


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` and listening (with SO_REUSEADDR, as servers set it),
    for a server to serve on; :func:`cannot_listen`'s ConfigError when it cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        shown = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        raise cannot_listen(shown, exc) from None


class Connection:
    """One TCP connection to one job server.

    Lazy: nothing happens until :meth:`connect` (or the first send). After any error the connection
    is closed; the next :meth:`connect` makes a fresh socket and a fresh decoder. Not thread-safe: one
    owner at a time.
    """

    __slots__ = (
        "_buffer",
        "_view",
        "connect_timeout",
        "decoder",
        "max_packet",
        "read_timeout",
        "server",
        "sock",
    )

    def __init__(
        self,
        server: str,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float | None = DEFAULT_READ_TIMEOUT,
        max_packet: int = DEFAULT_MAX_PACKET,
    ) -> None:
        self.server = normalize_server(server)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_packet = max_packet
        self.sock: socket.socket | None = None
        self.decoder = Decoder(max_packet=max_packet)
        self._buffer = bytearray(RECV_SIZE)
        self._view = memoryview(self._buffer)

    def __repr__(self) -> str:
        state = "open" if self.sock is not None else "closed"
        return f"<Connection {self.server} {state}>"

    @property
    def connected(self) -> bool:
        """True while a socket is open."""
        return self.sock is not None

    def connect(self) -> None:
        """Open the socket (no-op when open). Raises ServerUnavailable."""
        if self.sock is not None:
            return
        host, port = split_address(self.server)
        try:
            sock = socket.create_connection((host, port), timeout=self.connect_timeout)
        except OSError as exc:
            raise ServerUnavailable(
                f"cannot connect to job server {self.server}: {_reason(exc)}", server=self.server
            ) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Blocking mode with kernel timeouts: a Python-level timeout would cost a poll() before
        # every send and recv on the worker's hot path. A timed-out call raises BlockingIOError.
        sock.settimeout(None)
        if self.read_timeout:
            whole = int(self.read_timeout)
            timeval = struct.pack("ll", whole, int((self.read_timeout - whole) * 1e6))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        self.sock = sock
        self.decoder = Decoder(max_packet=self.max_packet)

    def close(self) -> None:
        """Close the socket; idempotent."""
        sock, self.sock = self.sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def fileno(self) -> int:
        """The socket's file descriptor (for selectors); -1 when closed."""
        return self.sock.fileno() if self.sock is not None else -1

    def send(self, data: bytes) -> None:
        """Send all of ``data`` on the open socket. Raises ServerUnavailable (also when closed).

        Never reconnects by itself: a job's packets must not go out on a new connection that does
        not own the job.
        """
        sock = self.sock
        if sock is None:
            raise ServerUnavailable(
                f"not connected to job server {self.server}", server=self.server
            )
        try:
            sock.sendall(data)
        except OSError as exc:
            self.close()
            raise ServerUnavailable(
                f"lost job server {self.server} while sending: {_reason(exc)}", server=self.server
            ) from exc

    def read_packet(self, timeout: float | None = -1.0) -> Packet:
        """The next packet from the server.

        ``timeout``: seconds to wait; negative (the default) means the connection's read timeout,
        ``None`` waits for ever. Raises ServerUnavailable on EOF, socket error or timeout, and
        ProtocolError on a malformed packet; either way the connection is closed.
        """
        packet = self.decoder.next_packet() if self.sock is not None else None
        while packet is None:
            if timeout is not None and timeout < 0:
                self._fill()
            else:
                self._wait_readable(None if timeout is None else time.monotonic() + timeout)
                self._fill()
            packet = self.decoder.next_packet()
        return packet

    def read_available(self) -> list[Packet]:
        """Read what the socket holds now (one recv) and return every complete packet.

        For selector loops: call when the socket is readable. Raises like :meth:`read_packet`.
        """
        self._fill()
        packets: list[Packet] = []
        while (packet := self.decoder.next_packet()) is not None:
            packets.append(packet)
        return packets

    def _wait_readable(self, deadline: float | None) -> None:
        sock = self._sock()
        wait = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        try:
            ready, _, _ = select.select([sock], [], [], wait)
        except (OSError, ValueError) as exc:
            self.close()
            raise ServerUnavailable(
                f"lost job server {self.server}: {exc}", server=self.server
            ) from exc
        if not ready:
            self.close()
            raise ServerUnavailable(
                f"job server {self.server} did not answer in time", server=self.server
            )

    def _sock(self) -> socket.socket:
        sock = self.sock
        if sock is None:
            raise ServerUnavailable(
                f"not connected to job server {self.server}", server=self.server
            )
        return sock

    def _fill(self) -> None:
        """One recv into the decoder (blocking up to the kernel read timeout)."""
        count = self._recv()
        try:
            self.decoder.feed(self._view[:count])
        except ProtocolError:
            self.close()
            raise

    def _recv(self) -> int:
        """One recv into the buffer; returns the byte count (never 0). A timeout, an error or
        the server closing the connection closes it and raises ServerUnavailable."""
        sock = self._sock()
        try:
            count = sock.recv_into(self._buffer)
        except (BlockingIOError, TimeoutError) as exc:
            self.close()
            raise ServerUnavailable(
                f"job server {self.server} did not answer in time", server=self.server
            ) from exc
        except OSError as exc:
            self.close()
            raise ServerUnavailable(
                f"lost job server {self.server}: {_reason(exc)}", server=self.server
            ) from exc
        if not count:
            self.close()
            raise ServerUnavailable(
                f"job server {self.server} closed the connection", server=self.server
            )
        return count

    def admin(self, command: str, *, multiline: bool) -> list[str]:
        """Run an admin text command (``status``, ``workers``, ``show jobs``, ``version``...).

        Uses this connection's socket; do not mix with binary traffic in flight.
        """
        self.connect()
        self.send(encode_admin(command))
        reader = AdminReader(multiline)
        deadline = None if self.read_timeout is None else time.monotonic() + self.read_timeout
        while (result := reader.result()) is None:
            self._wait_readable(deadline)
            reader.feed(self._view[: self._recv()])
        return result


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return text or type(exc).__name__
