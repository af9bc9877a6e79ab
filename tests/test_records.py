"""Records, references, the JSON format and the state merge (no servers)."""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gearstash.client.client import Status, merge_state
from gearstash.errors import ConfigError
from gearstash.model.records import (
    Event,
    EventKind,
    JobKey,
    JobRecord,
    JobRef,
    State,
    bytes_to_json,
    json_to_bytes,
    normalize_server,
)

KEY = JobKey("127.0.0.1:4730", b"H:host:1", b"u-1")


def events(key: JobKey = KEY) -> list[Event]:
    return [
        Event(EventKind.STARTED, key, 1.0, function=b"reverse", worker="w:1"),
        Event(EventKind.DATA, key, 1.1, b"a"),
        Event(EventKind.STATUS, key, 1.2, numerator=1, denominator=2),
        Event(EventKind.WARNING, key, 1.3, b"w"),
        Event(EventKind.DATA, key, 1.4, b"\xff\x00"),
        Event(EventKind.COMPLETED, key, 1.5, b"done"),
    ]


def test_apply_builds_the_record():
    record = JobRecord.from_events(KEY, events())
    assert record.state is State.COMPLETE
    assert record.data == [b"a", b"\xff\x00"]
    assert record.warnings == [b"w"]
    assert [(p.numerator, p.denominator, p.at) for p in record.status] == [(1, 2, 1.2)]
    assert (record.result, record.function, record.worker) == (b"done", b"reverse", "w:1")
    assert (record.started_at, record.finished_at, record.attempt) == (1.0, 1.5, 1)


def test_a_second_start_is_a_new_attempt_with_fresh_data():
    record = JobRecord.from_events(KEY, events()[:3])
    record.apply(Event(EventKind.STARTED, KEY, 2.0, function=b"reverse", worker="w:2"))
    assert (record.attempt, record.data, record.status, record.worker) == (2, [], [], "w:2")


def test_exception_and_fail_events():
    rec = JobRecord.from_events(
        KEY, [Event(EventKind.EXCEPTION, KEY, 1.0, b"ValueError: x", traceback="Traceback...")]
    )
    assert rec.state is State.FAILED and rec.error is not None
    assert (rec.error.kind, rec.error.message, rec.error.traceback) == (
        "exception",
        "ValueError: x",
        "Traceback...",
    )
    rec2 = JobRecord.from_events(KEY, [Event(EventKind.FAILED, KEY, 1.0, b"nope")])
    assert rec2.error is not None and rec2.error.kind == "fail"


def test_json_form_is_documented_and_round_trips():
    record = JobRecord.from_events(KEY, events())
    obj = json.loads(json.dumps(record.to_json()))
    assert obj["format"] == "gearstash.job/1"
    assert obj["data"] == ["a", {"base64": "/wA="}]
    assert obj["handle"] == "H:host:1" and obj["result"] == "done" and obj["error"] is None
    assert JobRecord.from_json(obj) == record
    with pytest.raises(ValueError):
        JobRecord.from_json(obj | {"format": "other"})


@given(st.binary(max_size=300))
def test_bytes_json_round_trip(value):
    encoded = bytes_to_json(value)
    assert json_to_bytes(json.loads(json.dumps(encoded))) == value
    if isinstance(encoded, str):
        assert encoded.encode() == value


@example(b"\x00//", b"")  # found by Hypothesis: it read back as Perl's SERVER//HANDLE form
@given(st.binary(min_size=1, max_size=80), st.binary(max_size=63))
def test_ref_string_round_trip(handle, unique):
    ref = JobRef(handle, "127.0.0.1:4730", unique)
    assert JobRef.parse(str(ref)) == ref
    assert JobRef.parse(str(JobRef(handle))) == JobRef(handle)


def test_ref_parse_forms():
    assert JobRef.parse("H:host:7") == JobRef(b"H:host:7")
    assert JobRef.parse("H:host:7@LocalHost") == JobRef(b"H:host:7", "localhost:4730")
    assert JobRef.parse("H:host:7@[::1]:4731#ab%23c") == JobRef(b"H:host:7", "[::1]:4731", b"ab#c")
    with pytest.raises(ConfigError):
        JobRef.parse("@127.0.0.1")


def test_ref_matches():
    assert JobRef(b"H:host:1").matches(KEY)
    assert JobRef(b"H:host:1", "127.0.0.1:4730", b"u-1").matches(KEY)
    assert not JobRef(b"H:host:1", "127.0.0.1:4731").matches(KEY)
    assert not JobRef(b"H:host:1", None, b"u-2").matches(KEY)
    assert not JobRef(b"H:host:2").matches(KEY)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("localhost", "localhost:4730"),
        ("127.0.0.1:4731", "127.0.0.1:4731"),
        ("[::1]", "[::1]:4730"),
        ("::1", "[::1]:4730"),
        (" Host:1 ", "host:1"),
    ],
)
def test_normalize_server(given, expected):
    assert normalize_server(given) == expected


@pytest.mark.parametrize("bad", ["", "host:port", "host:0", "host:70000", "[::1"])
def test_normalize_server_rejects(bad):
    with pytest.raises(ConfigError):
        normalize_server(bad)


LIVE_RUNNING = Status(True, True, 3, 10, "s")
LIVE_QUEUED = Status(True, False, 0, 0, "s")
GONE = Status(False, False, 0, 0, "s")


@pytest.mark.parametrize(
    ("ref", "status", "stored", "expected", "keeps_record"),
    [
        (JobRef(b"H:host:1", None, b"u-1"), GONE, State.COMPLETE, State.COMPLETE, True),
        (JobRef(b"H:host:1", None, b"u-1"), LIVE_RUNNING, State.COMPLETE, State.COMPLETE, True),
        # bare handle alive on the server but the newest record is final: reused handle
        (JobRef(b"H:host:1"), LIVE_RUNNING, State.COMPLETE, State.RUNNING, False),
        (JobRef(b"H:host:1"), LIVE_QUEUED, None, State.QUEUED, False),
        (JobRef(b"H:host:1"), LIVE_RUNNING, State.RUNNING, State.RUNNING, True),
        (JobRef(b"H:host:1"), GONE, State.RUNNING, State.RUNNING, True),
        (JobRef(b"H:host:1"), None, State.FAILED, State.FAILED, True),
        (JobRef(b"H:host:1"), GONE, None, State.UNKNOWN, False),
        (JobRef(b"H:host:1"), None, None, State.UNKNOWN, False),
    ],
)
def test_merge_state(ref, status, stored, expected, keeps_record):
    record = None
    if stored is not None:
        record = JobRecord(KEY, state=stored)
    view = merge_state(ref, status, record)
    assert view.state is expected
    assert (view.record is not None) is keeps_record


# ------------------------------------------------------------------ hostile text (fuzz findings)


def test_ref_parse_takes_non_utf8_bytes_and_argv_text():
    # regression: unquote_to_bytes() on surrogate-escaped text raised UnicodeEncodeError, so a
    # handle that is not UTF-8 could not be given as bytes or on the command line (argv text)
    assert JobRef.parse(b"H:\xff\xfe:1#u\x80") == JobRef(b"H:\xff\xfe:1", None, b"u\x80")
    argv = b"H:\xff:2@127.0.0.1#\xfe".decode("utf-8", "surrogateescape")
    assert JobRef.parse(argv) == JobRef(b"H:\xff:2", "127.0.0.1:4730", b"\xfe")
    assert JobRef.parse(str(JobRef(b"H:\xff:2", None, b"\xfe"))) == JobRef(
        b"H:\xff:2", None, b"\xfe"
    )


@pytest.mark.parametrize(
    "bad", ["a#b:1", "a@b", "a b:1", "h\tx", "[x]]:1", "[::1]x", "h\udcff", "a/b", "[]:1"]
)
def test_normalize_server_rejects_hosts_that_break_references(bad):
    # regression (found by fuzz/fuzz_jobref.py): a '#' or ']' in a server address made
    # str(JobRef) print a reference that parsed back as another job or not at all
    with pytest.raises(ConfigError, match="address"):
        normalize_server(bad)


@given(st.text(max_size=60))
def test_ref_parse_of_any_text_is_stable(text):
    try:
        ref = JobRef.parse(text)
    except (ConfigError, ValueError):
        return
    printed = str(ref)
    assert JobRef.parse(printed) == ref
    assert printed.isprintable() and " " not in printed  # the server may be an IDN host name


_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=10)
    | st.just({"base64": "AP8="}),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=8,
)
_RECORD_JSON = JobRecord.from_events(KEY, events()).to_json()


@given(st.sampled_from(sorted(_RECORD_JSON)), _JSON_VALUES, st.booleans())
def test_from_json_raises_only_value_error(field, value, drop):
    obj = dict(_RECORD_JSON)
    if drop:
        obj.pop(field)
    else:
        obj[field] = value
    try:
        record = JobRecord.from_json(obj)
    except ValueError:
        return
    assert isinstance(record.key.server, str) and isinstance(record.worker, str)
    assert all(type(c) is bytes for c in [*record.data, *record.warnings, record.key.handle])


@pytest.mark.parametrize(
    "obj",
    [
        [],
        "x",
        None,
        _RECORD_JSON | {"error": "boom"},
        _RECORD_JSON | {"attempt": float("inf")},
        _RECORD_JSON | {"status": "ab"},
        _RECORD_JSON | {"data": "abc"},
        _RECORD_JSON | {"server": 5},
        _RECORD_JSON | {"started_at": "yesterday"},
        {k: v for k, v in _RECORD_JSON.items() if k != "handle"},
    ],
)
def test_from_json_malformed_records_raise_value_error(obj):
    # regression (the from_json fuzz target's contract): these raised AttributeError, TypeError,
    # OverflowError or KeyError, or were accepted with a wrong type (data "abc" -> 3 chunks)
    with pytest.raises(ValueError, match=r"gearstash\.job/1"):
        JobRecord.from_json(obj)
