"""Coverage-guided fuzz target for ``JobRecord.from_json`` (atheris / libFuzzer).

    .venv/bin/python fuzz/fuzz_record.py -runs=300000 CORPUS_DIR fuzz/seeds/record

``from_json`` reads the public ``gearstash.job/1`` format, which other programs write: whatever JSON
it is given, it must return a record or raise ``ValueError`` (never KeyError, TypeError,
AttributeError, OverflowError...). Byte 0 picks the mode: even -- the rest is JSON text
(``json.loads``; text that is not JSON is skipped); odd -- a valid record whose fields are replaced
by values the fuzzer picks (structure-aware: reaches deep fields that random text rarely hits).
A record that was accepted must print (``to_json``) and read back equal.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import atheris

with atheris.instrument_imports(include=["gearstash"]):
    from gearstash.model.records import JobKey, JobRecord, JobRef  # noqa: F401

TEMPLATE: dict[str, Any] = {
    "format": "gearstash.job/1",
    "server": "127.0.0.1:4730",
    "handle": "H:web1:70",
    "unique": {"base64": "AP8="},
    "function": "reverse",
    "state": "complete",
    "attempt": 1,
    "data": ["step 1", {"base64": "AP8="}],
    "warnings": ["w"],
    "status": [{"numerator": 1, "denominator": 10, "at": 1.5}],
    "result": "321",
    "error": {"kind": "exception", "message": "m", "traceback": "t"},
    "worker": "web1:42",
    "started_at": 1.0,
    "finished_at": 2.0,
    "updated_at": 2.0,
    "expires_at": None,
    "data_offset": 0,
}
PATHS = [(k,) for k in TEMPLATE] + [
    ("unique", "base64"),
    ("data", 0),
    ("data", 1, "base64"),
    ("status", 0),
    ("status", 0, "numerator"),
    ("status", 0, "at"),
    ("error", "kind"),
    ("error", "message"),
    ("error", "traceback"),
]


def value(fdp: atheris.FuzzedDataProvider, depth: int = 0) -> Any:
    choice = fdp.ConsumeIntInRange(0, 11)
    if choice == 0:
        return None
    if choice == 1:
        return fdp.ConsumeBool()
    if choice == 2:
        return fdp.ConsumeInt(fdp.ConsumeIntInRange(1, 80))
    if choice == 3:
        return fdp.PickValueInList([math.inf, -math.inf, math.nan, 1e308, -0.0, 0.5])
    if choice == 4:
        return fdp.ConsumeRegularFloat()
    if choice in (5, 6):
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40))
    if choice == 7:
        return {"base64": fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40))}
    if choice == 8 and depth < 3:
        return [value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    if choice == 9 and depth < 3:
        keys = ["numerator", "denominator", "at", "kind", "message", "base64", "x"]
        return {fdp.PickValueInList(keys): value(fdp, depth + 1) for _ in range(3)}
    if choice == 10:
        return fdp.PickValueInList(["running", "complete", "failed", "expired", "queued", ""])
    return "H:x:1"


def mutated(fdp: atheris.FuzzedDataProvider) -> Any:
    obj = json.loads(json.dumps(TEMPLATE))
    for _ in range(fdp.ConsumeIntInRange(1, 3)):
        path = fdp.PickValueInList(PATHS)
        parent: Any = obj
        try:
            for step in path[:-1]:
                parent = parent[step]
            if fdp.ConsumeIntInRange(0, 7) == 0 and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = value(fdp)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit replaced the parent
    return obj


def check(obj: Any) -> None:
    try:
        record = JobRecord.from_json(obj)
    except ValueError:
        return
    assert isinstance(record.key.server, str)
    assert all(type(b) is bytes for b in (record.key.handle, record.key.unique, record.function))
    assert all(type(c) is bytes for c in record.data + record.warnings)
    again = JobRecord.from_json(json.loads(json.dumps(record.to_json())))
    if not any(isinstance(t, float) and math.isnan(t) for t in _times(record)):
        assert again == record, (obj, record, again)


def _times(record: JobRecord) -> list[Any]:
    return [record.started_at, record.finished_at, record.updated_at, record.expires_at] + [
        p.at for p in record.status
    ]


def test_one_input(data: bytes) -> None:
    if not data:
        return
    if data[0] & 1:
        check(mutated(atheris.FuzzedDataProvider(data[1:])))
        return
    try:
        obj = json.loads(data[1:])
    except (ValueError, RecursionError):
        return  # not JSON: json's business, not from_json's
    check(obj)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
