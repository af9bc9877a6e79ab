"""Coverage-guided fuzz target for the sans-IO Gearman codec (atheris / libFuzzer).

    .venv/bin/python fuzz/fuzz_protocol.py -runs=1000000 CORPUS_DIR fuzz/seeds/protocol

The first two bytes of an input steer the harness, the rest is what a job server "sent":

* byte 0, bits 0-1: the target -- 0/1 the binary :class:`Decoder`, 2 the admin
  :class:`AdminReader` + ``parse_*``, 3 the small parsers (``parse_int``, ``encode_admin``);
  bit 2: ``Decoder(request=True)`` / ``AdminReader(multiline=True)``; bits 3-4: ``max_packet``
  (0, 16, 4096 or the default 128 MiB);
* byte 1 seeds the split points: the stream is fed in random chunks (1 byte up to all of it).

A crash is any exception other than :class:`ProtocolError` (``side="server"`` for received bytes),
or a broken invariant (``AssertionError``):

* feeding the stream whole and in chunks gives the same packets and the same failure/no failure;
* every packet has a known type and exactly ``ARG_COUNTS[kind]`` arguments, and (except WORK_FAIL,
  whose trailing NUL is stripped) re-encodes to exactly the bytes it was decoded from;
* the typed views (``StatusReply.from_packet``...) raise only ProtocolError;
* an AdminReader gives the same lines whole or chunked; the ``parse_*`` functions of its lines raise
  only ProtocolError.
"""

from __future__ import annotations

import contextlib
import random
import sys

import atheris

with atheris.instrument_imports(include=["gearstash"]):
    from gearstash.errors import ProtocolError
    from gearstash.protocol.admin import (
        AdminReader,
        encode_admin,
        parse_show_jobs,
        parse_show_unique_jobs,
        parse_status,
        parse_workers,
    )
    from gearstash.protocol.packets import (
        ARG_COUNTS,
        DEFAULT_MAX_PACKET,
        Decoder,
        ErrorReply,
        JobAssignment,
        Packet,
        PacketType,
        StatusReply,
        UniqueStatusReply,
        encode,
        parse_int,
    )

MAX_PACKETS = (0, 16, 4096, DEFAULT_MAX_PACKET)
T = PacketType
TYPED = {
    T.STATUS_RES: StatusReply.from_packet,
    T.STATUS_RES_UNIQUE: UniqueStatusReply.from_packet,
    T.JOB_ASSIGN: JobAssignment.from_packet,
    T.JOB_ASSIGN_UNIQ: JobAssignment.from_packet,
    T.JOB_ASSIGN_ALL: JobAssignment.from_packet,
    T.ERROR: ErrorReply.from_packet,
}


def chunks(data: bytes, seed: int) -> list[bytes]:
    """``data`` cut at random points (deterministic for a seed)."""
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(data):
        step = rng.choice((1, 2, 3, 5, 12, 13, rng.randint(1, 64), len(data)))
        out.append(data[i : i + step])
        i += step
    return out


def decode(pieces: list[bytes], request: bool, max_packet: int) -> tuple[list[Packet], bool]:
    """The packets decoded from ``pieces`` and whether the decoder failed (ProtocolError)."""
    decoder = Decoder(request=request, max_packet=max_packet)
    packets: list[Packet] = []
    try:
        for piece in pieces:
            decoder.feed(piece)
            packets.extend(decoder)
    except ProtocolError as error:
        assert error.side == "server", error
        # a failed decoder stays failed
        try:
            decoder.next_packet()
        except ProtocolError as again:
            assert str(again) == str(error)
        else:
            raise AssertionError("a failed decoder returned again") from None
        return packets, True
    return packets, False


def fuzz_decoder(stream: bytes, request: bool, max_packet: int, seed: int) -> None:
    whole, whole_failed = decode([stream], request, max_packet)
    split, split_failed = decode(chunks(stream, seed), request, max_packet)
    assert split == whole, "chunking changed the decoded packets"
    assert split_failed == whole_failed, "chunking changed whether decoding failed"
    wire = b""
    for packet in whole:
        assert isinstance(packet.kind, PacketType)
        assert packet.request is request
        assert len(packet.args) == ARG_COUNTS[packet.kind]
        assert all(type(a) is bytes for a in packet.args)
        if packet.kind is T.WORK_FAIL:
            wire = b""  # its trailing NUL was dropped: stop comparing bytes from here on
            stream = b""
        elif stream:
            wire += encode(packet.kind, *packet.args, request=request)
            assert stream.startswith(wire), "a packet does not re-encode to its own bytes"
        view = TYPED.get(packet.kind)
        if view is not None:
            with contextlib.suppress(ProtocolError):
                view(packet)


def read_admin(pieces: list[bytes], multiline: bool) -> tuple[list[str] | None, bool]:
    reader = AdminReader(multiline)
    for piece in pieces:
        reader.feed(piece)
    try:
        return reader.result(), False
    except ProtocolError as error:
        assert error.side == "server"
        return None, True


def fuzz_admin(stream: bytes, multiline: bool, seed: int) -> None:
    whole = read_admin([stream], multiline)
    assert read_admin(chunks(stream, seed), multiline) == whole, "chunking changed the reply"
    lines = whole[0]
    if not lines:
        return
    for parse in (parse_status, parse_workers, parse_show_jobs, parse_show_unique_jobs):
        with contextlib.suppress(ProtocolError):
            parse(lines)


def fuzz_small(stream: bytes) -> None:
    try:
        value = parse_int(stream)
    except ProtocolError:
        pass
    else:
        assert 0 <= value < 10**20 and str(value).encode() == stream.lstrip(b"0").rjust(1, b"0")
    text = stream.decode("utf-8", "surrogateescape")
    try:
        line = encode_admin(text)
    except ProtocolError as error:
        assert error.side == "local"
    else:
        assert line.endswith(b"\n") and line.count(b"\n") == 1 and b"\0" not in line


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    flags, seed, stream = data[0], data[1], data[2:]
    target = flags & 3
    option = bool(flags & 4)
    if target <= 1:
        fuzz_decoder(stream, option, MAX_PACKETS[(flags >> 3) & 3], seed)
    elif target == 2:
        fuzz_admin(stream, option, seed)
    else:
        fuzz_small(stream)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
