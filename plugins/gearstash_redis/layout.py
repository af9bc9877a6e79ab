"""The Redis key layout (documented in the package docstring): names, digests, encodings. No I/O.

* ``K`` — the *key encoding* of a job: the netstrings of its server (UTF-8), handle and unique,
  concatenated: ``b"14:127.0.0.1:4730,9:H:web1:70,4:u-42,"``. Different triples never encode alike.
* ``J`` — the *job digest*: the first 24 hex digits of SHA-1(K). Every key of one job carries it as
  a Redis Cluster hash tag (``gs:{J}:job`` …).
* ``H`` — the *handle digest*: the first 24 hex digits of SHA-1(handle); the handle index
  ``gs:h:{H}`` and the notification channel ``gs:ev:{H}`` carry it.
* ``U`` — the *unique digest*: the first 24 hex digits of SHA-1(unique); the unique index
  ``gs:u:{U}`` carries it (jobs with an empty unique are not listed there).

SHA-1 rather than BLAKE2b because the scripts recompute ``J`` from ``K`` with Redis's own
``redis.sha1hex`` (reads by handle, index pruning) and every language has SHA-1 built in (PHP's
``hash()`` has no BLAKE2b and libsodium's starts at 16 bytes); 96 bits leave no practical chance
of an accidental collision, and a reader still checks the triple it finds.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import NamedTuple

from gearstash.model.records import JobKey

DIGEST_HEX = 24  # hex digits of J and H (96 bits)
DEFAULT_PREFIX = "gs"


def netstring(value: bytes) -> bytes:
    """``b"<len>:<value>,"``."""
    return b"%d:%b," % (len(value), value)


def encode_key(key: JobKey) -> bytes:
    """The key encoding ``K`` of a job: netstrings of server (UTF-8), handle, unique."""
    return netstring(key.server.encode()) + netstring(key.handle) + netstring(key.unique)


def decode_key(member: bytes) -> JobKey | None:
    """The job of a key encoding (an index member), or None when ``member`` is not one."""
    parts: list[bytes] = []
    pos = 0
    try:
        for _ in range(3):
            colon = member.index(b":", pos)
            size = int(member[pos:colon])
            start = colon + 1
            end = start + size
            if size < 0 or member[end : end + 1] != b",":
                return None
            parts.append(member[start:end])
            pos = end + 1
        if pos != len(member):
            return None
        return JobKey(parts[0].decode(), parts[1], parts[2])
    except (ValueError, UnicodeDecodeError):
        return None


def digest(value: bytes) -> str:
    """The first 24 hex digits of SHA-1(value): ``J`` of a key encoding, ``H`` of a handle."""
    return hashlib.sha1(value).hexdigest()[:DIGEST_HEX]


class JobKeys(NamedTuple):
    """Everything a store needs to name one job in Redis (bytes, ready to send)."""

    member: bytes  # K: the key encoding, the job's member in the handle index
    job_digest: bytes  # J
    job: bytes  # PREFIX:{J}:job      HASH
    data: bytes  # PREFIX:{J}:data     LIST
    warnings: bytes  # PREFIX:{J}:warnings LIST
    status: bytes  # PREFIX:{J}:status   LIST
    gone: bytes  # PREFIX:{J}:gone     STRING (tombstone)
    handle_index: bytes  # PREFIX:h:{H}  ZSET
    unique_index: bytes  # PREFIX:u:{U}  ZSET
    channel: bytes  # PREFIX:ev:{H}       pub/sub channel


class Layout:
    """Key names under one prefix (``gs`` unless the store URL says ``?prefix=``)."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix
        self._prefix = prefix.encode()
        # the worker writes one job several times in a row: keep its names at hand
        self.keys = lru_cache(maxsize=1024)(self._keys)
        # a reader asks for the same jobs again and again (a page polled, a batch followed)
        self.job = lru_cache(maxsize=4096)(self._job)

    def _keys(self, key: JobKey) -> JobKeys:
        member = encode_key(key)
        j = digest(member).encode()
        base = b"%b:{%b}:" % (self._prefix, j)
        h = digest(key.handle).encode()  # once for the index and the channel
        return JobKeys(
            member,
            j,
            base + b"job",
            base + b"data",
            base + b"warnings",
            base + b"status",
            base + b"gone",
            b"%b:h:{%b}" % (self._prefix, h),
            self.unique_index(key.unique),
            b"%b:ev:{%b}" % (self._prefix, h),
        )

    def _job(self, key: JobKey) -> bytes:
        """``PREFIX:{J}:job`` alone (:attr:`job`, cached), what a read names: one digest, where
        :attr:`keys` makes four for a key it has not cached (a reader seldom has: the worker
        wrote the job)."""
        return b"%b:{%b}:job" % (self._prefix, digest(encode_key(key)).encode())

    def index(self, handle: bytes) -> bytes:
        """``PREFIX:h:{H}``: the handle index."""
        return b"%b:h:{%b}" % (self._prefix, digest(handle).encode())

    def unique_index(self, unique: bytes) -> bytes:
        """``PREFIX:u:{U}``: the unique index."""
        return b"%b:u:{%b}" % (self._prefix, digest(unique).encode())

    def channel(self, handle: bytes) -> bytes:
        """``PREFIX:ev:{H}``: where writes to jobs with this handle are announced."""
        return b"%b:ev:{%b}" % (self._prefix, digest(handle).encode())
