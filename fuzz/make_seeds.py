"""Write the seed corpora of the fuzz targets into fuzz/seeds/ (valid inputs to start from).

    .venv/bin/python fuzz/make_seeds.py

Protocol seeds carry the two control bytes of fuzz_protocol.py (target/options, split seed)
followed by well-formed packet streams (every packet type, captured gearmand replies) or admin
replies. The files are committed; rerun this after changing the harnesses' input layout.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from gearstash.model.records import Event, EventKind, JobKey, JobRecord, JobRef
from gearstash.protocol.packets import ARG_COUNTS, PacketType, encode

SEEDS = Path(__file__).resolve().parent / "seeds"
T = PacketType


def _write(kind: str, data: bytes) -> None:
    folder = SEEDS / kind
    folder.mkdir(parents=True, exist_ok=True)
    (folder / hashlib.sha1(data).hexdigest()[:16]).write_bytes(data)


def protocol_seeds() -> None:
    for kind in PacketType:
        count = ARG_COUNTS[kind]
        args = [b"H:vm:%d" % i for i in range(count - 1)]
        if count:
            args.append(b"last\0arg" if kind is not T.WORK_FAIL else b"H:vm:9")
        for request in (False, True):
            flags = (0 if not request else 4) | (3 << 3)  # decoder, default max_packet
            _write("protocol", bytes([flags, kind]) + encode(kind, *args, request=request))
    stream = b"".join(
        encode(k, *a, request=False)
        for k, a in (
            (T.NOOP, ()),
            (T.JOB_ASSIGN_UNIQ, (b"H:vm:3", b"slow", b"u3", b"fg\0data")),
            (T.NO_JOB, ()),
            (T.STATUS_RES, (b"H:vm:4", b"1", b"1", b"3", b"10")),
            (T.STATUS_RES_UNIQUE, (b"uu1", b"1", b"1", b"3", b"10", b"1")),
            (T.ERROR, (b"JOB_NOT_FOUND", b"Job given in work result not found")),
        )
    )
    _write("protocol", bytes([3 << 3, 7]) + stream)
    _write("protocol", bytes([1 << 3, 1]) + stream)  # max_packet 16: some packets too big
    _write("protocol", b"\x18\x05\x00RES\x00\x00\x00\x0e\x00\x00\x00\x07H:vm:5\x00")  # WORK_FAIL+NUL
    admin = {
        True: [
            b"fn two\t0\t0\t1\nrev\t2\t0\t1\nslow\t1\t1\t1\n.\n",
            b"38 127.0.0.1 worker-7 : slow fn two rev\n39 127.0.0.1 - :\n.\n",
            b"H:vm:1\t0\t0\t1\nH:vm:2\t0\t0\t1\n.\n",
            b"u1\nu2\tH:vm:2\n.\n",
            b"ERR UNKNOWN_COMMAND Unknown+server+command\r\n",
        ],
        False: [b"OK 1.1.20+ds\n", b"10223\r\n"],
    }
    for multiline, replies in admin.items():
        for i, reply in enumerate(replies):
            _write("protocol", bytes([2 | (4 if multiline else 0), i]) + reply)
    for small in (b"0", b"4294967295", b"9" * 20, b"status", b"show unique jobs"):
        _write("protocol", b"\x03\x00" + small)


def jobref_seeds() -> None:
    for ref in (
        JobRef(b"H:web1:70", "127.0.0.1:4730", b"5f0c2b7e4c8a4f0e9d6a1b2c3d4e5f60"),
        JobRef(b"H:x:1"),
        JobRef(b"H:a b/../%#@\xff", "[::1]:4731", b"u #@%\x00"),
        JobRef(b"H:x:2", None, b""),
    ):
        _write("jobref", str(ref).encode())
    _write("jobref", b"H:x:3@localhost")
    _write("jobref", b"H:\xff\xfe:4#u\xff")


def record_seeds() -> None:
    key = JobKey("127.0.0.1:4730", b"H:web1:70", b"\xffu")
    events = [
        Event(EventKind.STARTED, key, 1.5, function=b"reverse", worker="w:1"),
        Event(EventKind.DATA, key, 1.6, b"step 1"),
        Event(EventKind.DATA, key, 1.6, b"\0\xff"),
        Event(EventKind.WARNING, key, 1.7, b"careful"),
        Event(EventKind.STATUS, key, 1.8, numerator=1, denominator=10),
    ]
    running = JobRecord.from_events(key, events)
    done = JobRecord.from_events(key, [*events, Event(EventKind.COMPLETED, key, 2.0, b"321")])
    failed = JobRecord.from_events(
        key, [*events, Event(EventKind.EXCEPTION, key, 2.0, b"boom", traceback="Traceback...")]
    )
    for record in (running, done, failed):
        _write("record", b"\x00" + json.dumps(record.to_json()).encode())
        _write("record", b"\x01" + json.dumps(record.to_json()).encode())


if __name__ == "__main__":
    protocol_seeds()
    jobref_seeds()
    record_seeds()
    for folder in sorted(SEEDS.iterdir()):
        print(f"{folder}: {len(list(folder.iterdir()))} seeds")
