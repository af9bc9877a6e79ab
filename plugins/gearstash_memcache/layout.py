"""Keys, digests, server choice and value encoding of the memcache store (no I/O).

Everything here is described for other languages in the package docstring; keep both in step.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from gearstash.model.codec import json_to_bytes
from gearstash.model.records import FORMAT, JobError, JobKey, JobRecord, State

DIGEST_HEX = 24  # hex digits of SHA-1 kept for J and H (96 bits), as in the Redis store
STREAMS = ("d", "w", "s")  # data, warnings, status: the three chunk streams
DATA, WARNINGS, STATUS = 0, 1, 2
PLAIN = b"="  # first byte of a stored value: the rest is the value
SPLIT = b"@"  # first byte of a stored value: the rest is a JSON parts header
MAX_EXPTIME_RELATIVE = 30 * 86400  # memcached reads a larger exptime as a unix time
TOMBSTONE_FORMAT = "gearstash.tombstone/1"
MAX_TOMBSTONE_FUNCTION = 1024


def netstring(value: bytes) -> bytes:
    """``<byte length>:<bytes>,``."""
    return b"%d:%s," % (len(value), value)


def key_encoding(key: JobKey) -> bytes:
    """K: the netstrings of the server (UTF-8), the handle and the unique, concatenated."""
    return netstring(key.server.encode()) + netstring(key.handle) + netstring(key.unique)


def job_digest(key: JobKey) -> str:
    """J: the first 24 hex digits of SHA-1(K)."""
    return hashlib.sha1(key_encoding(key), usedforsecurity=False).hexdigest()[:DIGEST_HEX]


def handle_digest(handle: bytes) -> str:
    """H: the first 24 hex digits of SHA-1(handle); U of a unique likewise."""
    return hashlib.sha1(handle, usedforsecurity=False).hexdigest()[:DIGEST_HEX]


unique_digest = handle_digest  # U: the first 24 hex digits of SHA-1(unique)


def pick_server(servers: list[str], token: str) -> int:
    """Index of the server holding ``token`` (J or H): rendezvous hashing, PHP-reproducible.

    The server whose ``sha256("<host:port> <token>")`` hex digest is greatest (as a string).
    """
    if len(servers) == 1:
        return 0
    best, best_score = 0, ""
    for index, server in enumerate(servers):
        score = hashlib.sha256(f"{server} {token}".encode()).hexdigest()
        if score > best_score:
            best, best_score = index, score
    return best


@dataclass(frozen=True, slots=True)
class Keys:
    """The memcached keys of one store (``prefix``) — all ASCII, at most ~110 bytes."""

    prefix: str

    def head(self, j: str) -> bytes:
        return f"{self.prefix}:{j}:job".encode()

    def tombstone(self, j: str) -> bytes:
        return f"{self.prefix}:{j}:gone".encode()

    def index(self, h: str) -> bytes:
        return f"{self.prefix}:h:{h}".encode()

    def unique_index(self, u: str) -> bytes:
        return f"{self.prefix}:u:{u}".encode()

    def chunk(self, j: str, gen: str, stream: int, i: int) -> bytes:
        return f"{self.prefix}:{j}:{gen}:{STREAMS[stream]}:{i}".encode()

    def counter(self, j: str, gen: str, stream: int) -> bytes:
        return f"{self.prefix}:{j}:{gen}:{STREAMS[stream]}:n".encode()


def part_key(key: bytes, part_id: str, k: int) -> bytes:
    """Where part ``k`` of the split value stored under ``key`` lives."""
    return b"%s:p:%s:%d" % (key, part_id.encode(), k)


def new_token() -> str:
    """A fresh 16-hex-digit generation or parts id.

    From the OS, not ``random``: processes seeded alike must still never share one.
    """
    return os.urandom(8).hex()


# ------------------------------------------------------------------------------ values


@dataclass(frozen=True, slots=True)
class Encoded:
    """A value ready to store: ``main`` under its key, ``parts`` (key suffix id, bodies) beside it."""

    main: bytes
    part_id: str = ""
    parts: tuple[bytes, ...] = ()


def encode_value(body: bytes, part_size: int, part_id: str = "") -> Encoded:
    """``=body`` when it fits in ``part_size`` bytes, else a parts header and the parts."""
    if len(body) < part_size:
        return Encoded(PLAIN + body)
    part_id = part_id or new_token()
    parts = tuple(body[i : i + part_size] for i in range(0, len(body), part_size))
    header = {"parts": len(parts), "size": len(body), "id": part_id}
    return Encoded(SPLIT + json.dumps(header, separators=(",", ":")).encode(), part_id, parts)


@dataclass(frozen=True, slots=True)
class PartsHeader:
    parts: int
    size: int
    part_id: str


def parse_main(value: bytes) -> bytes | PartsHeader:
    """The body of a ``=`` value, or the header of a ``@`` one. ValueError for anything else."""
    marker = value[:1]
    if marker == PLAIN:
        return value[1:]
    if marker == SPLIT:
        header = json.loads(value[1:])
        parts, size, part_id = header["parts"], header["size"], header["id"]
        if not (isinstance(parts, int) and isinstance(size, int) and isinstance(part_id, str)):
            raise ValueError("bad parts header")
        return PartsHeader(parts, size, part_id)
    raise ValueError(f"not a gearstash value (first byte {marker!r})")


def join_parts(header: PartsHeader, parts: list[bytes | None]) -> bytes | None:
    """The body from its parts, or None when a part is missing or the sizes disagree."""
    if any(p is None for p in parts):
        return None
    body = b"".join(p for p in parts if p is not None)
    return body if len(body) == header.size else None


# ------------------------------------------------------------------------------ times


def exptime(at: float | None, now: float) -> int:
    """memcached's exptime for an absolute unix time ``at`` (None: never expires).

    Relative seconds when within 30 days (immune to clock skew with the memcached host), the unix
    time itself beyond; -1 (already expired) when ``at`` is past. One second is added: memcached's
    clock moves in whole seconds, so an item given N seconds may live only N - 1 (readers compare
    ``expires_at`` with the time themselves).
    """
    if at is None:
        return 0
    rel = math.ceil(at - now)
    if rel <= 0:
        return -1
    if rel >= MAX_EXPTIME_RELATIVE:
        return math.ceil(at) + 1
    return rel + 1


# ------------------------------------------------------------------------------ the head


@dataclass(slots=True)
class Head:
    """What ``<prefix>:<J>:job`` holds: the record without its lists, and where its chunks are.

    ``counts[s]`` chunks of stream ``s`` are committed under generation ``gen``. ``chunk_exp`` is
    the earliest time any of those chunks (or counters) expire (None: never / no chunks).
    ``split`` lists chunks stored in parts (``[stream, index, parts id, parts]``); ``previous``
    the generations of earlier attempts (``[gen, counts..., split]``), so that delete finds them.
    """

    record: JobRecord
    gen: str
    counts: list[int] = field(default_factory=lambda: [0, 0, 0])
    chunk_exp: float | None = None
    split: list[list[Any]] = field(default_factory=list)
    previous: list[list[Any]] = field(default_factory=list)

    def to_json_bytes(self) -> bytes:
        """The head's JSON (built by hand: this is on the worker's hot path)."""
        r = self.record
        error = r.error
        error_json = (
            "null"
            if error is None
            else f'{{"kind":{_str(error.kind)},"message":{_str(error.message)},'
            f'"traceback":{_str(error.traceback)}}}'
        )
        chunks = (
            f'{{"generation":{_str(self.gen)},"data":{self.counts[0]:d},'
            f'"warnings":{self.counts[1]:d},"status":{self.counts[2]:d}'
        )
        if self.chunk_exp is not None:
            chunks += f',"expire_at":{self.chunk_exp!r}'
        if self.split:
            chunks += ',"split":' + json.dumps(self.split, separators=(",", ":"))
        if self.previous:
            chunks += ',"previous":' + json.dumps(self.previous, separators=(",", ":"))
        text = (
            f'{{"format":"{FORMAT}","server":{_str(r.key.server)},'
            f'"handle":{_bytes(r.key.handle)},"unique":{_bytes(r.key.unique)},'
            f'"function":{_bytes(r.function)},"state":"{r.state.value}",'
            f'"attempt":{r.attempt:d},'
            f'"result":{"null" if r.result is None else _bytes(r.result)},'
            f'"error":{error_json},"worker":{_str(r.worker)},'
            f'"started_at":{_num(r.started_at)},"finished_at":{_num(r.finished_at)},'
            f'"updated_at":{_num(r.updated_at)},"expires_at":{_num(r.expires_at)},'
            f'"lease_until":{_num(r.lease_until)},'
            f'"workload":{"null" if r.workload is None else _bytes(r.workload)},'
            f'"chunks":{chunks}}}}}'
        )
        return text.encode()

    @classmethod
    def from_json_bytes(cls, body: bytes) -> Head:
        obj = _decode(body.decode())
        if obj.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} head: format={obj.get('format')!r}")
        error = obj["error"]
        result = obj["result"]
        workload = obj.get("workload")  # absent in heads written before workloads were kept
        record = JobRecord(
            key=JobKey(obj["server"], json_to_bytes(obj["handle"]), json_to_bytes(obj["unique"])),
            function=json_to_bytes(obj["function"]),
            state=State(obj["state"]),
            attempt=int(obj["attempt"]),
            result=None if result is None else json_to_bytes(result),
            error=None
            if error is None
            else JobError(error["kind"], error["message"], error.get("traceback", "")),
            worker=obj["worker"],
            started_at=obj["started_at"],
            finished_at=obj["finished_at"],
            updated_at=obj["updated_at"],
            expires_at=obj["expires_at"],
            lease_until=obj.get("lease_until"),
            workload=None if workload is None else json_to_bytes(workload),
        )
        chunks = obj["chunks"]
        gen = chunks["generation"]
        counts = [int(chunks["data"]), int(chunks["warnings"]), int(chunks["status"])]
        if not isinstance(gen, str) or min(counts) < 0:
            raise ValueError("bad chunk description in head")
        return cls(
            record,
            gen,
            counts,
            chunks.get("expire_at"),
            list(chunks.get("split") or []),
            list(chunks.get("previous") or []),
        )


def tombstone_body(record: JobRecord) -> bytes:
    """The tombstone: enough to report the job as expired (and to match a reference).

    The function name is left out (empty) when longer than 1 KiB: tombstones stay small.
    """
    key = record.key
    function = record.function if len(record.function) <= MAX_TOMBSTONE_FUNCTION else b""
    return (
        f'{{"format":"{TOMBSTONE_FORMAT}","server":{_str(key.server)},'
        f'"handle":{_bytes(key.handle)},"unique":{_bytes(key.unique)},'
        f'"function":{_bytes(function)},"attempt":{record.attempt:d},'
        f'"expires_at":{_num(record.expires_at)}}}'
    ).encode()


def record_from_tombstone(body: bytes) -> JobRecord:
    """The ``expired`` record a tombstone stands for."""
    obj = json.loads(body)
    if obj.get("format") != TOMBSTONE_FORMAT:
        raise ValueError(f"not a {TOMBSTONE_FORMAT} value")
    return JobRecord(
        JobKey(obj["server"], json_to_bytes(obj["handle"]), json_to_bytes(obj["unique"])),
        function=json_to_bytes(obj["function"]),
        state=State.EXPIRED,
        attempt=int(obj["attempt"]),
        expires_at=obj["expires_at"],
    )


def status_body(numerator: int, denominator: int, at: float) -> bytes:
    return b'{"numerator":%d,"denominator":%d,"at":%s}' % (
        numerator,
        denominator,
        repr(float(at)).encode(),
    )


_str = json.encoder.encode_basestring  # the C function: a str as a JSON string
_decode = json.JSONDecoder().decode


def _bytes(value: bytes) -> str:
    """``bytes_to_json`` as JSON text."""
    try:
        return _str(value.decode())
    except UnicodeDecodeError:
        return '{"base64":"' + base64.b64encode(value).decode() + '"}'


def _num(value: float | None) -> str:
    """A time as JSON (times are finite floats)."""
    return "null" if value is None else repr(float(value))


def parse_index(value: bytes) -> list[str]:
    """The J's of a handle index, oldest first, each once (its first occurrence counts)."""
    seen: dict[str, None] = {}
    for token in value.split():
        text = token.decode("ascii", "replace")
        if len(text) == DIGEST_HEX:
            seen.setdefault(text, None)
    return list(seen)
