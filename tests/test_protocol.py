"""Tests of the sans-IO Gearman codec (no sockets).

Byte samples marked "captured" were read from gearmand 1.1.20 on loopback.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gearstash.errors import ProtocolError
from gearstash.protocol.admin import (
    AdminReader,
    FunctionStatus,
    QueuedJob,
    UniqueJob,
    WorkerInfo,
    encode_admin,
    parse_show_jobs,
    parse_show_unique_jobs,
    parse_status,
    parse_workers,
)
from gearstash.protocol.packets import (
    ARG_COUNTS,
    DEFAULT_MAX_PACKET,
    HEADER_SIZE,
    MAX_UNIQUE,
    REQ,
    RES,
    Decoder,
    ErrorReply,
    JobAssignment,
    Packet,
    PacketType,
    StatusReply,
    UniqueStatusReply,
    check_unique,
    encode,
    encode_request,
    encode_requests,
    encode_response,
    parse_int,
)

T = PacketType


def header(magic: bytes, kind: int, size: int) -> bytes:
    return magic + struct.pack(">II", kind, size)


def decode_all(data: bytes, *, request: bool = False) -> list[Packet]:
    decoder = Decoder(request=request)
    decoder.feed(data)
    packets = list(decoder)
    assert decoder.buffered == 0
    return packets


# ------------------------------------------------------------------------------- constants


def test_packet_numbers_match_the_framing_table() -> None:
    assert (REQ, RES, HEADER_SIZE, MAX_UNIQUE) == (b"\0REQ", b"\0RES", 12, 63)
    assert DEFAULT_MAX_PACKET == 128 * 1024 * 1024
    numbers = sorted(int(k) for k in PacketType)
    assert numbers == [n for n in range(1, 43) if n != 5]
    assert (T.CAN_DO, T.PRE_SLEEP, T.NOOP, T.ECHO_REQ, T.ECHO_RES) == (1, 4, 6, 16, 17)
    assert (T.WORK_FAIL, T.ERROR, T.GRAB_JOB_UNIQ, T.JOB_ASSIGN_UNIQ) == (14, 19, 30, 31)
    assert (T.SUBMIT_JOB_EPOCH, T.JOB_ASSIGN_ALL, T.STATUS_RES_UNIQUE) == (36, 40, 42)
    assert set(ARG_COUNTS) == set(PacketType)


@pytest.mark.parametrize(
    ("kind", "count"),
    [
        (T.CAN_DO, 1),
        (T.CAN_DO_TIMEOUT, 2),
        (T.PRE_SLEEP, 0),
        (T.NOOP, 0),
        (T.GRAB_JOB, 0),
        (T.GRAB_JOB_UNIQ, 0),
        (T.GRAB_JOB_ALL, 0),
        (T.NO_JOB, 0),
        (T.SUBMIT_JOB, 3),
        (T.SUBMIT_JOB_BG, 3),
        (T.SUBMIT_JOB_LOW_BG, 3),
        (T.SUBMIT_JOB_EPOCH, 4),
        (T.SUBMIT_JOB_SCHED, 8),
        (T.SUBMIT_REDUCE_JOB, 4),
        (T.SUBMIT_REDUCE_JOB_BACKGROUND, 4),
        (T.JOB_CREATED, 1),
        (T.JOB_ASSIGN, 3),
        (T.JOB_ASSIGN_UNIQ, 4),
        (T.JOB_ASSIGN_ALL, 5),
        (T.WORK_DATA, 2),
        (T.WORK_WARNING, 2),
        (T.WORK_COMPLETE, 2),
        (T.WORK_EXCEPTION, 2),
        (T.WORK_FAIL, 1),
        (T.WORK_STATUS, 3),
        (T.GET_STATUS, 1),
        (T.STATUS_RES, 5),
        (T.GET_STATUS_UNIQUE, 1),
        (T.STATUS_RES_UNIQUE, 6),
        (T.ECHO_REQ, 1),
        (T.ECHO_RES, 1),
        (T.ERROR, 2),
        (T.OPTION_REQ, 1),
        (T.OPTION_RES, 1),
        (T.SET_CLIENT_ID, 1),
        (T.ALL_YOURS, 0),
        (T.RESET_ABILITIES, 0),
        (T.CANT_DO, 1),
    ],
)
def test_arg_counts(kind: PacketType, count: int) -> None:
    assert ARG_COUNTS[kind] == count


# -------------------------------------------------------------------------------- encoding


def test_encode_matches_the_protocol_document_examples() -> None:
    assert encode(T.CAN_DO, b"reverse") == bytes.fromhex("0052455100000001 00000007") + b"reverse"
    assert encode_request(T.GRAB_JOB) == bytes.fromhex("0052455100000009 00000000")
    assert encode_response(T.NO_JOB) == bytes.fromhex("005245530000000a 00000000")
    assert encode(T.SUBMIT_JOB, b"reverse", b"", b"test") == (
        header(REQ, 7, 13) + b"reverse\0\0test"
    )
    assert encode(T.JOB_ASSIGN, b"H:lap:1", b"reverse", b"test", request=False) == (
        header(RES, 11, 20) + b"H:lap:1\0reverse\0test"
    )


def test_encode_accepts_bytes_like_arguments() -> None:
    wire = encode(T.WORK_DATA, bytearray(b"H:x:1"), memoryview(b"da\0ta"))
    assert wire == header(REQ, 28, 11) + b"H:x:1\0da\0ta"
    assert encode(T.JOB_ASSIGN_UNIQ, memoryview(b"h"), b"f", bytearray(b"u"), b"") == (
        header(REQ, 31, 6) + b"h\0f\0u\0"
    )


@pytest.mark.parametrize(
    ("kind", "args"),
    [
        (T.CAN_DO, ()),
        (T.CAN_DO, (b"a", b"b")),
        (T.GRAB_JOB, (b"",)),
        (T.SUBMIT_JOB, (b"f", b"u")),
        (T.JOB_ASSIGN_ALL, (b"h", b"f", b"u", b"d")),
    ],
)
def test_encode_rejects_wrong_argument_count(kind: PacketType, args: tuple[bytes, ...]) -> None:
    with pytest.raises(ProtocolError) as info:
        encode(kind, *args)
    assert info.value.side == "local"
    assert kind.name in str(info.value)
    assert str(ARG_COUNTS[kind]) in str(info.value)


@pytest.mark.parametrize("position", [0, 1])
def test_encode_rejects_nul_in_non_final_argument(position: int) -> None:
    args = [b"fn", b"uniq", b"data"]
    args[position] = b"bad\0arg"
    with pytest.raises(ProtocolError, match="NUL") as info:
        encode(T.SUBMIT_JOB_BG, *args)
    assert info.value.side == "local"
    with pytest.raises(ProtocolError) as info:
        encode(T.SUBMIT_JOB_BG, *[memoryview(a) for a in args])
    assert info.value.side == "local"


def test_encode_allows_nul_in_final_argument() -> None:
    assert encode(T.SUBMIT_JOB_BG, b"fn", b"u", b"\0\0") == header(REQ, 18, 7) + b"fn\0u\0\0\0"


def test_encode_rejects_unknown_type_and_non_bytes() -> None:
    for bad in (5, 0, 43, "CAN_DO"):
        with pytest.raises(ProtocolError) as info:
            encode(bad, b"x")  # type: ignore[arg-type]
        assert info.value.side == "local"
    for args in (("fn", b"u", b"d"), (b"fn", b"u", "d")):
        with pytest.raises(ProtocolError, match="bytes-like") as info:
            encode(T.SUBMIT_JOB, *args)
        assert info.value.side == "local"


@given(st.lists(st.binary(max_size=70), max_size=20))
def test_encode_requests_is_the_requests_back_to_back(handles: list[bytes]) -> None:
    for kind in (T.GET_STATUS, T.GET_STATUS_UNIQUE):
        want = b"".join(encode_request(kind, h) for h in handles)
        assert encode_requests(kind, handles) == want
        assert encode_requests(kind, [bytearray(h) for h in handles]) == want


def test_encode_requests_refuses_what_encode_refuses() -> None:
    with pytest.raises(ProtocolError, match="takes 3 arguments") as info:
        encode_requests(T.SUBMIT_JOB, [b"x"])
    assert info.value.side == "local"
    with pytest.raises(ProtocolError, match="bytes-like"):
        encode_requests(T.GET_STATUS, [b"H:a:1", "H:a:2"])  # type: ignore[list-item]


# -------------------------------------------------------------------------------- round trip

_no_nul = st.binary(max_size=40).map(lambda b: b.replace(b"\0", b"."))


@st.composite
def packets(draw: st.DrawFn) -> Packet:
    kind = draw(st.sampled_from(list(PacketType)))
    count = ARG_COUNTS[kind]
    args = [draw(_no_nul) for _ in range(max(count - 1, 0))]
    if count:
        last = _no_nul if kind is T.WORK_FAIL else st.binary(max_size=200)
        args.append(draw(last))
    return Packet(kind, tuple(args), draw(st.booleans()))


@settings(max_examples=300, deadline=None)
@given(packets())
def test_round_trip_every_type(packet: Packet) -> None:
    wire = encode(packet.kind, *packet.args, request=packet.request)
    assert len(wire) == HEADER_SIZE + struct.unpack(">I", wire[8:12])[0]
    assert decode_all(wire, request=packet.request) == [packet]


def test_every_type_round_trips_with_nul_heavy_last_argument() -> None:
    for kind in PacketType:
        count = ARG_COUNTS[kind]
        args = tuple(b"arg%d" % i for i in range(count - 1))
        if count:
            args += (b"a" if kind is T.WORK_FAIL else b"\0x\0\0",)
        for request in (True, False):
            wire = encode(kind, *args, request=request)
            assert decode_all(wire, request=request) == [Packet(kind, args, request)]


def test_empty_arguments_round_trip() -> None:
    args = (b"", b"", b"", b"", b"")
    packet = decode_all(encode_response(T.JOB_ASSIGN_ALL, *args))[0]
    assert packet.args == args
    assert decode_all(encode_request(T.GET_STATUS, b""), request=True)[0].args == (b"",)


def test_multi_megabyte_payload_in_chunks() -> None:
    payload = bytes(range(256)) * (5 * 4096)  # 5 MiB, full of NULs
    wire = encode_response(T.WORK_COMPLETE, b"H:host:42", payload)
    decoder = Decoder()
    out: list[Packet] = []
    for i in range(0, len(wire), 65536):
        decoder.feed(wire[i : i + 65536])
        out.extend(decoder)
        if i + 65536 < len(wire):
            assert out == []
            assert decoder.buffered == i + 65536
    assert out == [Packet(T.WORK_COMPLETE, (b"H:host:42", payload), False)]
    assert decoder.buffered == 0


_STREAM_PACKETS = [
    Packet(T.NOOP, (), False),
    Packet(T.JOB_ASSIGN_UNIQ, (b"H:vm:3", b"slow", b"u3", b"fg\0data"), False),
    Packet(T.NO_JOB, (), False),
    Packet(T.WORK_STATUS, (b"H:vm:4", b"3", b"10"), False),
    Packet(T.ECHO_RES, (b"",), False),
    Packet(T.ERROR, (b"JOB_NOT_FOUND", b"Job given in work result not found"), False),
    Packet(T.STATUS_RES_UNIQUE, (b"uu1", b"1", b"1", b"3", b"10", b"1"), False),
]
_STREAM = b"".join(encode_response(p.kind, *p.args) for p in _STREAM_PACKETS)


def test_stream_fed_one_byte_at_a_time() -> None:
    decoder = Decoder()
    out: list[Packet] = []
    for i in range(len(_STREAM)):
        decoder.feed(_STREAM[i : i + 1])
        while (packet := decoder.next_packet()) is not None:
            out.append(packet)
        assert decoder.buffered == (i + 1) - sum(len(encode_response(p.kind, *p.args)) for p in out)
    assert out == _STREAM_PACKETS


def test_stream_split_in_two_everywhere() -> None:
    assert decode_all(_STREAM) == _STREAM_PACKETS
    for cut in range(len(_STREAM) + 1):
        decoder = Decoder()
        decoder.feed(_STREAM[:cut])
        first = list(decoder)
        decoder.feed(_STREAM[cut:])
        assert first + list(decoder) == _STREAM_PACKETS, cut
        assert decoder.buffered == 0


def test_many_small_packets_in_one_read_then_partial() -> None:
    one = encode_response(T.JOB_ASSIGN_UNIQ, b"H:vm:1", b"fn", b"u", b"x")
    decoder = Decoder()
    for _ in range(50):
        decoder.feed(one * 200 + one[:7])
        assert len(list(decoder)) == 200
        assert decoder.buffered == 7
        decoder.feed(one[7:])
        assert decoder.next_packet() == Packet(
            T.JOB_ASSIGN_UNIQ, (b"H:vm:1", b"fn", b"u", b"x"), False
        )
        assert decoder.buffered == 0


def test_buffer_is_compacted() -> None:
    # White-box: consumed bytes must not pile up in the decoder's private buffer.
    one = encode_response(T.NOOP)
    decoder = Decoder()
    decoder.feed(one * 100)
    assert len(list(decoder)) == 100
    assert len(decoder._buf) == 0  # fully consumed: reset
    for _ in range(100):
        decoder.feed(one * 100 + one[:5])
        assert len(list(decoder)) == 100
        assert len(decoder._buf) <= len(one) * 101  # only this read, never the history
        decoder.feed(one[5:])
        assert decoder.next_packet() == Packet(T.NOOP, (), False)
    decoder.feed(one * 3 + one[:5])
    assert len(list(decoder)) == 3
    decoder.feed(one[5:])
    assert len(decoder._buf) == len(one)  # the consumed prefix was dropped by feed
    assert decoder.next_packet() == Packet(T.NOOP, (), False)


# ------------------------------------------------------------------------------ decode errors


def assert_server_error(decoder: Decoder, match: str) -> ProtocolError:
    with pytest.raises(ProtocolError, match=match) as info:
        decoder.next_packet()
    assert info.value.side == "server"
    # The decoder is dead from now on: the same error again, from every entry point.
    with pytest.raises(ProtocolError) as again:
        decoder.next_packet()
    assert again.value is info.value
    with pytest.raises(ProtocolError) as again:
        decoder.feed(encode_response(T.NOOP))
    assert again.value is info.value
    return info.value


def test_bad_magic_reports_the_bytes_seen() -> None:
    decoder = Decoder()
    decoder.feed(b"\0XYZ" + struct.pack(">II", 6, 0))
    error = assert_server_error(decoder, "magic")
    assert "XYZ" in str(error)


def test_text_reply_is_caught_before_a_full_header() -> None:
    decoder = Decoder()
    decoder.feed(b"OK\r\n")  # only 4 bytes: an admin reply, not a packet
    assert_server_error(decoder, "magic.*OK")


def test_request_where_response_expected_and_back() -> None:
    decoder = Decoder()
    decoder.feed(encode_request(T.NOOP))
    assert_server_error(decoder, "request packet")
    decoder = Decoder(request=True)
    decoder.feed(encode_response(T.NOOP))
    assert_server_error(decoder, "response packet")


@pytest.mark.parametrize("number", [0, 5, 43, 1000, 0xFFFFFFFF])
def test_unknown_type_number(number: int) -> None:
    decoder = Decoder()
    decoder.feed(header(RES, number, 0))
    assert_server_error(decoder, f"unknown packet type number {number}")


def test_oversized_length_raised_from_header_alone() -> None:
    decoder = Decoder(max_packet=100)
    decoder.feed(header(RES, T.WORK_COMPLETE, 100) + b"h\0" + b"x" * 98)
    assert decoder.next_packet() == Packet(T.WORK_COMPLETE, (b"h", b"x" * 98), False)
    decoder.feed(header(RES, T.WORK_COMPLETE, 101))  # no body at all yet
    assert_server_error(decoder, "101 bytes.*limit of 100")
    decoder = Decoder()
    decoder.feed(header(RES, T.ECHO_RES, DEFAULT_MAX_PACKET + 1))
    assert_server_error(decoder, "limit")


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        (T.JOB_ASSIGN_UNIQ, b"H:vm:1\0fn\0no-unique-separator"),
        (T.JOB_ASSIGN, b""),
        (T.STATUS_RES, b"H:x:1\x001\x001\x000"),
        (T.ERROR, b"JUST_A_CODE"),
    ],
)
def test_too_few_arguments(kind: PacketType, body: bytes) -> None:
    decoder = Decoder()
    decoder.feed(header(RES, kind, len(body)) + body)
    assert_server_error(decoder, f"{kind.name} needs {ARG_COUNTS[kind]}")


def test_argumentless_packet_with_body_is_rejected() -> None:
    decoder = Decoder()
    decoder.feed(header(RES, T.NOOP, 3) + b"abc")
    assert_server_error(decoder, "NOOP must have an empty body")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prefix=st.sampled_from([b"", _STREAM[:40], RES, header(RES, 31, 3)]),
    junk=st.binary(max_size=300),
    request=st.booleans(),
    max_packet=st.sampled_from([0, 16, DEFAULT_MAX_PACKET]),
    chunk=st.integers(min_value=1, max_value=64),
)
def test_arbitrary_bytes_raise_only_protocol_error(
    prefix: bytes, junk: bytes, request: bool, max_packet: int, chunk: int
) -> None:
    decoder = Decoder(request=request, max_packet=max_packet)
    data = prefix + junk
    try:
        for i in range(0, len(data), chunk):
            decoder.feed(data[i : i + chunk])
            for packet in decoder:
                assert isinstance(packet.kind, PacketType)
                assert len(packet.args) == ARG_COUNTS[packet.kind]
                assert packet.request is request
    except ProtocolError as error:
        assert error.side == "server"


def test_work_fail_with_trailing_nul() -> None:
    # captured: gearmand's WORK_FAIL to a client without OPTION_REQ "exceptions"
    wire = b"\x00RES\x00\x00\x00\x0e\x00\x00\x00\x07H:vm:5\x00"
    assert decode_all(wire) == [Packet(T.WORK_FAIL, (b"H:vm:5",), False)]
    plain = b"\x00RES\x00\x00\x00\x0e\x00\x00\x00\x06H:vm:4"
    assert decode_all(plain) == [Packet(T.WORK_FAIL, (b"H:vm:4",), False)]


# -------------------------------------------------------------------------------- typed replies


@pytest.mark.parametrize("good", [b"0", b"7", b"10", b"4294967295", b"9" * 20])
def test_parse_int_accepts_unsigned_decimal(good: bytes) -> None:
    assert parse_int(good) == int(good)


@pytest.mark.parametrize(
    "junk",
    [b"", b"-1", b"+1", b" 1", b"1 ", b"1_0", b"0x1", b"1.5", b"\xd9\xa1", b"9" * 21, b"abc"],
)
def test_parse_int_rejects_junk(junk: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_int(junk)
    assert info.value.side == "server"


def test_check_unique_limits() -> None:
    assert check_unique(b"u" * 63) == b"u" * 63
    assert check_unique(b"") == b""
    with pytest.raises(ProtocolError, match="truncates") as info:
        check_unique(b"u" * 64)
    assert info.value.side == "local"
    assert "64" in str(info.value) and "65" in str(info.value)
    with pytest.raises(ProtocolError, match="NUL") as info:
        check_unique(b"a\0b")
    assert info.value.side == "local"


def test_status_replies_from_captured_bytes() -> None:
    # captured: GET_STATUS of a running job at 3/10, GET_STATUS_UNIQUE, and unknown ones
    wire = (
        b"\x00RES\x00\x00\x00\x14\x00\x00\x00\x0fH:vm:4\x001\x001\x003\x0010"
        b"\x00RES\x00\x00\x00*\x00\x00\x00\x0euu1\x001\x001\x003\x0010\x001"
        b"\x00RES\x00\x00\x00\x14\x00\x00\x00\x10H:none:9\x000\x000\x000\x000"
        b"\x00RES\x00\x00\x00*\x00\x00\x00\x0enope\x000\x000\x000\x000\x000"
    )
    a, b, c, d = decode_all(wire)
    assert StatusReply.from_packet(a) == StatusReply(b"H:vm:4", True, True, 3, 10)
    assert UniqueStatusReply.from_packet(b) == UniqueStatusReply(b"uu1", True, True, 3, 10, 1)
    assert StatusReply.from_packet(c) == StatusReply(b"H:none:9", False, False, 0, 0)
    assert UniqueStatusReply.from_packet(d) == UniqueStatusReply(b"nope", False, False, 0, 0, 0)
    with pytest.raises(ProtocolError, match="STATUS_RES_UNIQUE"):
        UniqueStatusReply.from_packet(a)
    with pytest.raises(ProtocolError, match="STATUS_RES"):
        StatusReply.from_packet(b)


def test_status_reply_with_junk_numbers() -> None:
    for args in (
        (b"h", b"1", b"1", b"x", b"10"),
        (b"h", b"2", b"1", b"1", b"10"),
        (b"h", b"1", b"", b"1", b"10"),
    ):
        with pytest.raises(ProtocolError) as info:
            StatusReply.from_packet(Packet(T.STATUS_RES, args, False))
        assert info.value.side == "server"


def test_job_assignment_from_all_three_kinds() -> None:
    # captured JOB_ASSIGN_UNIQ
    uniq = decode_all(b"\x00RES\x00\x00\x00\x1f\x00\x00\x00\x11H:vm:3\x00slow\x00u3\x00fg")[0]
    assert JobAssignment.from_packet(uniq) == JobAssignment(b"H:vm:3", b"slow", b"u3", b"", b"fg")
    plain = Packet(T.JOB_ASSIGN, (b"H:a:1", b"fn", b"w\0x"), False)
    assert JobAssignment.from_packet(plain) == JobAssignment(b"H:a:1", b"fn", b"", b"", b"w\0x")
    full = Packet(T.JOB_ASSIGN_ALL, (b"H:a:2", b"fn", b"u", b"red", b""), False)
    assert JobAssignment.from_packet(full) == JobAssignment(b"H:a:2", b"fn", b"u", b"red", b"")
    with pytest.raises(ProtocolError, match="JOB_ASSIGN"):
        JobAssignment.from_packet(Packet(T.NO_JOB, (), False))


def test_error_reply_from_captured_bytes() -> None:
    wire = b"\x00RES\x00\x00\x00\x13\x00\x00\x00)ARGUMENT_TOO_LARGE\x00Unique value too large"
    reply = ErrorReply.from_packet(decode_all(wire)[0])
    assert reply == ErrorReply("ARGUMENT_TOO_LARGE", "Unique value too large")
    assert str(reply) == "ARGUMENT_TOO_LARGE: Unique value too large"
    with pytest.raises(ProtocolError, match="ERROR"):
        ErrorReply.from_packet(Packet(T.NOOP, (), False))


# -------------------------------------------------------------------------------- admin protocol


def test_encode_admin() -> None:
    assert encode_admin("status") == b"status\n"
    assert encode_admin("show unique jobs") == b"show unique jobs\n"
    for bad in ("status\nshutdown", "version\r", "", "\0status"):
        with pytest.raises(ProtocolError) as info:
            encode_admin(bad)
        assert info.value.side == "local"


# captured from gearmand 1.1.20
STATUS_REPLY = b"fn two\t0\t0\t1\nrev\t2\t0\t1\nslow\t1\t1\t1\n.\n"
WORKERS_REPLY = b"38 127.0.0.1 worker-7 : slow fn two rev\n39 127.0.0.1 - :\n40 127.0.0.1 - :\n.\n"
SHOW_JOBS_REPLY = b"H:vm:1\t0\t0\t1\nH:vm:2\t0\t0\t1\nH:vm:3\t0\t0\t0\n.\n"
SHOW_UNIQUE_REPLY = b"u1\nu2\nu3\n.\n"


def read_admin(data: bytes, multiline: bool, step: int = 0) -> list[str] | None:
    reader = AdminReader(multiline)
    if step:
        for i in range(0, len(data), step):
            assert reader.result() is None
            reader.feed(data[i : i + step])
    else:
        reader.feed(data)
    return reader.result()


def test_admin_reader_multiline_byte_by_byte() -> None:
    expected = ["fn two\t0\t0\t1", "rev\t2\t0\t1", "slow\t1\t1\t1"]
    assert read_admin(STATUS_REPLY, True) == expected
    assert read_admin(STATUS_REPLY, True, step=1) == expected
    assert read_admin(b".\n", True) == []
    assert read_admin(STATUS_REPLY[:-2], True) is None  # no terminating "." yet
    assert read_admin(b"a\n..\n.\r\nignored", True) == ["a", ".."]


def test_admin_reader_single_line() -> None:
    assert read_admin(b"OK 1.1.20+ds\n", False) == ["OK 1.1.20+ds"]
    assert read_admin(b"OK\r\n", False, step=1) == ["OK"]
    assert read_admin(b"OK 10223", False) is None


@pytest.mark.parametrize("multiline", [False, True])
def test_admin_reader_err(multiline: bool) -> None:
    reader = AdminReader(multiline)
    reader.feed(b"ERR UNKNOWN_COMMAND Unknown+server+commandbogus\r")
    assert reader.result() is None
    reader.feed(b"\n")
    with pytest.raises(ProtocolError, match="UNKNOWN_COMMAND Unknown\\+server\\+commandbogus") as e:
        reader.result()
    assert e.value.side == "server"
    with pytest.raises(ProtocolError):
        reader.result()


def test_admin_status_row_starting_with_err_is_not_an_error() -> None:
    assert read_admin(b"ERR fn\t0\t0\t1\n.\n", True) == ["ERR fn\t0\t0\t1"]


def test_parse_status() -> None:
    lines = read_admin(STATUS_REPLY, True)
    assert lines is not None
    assert parse_status(lines) == [
        FunctionStatus("fn two", 0, 0, 1),
        FunctionStatus("rev", 2, 0, 1),
        FunctionStatus("slow", 1, 1, 1),
    ]
    assert parse_status(["tab\tin name\t1\t2\t3"]) == [FunctionStatus("tab\tin name", 1, 2, 3)]
    for bad in (["rev\t2\t0"], ["rev\tx\t0\t1"], ["rev\t-1\t0\t1"]):
        with pytest.raises(ProtocolError, match="status"):
            parse_status(bad)


def test_parse_workers() -> None:
    lines = read_admin(WORKERS_REPLY, True)
    assert lines is not None
    assert parse_workers(lines) == [
        WorkerInfo(38, "127.0.0.1", "worker-7", ("slow", "fn", "two", "rev")),
        WorkerInfo(39, "127.0.0.1", "-", ()),
        WorkerInfo(40, "127.0.0.1", "-", ()),
    ]
    assert parse_workers(["7 ::1 my id : a"]) == [WorkerInfo(7, "::1", "my id", ("a",))]
    for bad in (["garbage"], ["x 127.0.0.1 - :"]):
        with pytest.raises(ProtocolError, match="workers"):
            parse_workers(bad)


def test_parse_show_jobs() -> None:
    lines = read_admin(SHOW_JOBS_REPLY, True)
    assert lines is not None
    jobs = parse_show_jobs(lines)
    assert jobs[0] == QueuedJob("H:vm:1", 0, False, True, ("0", "0", "1"))
    assert [j.handle for j in jobs] == ["H:vm:1", "H:vm:2", "H:vm:3"]
    assert jobs[2].job_queued is False
    assert parse_show_jobs(["H:x:9\t2\t1\t0"]) == [
        QueuedJob("H:x:9", 2, True, False, ("2", "1", "0"))
    ]
    for bad in (["H:x:1\t0\t0"], ["H:x:1\ta\t0\t0"], ["\t0\t0\t0"]):
        with pytest.raises(ProtocolError, match="show jobs"):
            parse_show_jobs(bad)


def test_parse_show_unique_jobs() -> None:
    lines = read_admin(SHOW_UNIQUE_REPLY, True)
    assert lines is not None
    assert parse_show_unique_jobs(lines) == [UniqueJob(u, None) for u in ("u1", "u2", "u3")]
    assert parse_show_unique_jobs(["u9\tH:x:9"]) == [UniqueJob("u9", "H:x:9")]


# ------------------------------------------------------------------- hostile bytes (properties)


def _decode_pieces(
    pieces: list[bytes], request: bool, max_packet: int
) -> tuple[list[Packet], ProtocolError | None]:
    decoder = Decoder(request=request, max_packet=max_packet)
    out: list[Packet] = []
    try:
        for piece in pieces:
            decoder.feed(piece)
            out.extend(decoder)
    except ProtocolError as error:
        return out, error
    return out, None


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream=st.lists(packets(), max_size=5).map(
        lambda ps: b"".join(encode(p.kind, *p.args, request=False) for p in ps)
    ),
    junk=st.binary(max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
    max_packet=st.sampled_from([16, DEFAULT_MAX_PACKET]),
)
def test_chunking_never_changes_what_is_decoded(
    stream: bytes, junk: bytes, cuts: list[int], max_packet: int
) -> None:
    """Valid packets then (maybe) junk, fed whole or cut anywhere: the same packets, and the same
    outcome (a ProtocolError from the server side, or none)."""
    data = stream + junk
    whole, whole_error = _decode_pieces([data], False, max_packet)
    split, split_error = _decode_pieces(_cut(data, cuts), False, max_packet)
    assert split == whole
    assert (split_error is None) == (whole_error is None)
    for error in (whole_error, split_error):
        assert error is None or error.side == "server"
    if max_packet == DEFAULT_MAX_PACKET:
        # everything valid before the junk comes out, whatever the junk does after it
        assert whole[: len(decode_all(stream))] == decode_all(stream)


_admin_bytes = st.one_of(
    st.binary(max_size=200),
    st.lists(
        st.sampled_from(
            [
                b"fn\t1\t0\t1",
                b"38 127.0.0.1 - : a b",
                b"H:x:1\t0\t0\t1",
                b"ERR X y",
                b".",
                b"",
                b"\xff\xfe",
                b"a\tb",
                b"1 ::1 id :",
                b"u\tH:x:2",
                b"\r",
            ]
        ),
        max_size=8,
    ).map(b"\n".join),
)


@settings(max_examples=300, deadline=None)
@given(
    data=_admin_bytes,
    multiline=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=500), max_size=10),
)
def test_admin_reader_and_parsers_raise_only_protocol_error(
    data: bytes, multiline: bool, cuts: list[int]
) -> None:
    def read(pieces: list[bytes]) -> tuple[list[str] | None, str | None]:
        reader = AdminReader(multiline)
        for piece in pieces:
            reader.feed(piece)  # never raises
        try:
            return reader.result(), None
        except ProtocolError as error:
            assert error.side == "server"
            return None, str(error)

    whole = read([data])
    assert read(_cut(data, cuts)) == whole
    lines = whole[0]
    if lines is None:
        return
    assert all("\n" not in line for line in lines)
    for parse in (parse_status, parse_workers, parse_show_jobs, parse_show_unique_jobs):
        try:
            parse(lines)
        except ProtocolError as error:
            assert error.side == "server"


@given(st.binary(max_size=30))
def test_parse_int_takes_only_plain_decimals(data: bytes) -> None:
    try:
        value = parse_int(data)
    except ProtocolError as error:
        assert error.side == "server"
        assert not (0 < len(data) <= 20 and data.isdigit())
    else:
        assert int(data.decode("ascii")) == value >= 0


def test_encode_status_is_encode_request_of_work_status() -> None:
    from gearstash.protocol.packets import encode_status

    for handle, num, den in ((b"H:w:1", 1, 2), (b"", 0, 0), (b"H:x:\xff", 2**40, 7), (b"h", 10, 3)):
        want = encode_request(PacketType.WORK_STATUS, handle, b"%d" % num, b"%d" % den)
        assert encode_status(handle, num, den) == want
    with pytest.raises(ProtocolError) as info:
        encode_status(b"H:\x00", 1, 2)
    assert info.value.side == "local"
