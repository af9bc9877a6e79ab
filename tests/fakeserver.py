"""A scripted fake Gearman job server, for what a real gearmand cannot be made to do.

It listens on a free loopback port and runs a *script* (a function of one
:class:`FakeConnection`) in a thread for every connection it accepts. The script reads what the
worker or client sends -- ``\\0REQ`` packets decoded with ``Decoder(request=True)`` -- and answers
whatever the test wants: well-formed packets, garbage bytes, a truncated packet, a close, or
nothing at all (a stall).

Every packet received on every connection is recorded (``server.received()``), so a test can
assert what reached the "server" and what did not. Every blocking call has a deadline, and
:meth:`FakeServer.stop` ends every thread, so a broken peer cannot hang the test run. An exception
escaping a script (other than the peer closing, or the server stopping) is kept and re-raised by
:meth:`FakeServer.check` / on leaving the ``with`` block, so scripts may simply ``assert``.

Typical use::

    def script(conn):
        conn.expect(PacketType.GRAB_JOB_UNIQ)
        conn.reply(PacketType.JOB_ASSIGN_UNIQ, b"H:fake:1", b"echo", b"u1", b"hello")
        conn.expect(PacketType.WORK_COMPLETE)
        conn.idle()   # behave like an empty gearmand until the peer goes away

    with FakeServer(script) as fake:
        ...  # point a Worker or Client at fake.address
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType

from gearstash.errors import ProtocolError
from gearstash.protocol.packets import Decoder, Packet, PacketType, encode_response

DEFAULT_TIMEOUT = 5.0
_POLL = 0.05

Script = Callable[["FakeConnection"], None]


class PeerClosed(Exception):
    """The worker/client closed its end of the connection."""


class ServerStopping(Exception):
    """The fake server is being stopped: scripts end quietly."""


class FakeConnection:
    """One accepted connection, handed to the script."""

    def __init__(self, server: FakeServer, sock: socket.socket, index: int) -> None:
        self.server = server
        self.sock = sock
        self.index = index  # 0 for the first connection the server accepted, 1 for the next...
        self.decoder = Decoder(request=True)
        self.packets: list[Packet] = []
        self.peer_closed = threading.Event()
        self.finished = threading.Event()  # the script returned (or raised)

    def __repr__(self) -> str:
        return f"<FakeConnection #{self.index} packets={len(self.packets)}>"

    # ------------------------------------------------------------------ reading

    def read(self, timeout: float = DEFAULT_TIMEOUT) -> Packet:
        """The next packet from the peer. Raises PeerClosed, ServerStopping or TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            packet = self.decoder.next_packet()
            if packet is not None:
                self.packets.append(packet)
                self.server._record(self.index, packet)
                return packet
            self._fill(deadline)

    def _fill(self, deadline: float) -> None:
        while True:
            if self.server.stopping.is_set():
                raise ServerStopping()
            if self.peer_closed.is_set():
                raise PeerClosed()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"fake server connection #{self.index}: nothing received")
            self.sock.settimeout(min(remaining, _POLL))
            try:
                chunk = self.sock.recv(256 * 1024)
            except TimeoutError:
                continue
            except OSError as exc:
                if self.server.stopping.is_set():
                    raise ServerStopping() from exc
                self.peer_closed.set()
                raise PeerClosed() from exc
            if not chunk:
                self.peer_closed.set()
                raise PeerClosed()
            self.decoder.feed(chunk)
            return

    def expect(self, *kinds: PacketType, timeout: float = DEFAULT_TIMEOUT) -> Packet:
        """Read (and record) packets until one of ``kinds`` arrives; return it."""
        deadline = time.monotonic() + timeout
        while True:
            packet = self.read(max(deadline - time.monotonic(), 0.001))
            if packet.kind in kinds:
                return packet

    def wait_closed(self, timeout: float = DEFAULT_TIMEOUT) -> bool:
        """Read (and record) until the peer closes; True if it did within ``timeout``."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.read(max(deadline - time.monotonic(), 0.001))
        except PeerClosed:
            return True
        except (TimeoutError, ProtocolError):
            return False
        return False

    # ------------------------------------------------------------------ writing

    def send(self, data: bytes) -> None:
        """Send raw bytes (anything at all). A peer that is gone raises PeerClosed."""
        try:
            self.sock.sendall(data)
        except OSError as exc:
            if self.server.stopping.is_set():
                raise ServerStopping() from exc
            self.peer_closed.set()
            raise PeerClosed() from exc

    def reply(self, kind: PacketType, *args: bytes) -> None:
        """Send one well-formed ``\\0RES`` packet."""
        self.send(encode_response(kind, *args))

    def close(self) -> None:
        """Close the connection from the server side."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()

    # ------------------------------------------------------------------ canned behaviours

    def stall(self, timeout: float = 30.0) -> None:
        """Accept and record everything, answer nothing, until the peer closes or the server stops."""
        deadline = time.monotonic() + timeout
        with contextlib.suppress(PeerClosed, TimeoutError):
            while time.monotonic() < deadline:
                self.read(max(deadline - time.monotonic(), 0.001))

    def handshake(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Answer a client's OPTION_REQ ``exceptions`` with OPTION_RES (what gearstash clients send first)."""
        option = self.expect(PacketType.OPTION_REQ, timeout=timeout)
        self.reply(PacketType.OPTION_RES, option.args[0])

    def answer(self, packet: Packet) -> bool:
        """Answer ``packet`` the way an empty gearmand would; False if it has no canned answer."""
        kind = packet.kind
        if kind in (PacketType.GRAB_JOB_UNIQ, PacketType.GRAB_JOB, PacketType.GRAB_JOB_ALL):
            self.reply(PacketType.NO_JOB)
        elif kind == PacketType.OPTION_REQ:
            self.reply(PacketType.OPTION_RES, packet.args[0])
        elif kind == PacketType.ECHO_REQ:
            self.reply(PacketType.ECHO_RES, packet.args[0])
        elif kind == PacketType.GET_STATUS:
            self.reply(PacketType.STATUS_RES, packet.args[0], b"0", b"0", b"0", b"0")
        elif kind == PacketType.GET_STATUS_UNIQUE:
            self.reply(PacketType.STATUS_RES_UNIQUE, packet.args[0], b"0", b"0", b"0", b"0", b"0")
        elif kind in (
            PacketType.CAN_DO,
            PacketType.CAN_DO_TIMEOUT,
            PacketType.CANT_DO,
            PacketType.SET_CLIENT_ID,
            PacketType.PRE_SLEEP,
            PacketType.RESET_ABILITIES,
            PacketType.WORK_DATA,
            PacketType.WORK_WARNING,
            PacketType.WORK_STATUS,
            PacketType.WORK_COMPLETE,
            PacketType.WORK_FAIL,
            PacketType.WORK_EXCEPTION,
        ):
            pass
        else:
            return False
        return True

    def idle(self, timeout: float = 30.0) -> None:
        """Behave like a gearmand with no jobs (NO_JOB to every grab...) until the peer goes away."""
        deadline = time.monotonic() + timeout
        with contextlib.suppress(PeerClosed, TimeoutError):
            while time.monotonic() < deadline:
                packet = self.read(max(deadline - time.monotonic(), 0.001))
                if not self.answer(packet):
                    self.reply(PacketType.ERROR, b"INVALID_COMMAND", b"fake server: unexpected")


class FakeServer:
    """A threaded TCP server on 127.0.0.1 that runs ``script(conn)`` for every connection.

    ``script`` may also be a list of scripts: connection *i* runs ``scripts[i]`` (the last one is
    reused for any further connection).
    """

    def __init__(self, script: Script | list[Script]) -> None:
        self.scripts = script if isinstance(script, list) else [script]
        if not self.scripts:
            raise ValueError("at least one script")
        self.stopping = threading.Event()
        self.connections: list[FakeConnection] = []
        self.errors: list[BaseException] = []
        self._packets: list[tuple[int, Packet]] = []
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(_POLL)
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(
            target=self._accept_loop, name="fake-gearmand", daemon=True
        )
        self._acceptor.start()

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, the form gearstash takes (and normalises to)."""
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if exc_type is None:
            self.check()

    # ------------------------------------------------------------------ threads

    def _accept_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._cond:
                index = len(self.connections)
                conn = FakeConnection(self, sock, index)
                self.connections.append(conn)
                self._cond.notify_all()
            script = self.scripts[min(index, len(self.scripts) - 1)]
            thread = threading.Thread(
                target=self._run, args=(script, conn), name=f"fake-conn-{index}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _run(self, script: Script, conn: FakeConnection) -> None:
        try:
            script(conn)
        except (PeerClosed, ServerStopping):
            pass
        except BaseException as exc:  # re-raised in the test thread by check()
            if not self.stopping.is_set():
                with self._cond:
                    self.errors.append(exc)
        finally:
            conn.close()
            conn.finished.set()
            with self._cond:
                self._cond.notify_all()

    def _record(self, index: int, packet: Packet) -> None:
        with self._cond:
            self._packets.append((index, packet))
            self._cond.notify_all()

    # ------------------------------------------------------------------ for tests

    def received(self, kind: PacketType | None = None) -> list[tuple[int, Packet]]:
        """``(connection index, packet)`` for every packet received so far (of ``kind``)."""
        with self._cond:
            return [(i, p) for i, p in self._packets if kind is None or p.kind == kind]

    def wait_for(self, predicate: Callable[[], object], timeout: float = DEFAULT_TIMEOUT) -> bool:
        """Wait until ``predicate()`` is true (re-checked on every packet and connection)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, _POLL))
        return True

    def wait_packet(self, kind: PacketType, timeout: float = DEFAULT_TIMEOUT) -> tuple[int, Packet]:
        """The first received packet of ``kind``, waiting for it; AssertionError if none came."""
        if not self.wait_for(lambda: self.received(kind), timeout):
            seen = [(i, p.kind.name) for i, p in self.received()]
            raise AssertionError(f"fake server never received {kind.name}; got {seen}")
        return self.received(kind)[0]

    def check(self) -> None:
        """Re-raise the first exception a script raised."""
        if self.errors:
            raise self.errors[0]

    def stop(self, timeout: float = 5.0) -> None:
        """Close everything and join every thread (bounded)."""
        self.stopping.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        for conn in list(self.connections):
            conn.close()
        deadline = time.monotonic() + timeout
        self._acceptor.join(timeout)
        for thread in list(self._threads):
            thread.join(max(deadline - time.monotonic(), 0.01))
