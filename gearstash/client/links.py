"""A client's links to its job servers: connections, placement and live status.

:class:`ServerLinks` holds one connection per server (each used under its own lock), places a
unique on its home server, and asks the servers for live status — by handle or by unique, one
pipelined round trip per server for many jobs. :class:`gearstash.client.client.Client` builds on it.
"""

from __future__ import annotations

import contextlib
import threading
import zlib
from collections.abc import Iterable, Iterator, Sequence

from gearstash import config
from gearstash.errors import (
    ConfigError,
    NotSupported,
    ProtocolError,
    ServerError,
    ServerUnavailable,
)
from gearstash.model.records import JobRecord, JobRef
from gearstash.model.views import Status
from gearstash.protocol.packets import (
    MAX_UNIQUE,
    ErrorReply,
    Packet,
    PacketType,
    StatusReply,
    UniqueStatusReply,
    check_unique,
    encode_request,
    encode_requests,
    handle_problem,
)
from gearstash.transport.connection import Connection, servers_from

WORK_PACKETS = frozenset(
    {
        PacketType.WORK_DATA,
        PacketType.WORK_WARNING,
        PacketType.WORK_STATUS,
        PacketType.WORK_COMPLETE,
        PacketType.WORK_FAIL,
        PacketType.WORK_EXCEPTION,
    }
)
STATUS_BATCH = 1000
"""Requests sent in one pipelined batch (statuses, submissions)."""

RefLike = JobRef | str | bytes

_ASKED = {
    PacketType.JOB_CREATED: "this submission (high- and low-priority background submissions "
    "are newer than the original protocol: submit with priority normal)",
    PacketType.STATUS_RES_UNIQUE: "GET_STATUS_UNIQUE (live status by unique)",
    PacketType.STATUS_RES: "GET_STATUS",
    PacketType.OPTION_RES: "OPTION_REQ",
}
"""What a request awaiting each answer asks for, to say what a server cannot do."""


def as_ref(ref: RefLike) -> JobRef:
    """A :class:`JobRef` from a reference, its string form or a bare handle."""
    return ref if isinstance(ref, JobRef) else JobRef.parse(ref)


class ServerLinks:
    """Connections to ``servers`` (``host[:port]``; default from the configuration) with
    ``connect_timeout`` and ``timeout`` (per answer) in seconds. Thread-safe."""

    def __init__(
        self,
        servers: Iterable[str] | str | None,
        connect_timeout: float,
        timeout: float,
    ) -> None:
        self.servers = servers_from(servers if servers is not None else config.servers())
        self._conns = {
            s: Connection(s, connect_timeout=connect_timeout, read_timeout=timeout)
            for s in self.servers
        }
        self._locks = {s: threading.Lock() for s in self.servers}
        self.timeout = timeout
        self.down_reasons: dict[str, str] = {}
        """Why each server found down by :meth:`statuses` was (its latest connection error)."""
        self.no_unique_status: set[str] = set()
        """Servers that proved they have no GET_STATUS_UNIQUE (asked by unique no more)."""

    def close(self) -> None:
        """Close every connection (they are made again on demand)."""
        for conn in self._conns.values():
            conn.close()

    # ------------------------------------------------------------ connections

    @contextlib.contextmanager
    def locked(self, server: str) -> Iterator[Connection]:
        """Hold ``server``'s lock and yield its connection, made on demand (ServerUnavailable
        when it cannot be). Any exception inside the block closes the connection, since unread
        replies may be left on it (it is made again on the next use)."""
        with self._locks[server]:
            conn = self._conn(server)
            try:
                yield conn
            except BaseException:
                conn.close()  # unread replies would answer the next call
                raise

    def _conn(self, server: str) -> Connection:
        """The open connection to ``server`` (caller holds its lock)."""
        conn = self._conns[server]
        if not conn.connected:
            conn.connect()
            conn.send(encode_request(PacketType.OPTION_REQ, b"exceptions"))
            reply = self.expect(conn, PacketType.OPTION_RES)
            if reply.args[0] != b"exceptions":
                conn.close()
                raise ProtocolError(f"job server {server} answered OPTION_RES {reply.args[0]!r}")
        return conn

    def expect(self, conn: Connection, kind: PacketType, packet: Packet | None = None) -> Packet:
        """Read until a ``kind`` packet (``packet``: one read already), skipping stray WORK_*
        packets; ERROR raises ServerError (:class:`~gearstash.errors.NotSupported` when the
        server does not know the request)."""
        while True:
            if packet is None:
                packet = conn.read_packet()
            if packet.kind == kind:
                return packet
            if packet.kind == PacketType.ERROR:
                err = ErrorReply.from_packet(packet)
                if err.unknown_command:
                    raise NotSupported(
                        err.code, err.text, server=conn.server, request=_ASKED.get(kind, "")
                    )
                raise ServerError(err.code, err.text, server=conn.server)
            if packet.kind in WORK_PACKETS or packet.kind == PacketType.NOOP:
                packet = None
                continue
            conn.close()
            raise ProtocolError(
                f"job server {conn.server} sent {packet.kind.name} where {kind.name} was expected"
            )

    def placement(self, unique: bytes) -> list[str]:
        """Servers in the order a job with ``unique`` is tried: its hashed home first."""
        n = len(self.servers)
        start = zlib.crc32(unique) % n
        return [self.servers[(start + i) % n] for i in range(n)]

    # ------------------------------------------------------------ status

    def _status_batch(self, server: str, handles: Sequence[bytes]) -> dict[bytes, Status]:
        """GET_STATUS for many handles on one server, pipelined. Raises ServerUnavailable.

        Replies with the same numbers share one (immutable) :class:`Status`: most jobs asked
        for at once are queued, or finished and forgotten, alike."""
        out: dict[bytes, Status] = {}
        seen: dict[tuple[bytes, ...], Status] = {}  # a reply's fields after the handle
        status_res = PacketType.STATUS_RES
        with self._locks[server]:
            conn = self._conn(server)
            read = conn.read_packet
            try:
                for start in range(0, len(handles), STATUS_BATCH):
                    batch = handles[start : start + STATUS_BATCH]
                    conn.send(encode_requests(PacketType.GET_STATUS, batch))
                    for _ in batch:
                        packet = read()
                        if packet.kind is not status_res:
                            packet = self.expect(conn, status_res, packet)
                        handle, *numbers = packet.args
                        fields = tuple(numbers)
                        status = seen.get(fields)
                        if status is None:
                            reply = StatusReply.from_packet(packet)  # checks the numbers
                            status = seen[fields] = Status(
                                reply.known,
                                reply.running,
                                reply.numerator,
                                reply.denominator,
                                server,
                            )
                        out[handle] = status
            except BaseException:
                conn.close()  # unread replies of this batch would answer the next call
                raise
        return out

    def _unique_status_batch(self, server: str, uniques: Sequence[bytes]) -> dict[bytes, Status]:
        """GET_STATUS_UNIQUE for many uniques on one server, pipelined. Raises ServerUnavailable."""
        out: dict[bytes, Status] = {}
        with self._locks[server]:
            conn = self._conn(server)
            try:
                for start in range(0, len(uniques), STATUS_BATCH):
                    batch = uniques[start : start + STATUS_BATCH]
                    conn.send(encode_requests(PacketType.GET_STATUS_UNIQUE, batch))
                    for _ in batch:
                        r = UniqueStatusReply.from_packet(
                            self.expect(conn, PacketType.STATUS_RES_UNIQUE)
                        )
                        out[r.unique] = Status(
                            r.known,
                            r.running,
                            r.numerator,
                            r.denominator,
                            server,
                            r.waiting_clients,
                        )
            except BaseException:
                conn.close()
                raise
        return out

    def unique_statuses(
        self, refs: Sequence[JobRef], down: Iterable[str] = ()
    ) -> dict[JobRef, Status]:
        """Live status by unique for each reference (on its server, else the first that knows
        it); references no server answered for are left out. Servers in ``down`` (found
        unreachable a moment ago) are not asked again."""
        skip = set(down)
        wanted: dict[str, list[bytes]] = {}
        for ref in refs:
            if ref.unique is None or len(ref.unique) > MAX_UNIQUE:
                continue
            for server in [ref.server] if ref.server else self.servers:
                if server in self._conns and server not in skip:
                    wanted.setdefault(server, []).append(ref.unique)
        answers: dict[tuple[str, bytes], Status] = {}
        for server, uniques in wanted.items():
            if server in self.no_unique_status:
                continue
            try:
                batch = self._unique_status_batch(server, list(dict.fromkeys(uniques)))
            except ServerUnavailable:
                continue
            except NotSupported:
                self.no_unique_status.add(server)  # the store alone answers by unique there
                continue
            for unique, status in batch.items():
                answers[(server, unique)] = status
        out: dict[JobRef, Status] = {}
        for ref in refs:
            got = [
                answers[(s, ref.unique or b"")]
                for s in ([ref.server] if ref.server else self.servers)
                if (s, ref.unique or b"") in answers
            ]
            if got:
                out[ref] = next((a for a in got if a.known), got[0])
        return out

    def statuses(self, refs: Sequence[JobRef]) -> tuple[dict[tuple[str, bytes], Status], set[str]]:
        """Live status by handle for ``refs`` (not the by-unique ones): one pipelined round trip
        per server. Returns the answers by ``(server, handle)`` and the servers found down.
        ConfigError for a reference to a server this client does not use. A handle no server
        can hold (see :func:`~gearstash.protocol.packets.handle_problem`) is never sent: it reads
        unknown, and the other handles get their answers."""
        wanted: dict[str, list[bytes]] = {s: [] for s in self.servers}
        found: dict[tuple[str, bytes], Status] = {}
        for ref in refs:
            if ref.by_unique:
                continue
            for server in [ref.server] if ref.server else self.servers:
                if server not in wanted:
                    raise ConfigError(
                        f"job {ref} belongs to server {server}, which this client does not use "
                        f"(servers: {', '.join(self.servers)})"
                    )
                if handle_problem(ref.handle) is None:
                    wanted[server].append(ref.handle)
                else:  # never sent: no server holds such a job, and gearmand would stall
                    found[(server, ref.handle)] = Status(False, False, 0, 0, server)
        down: set[str] = set()
        for server, handles in wanted.items():
            if not handles:
                continue
            try:
                for handle, status in self._status_batch(
                    server, list(dict.fromkeys(handles))
                ).items():
                    found[(server, handle)] = status
            except ServerUnavailable as exc:
                down.add(server)
                self.down_reasons[server] = str(exc)
        return found, down

    def status(self, ref: RefLike) -> Status:
        """The live status of one job on the server that owns it (every server for a bare handle).

        Raises ServerUnavailable when the owning server (or, for a bare handle, every server) is
        unreachable.
        """
        job = as_ref(ref)
        if job.by_unique:
            return self.status_unique(job.unique or b"")
        found, down = self.statuses([job])
        servers = [job.server] if job.server else self.servers
        answers = [found[(s, job.handle)] for s in servers if (s, job.handle) in found]
        if not answers:
            reasons = [self.down_reasons.get(s, s) for s in sorted(down)]
            raise ServerUnavailable(f"no job server answered for {job}: {'; '.join(reasons)}")
        return next((a for a in answers if a.known), answers[0])

    def status_unique(self, unique: bytes | str) -> Status:
        """Live status by unique (GET_STATUS_UNIQUE), asking the unique's home server first.

        Raises ServerUnavailable when no server answers, NotSupported when the servers that
        answer have no GET_STATUS_UNIQUE (an older or other job server).
        """
        uniq = check_unique(unique.encode() if isinstance(unique, str) else bytes(unique))
        first: Status | None = None
        refused: NotSupported | None = None
        for server in self.placement(uniq):
            if server in self.no_unique_status:
                continue
            try:
                with self._locks[server]:
                    conn = self._conn(server)
                    try:
                        conn.send(encode_request(PacketType.GET_STATUS_UNIQUE, uniq))
                        r = UniqueStatusReply.from_packet(
                            self.expect(conn, PacketType.STATUS_RES_UNIQUE)
                        )
                    except ProtocolError:
                        conn.close()  # a malformed reply: start afresh on the next call
                        raise
            except ServerUnavailable:
                continue
            except NotSupported as exc:
                self.no_unique_status.add(server)
                refused = exc
                continue
            status = Status(
                r.known, r.running, r.numerator, r.denominator, server, r.waiting_clients
            )
            if status.known:
                return status
            first = first or status
        if first is None:
            if refused is not None or self.no_unique_status:
                raise refused or NotSupported(
                    "",
                    "",
                    server=", ".join(sorted(self.no_unique_status)),
                    request=_ASKED[PacketType.STATUS_RES_UNIQUE],
                )
            raise ServerUnavailable("no job server answered GET_STATUS_UNIQUE")
        return first

    def pick_status(
        self, job: JobRef, record: JobRecord | None, found: dict[tuple[str, bytes], Status]
    ) -> Status | None:
        """The live status that belongs to ``job`` among the answers in ``found``."""
        if job.server:
            return found.get((job.server, job.handle))
        if record is not None and (record.key.server, job.handle) in found:
            return found[(record.key.server, job.handle)]
        answers = [found[(s, job.handle)] for s in self.servers if (s, job.handle) in found]
        return next((a for a in answers if a.known), answers[0] if answers else None)
