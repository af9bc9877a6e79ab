"""The worker's grab / sleep / wake state machine, sans-IO: bytes and packets, no sockets."""

from __future__ import annotations

import pytest

from gearstash.protocol.packets import (
    Decoder,
    Packet,
    PacketType,
    encode_request,
    encode_response,
)
from gearstash.protocol.worker_side import (
    Assigned,
    ErrorAnswer,
    Ignored,
    LinkState,
    NoJob,
    Unexpected,
    Woken,
    WorkerSide,
)

T = PacketType


def reply(kind: PacketType, *args: bytes) -> Packet:
    """A packet as the worker's decoder hands it over."""
    decoder = Decoder()
    decoder.feed(encode_response(kind, *args))
    packet = decoder.next_packet()
    assert packet is not None
    return packet


def sent(data: bytes) -> list[tuple[PacketType, tuple[bytes, ...]]]:
    """What the worker side asked the server, decoded as the server would."""
    decoder = Decoder(request=True)
    decoder.feed(data)
    return [(p.kind, p.args) for p in decoder]


def new_side() -> WorkerSide:
    return WorkerSide(b"w-1", [("reverse", None), ("slow", 30)])


def test_hello_sets_the_client_id_and_every_function() -> None:
    side = new_side()
    assert side.state is LinkState.DOWN
    assert sent(side.connected()) == [
        (T.SET_CLIENT_ID, (b"w-1",)),
        (T.CAN_DO, (b"reverse",)),
        (T.CAN_DO_TIMEOUT, (b"slow", b"30")),
    ]
    assert side.state is LinkState.IDLE


def test_grab_run_and_grab_again() -> None:
    side = new_side()
    side.connected()
    assert sent(side.grab()) == [(T.GRAB_JOB_UNIQ, ())]
    assert side.state is LinkState.GRABBING
    event = side.receive(reply(T.JOB_ASSIGN_UNIQ, b"H:x:1", b"reverse", b"u-1", b"abc"))
    assert isinstance(event, Assigned)
    assert (event.assignment.handle, event.assignment.unique) == (b"H:x:1", b"u-1")
    assert event.assignment.workload == b"abc"
    assert side.state is LinkState.RUNNING
    assert sent(side.finished(grab=True)) == [(T.GRAB_JOB_UNIQ, ())]
    assert side.state is LinkState.GRABBING


def test_finished_without_grab_goes_idle() -> None:
    side = new_side()
    side.connected()
    side.grab()
    side.receive(reply(T.JOB_ASSIGN, b"H:x:1", b"reverse", b"abc"))
    assert side.finished(grab=False) == b""
    assert side.state is LinkState.IDLE


def test_no_job_sleeps_until_noop() -> None:
    side = new_side()
    side.connected()
    side.grab()
    event = side.receive(reply(T.NO_JOB))
    assert isinstance(event, NoJob) and sent(event.send) == [(T.PRE_SLEEP, ())]
    assert side.state is LinkState.SLEEPING
    assert isinstance(side.receive(reply(T.NOOP)), Woken)
    assert side.state is LinkState.IDLE


def test_noop_while_grabbing_is_ignored_and_the_answer_still_counts() -> None:
    side = new_side()
    side.connected()
    side.grab()
    assert isinstance(side.receive(reply(T.NOOP)), Ignored)
    assert side.state is LinkState.GRABBING
    assert isinstance(side.receive(reply(T.NO_JOB)), NoJob)


def test_stale_error_while_grabbing_changes_nothing() -> None:
    side = new_side()
    side.connected()
    side.grab()
    event = side.receive(reply(T.ERROR, b"JOB_NOT_FOUND", b"Job given in work result not found"))
    assert isinstance(event, ErrorAnswer) and event.send == b""
    assert event.error.code == "JOB_NOT_FOUND"
    assert side.state is LinkState.GRABBING and side.uniques


@pytest.mark.parametrize(
    ("code", "text"),
    [(b"ERR_UNKNOWN_COMMAND", b"Unknown+server+command"), (b"unknown_command", b"Unknown command")],
)
def test_an_old_server_without_grab_job_uniq_gets_grab_job(code: bytes, text: bytes) -> None:
    side = new_side()
    side.connected()
    side.grab()
    event = side.receive(reply(T.ERROR, code, text))
    assert isinstance(event, ErrorAnswer)
    assert sent(event.send) == [(T.GRAB_JOB, ())]
    assert not side.uniques and side.state is LinkState.GRABBING
    assigned = side.receive(reply(T.JOB_ASSIGN, b"H:x:1", b"reverse", b"abc"))
    assert isinstance(assigned, Assigned) and assigned.assignment.unique == b""
    # the fallback is kept for the next grab and across a reconnect
    assert sent(side.finished(grab=True)) == [(T.GRAB_JOB, ())]
    side.lost()
    side.connected()
    assert sent(side.grab()) == [(T.GRAB_JOB, ())]


def test_a_server_that_accepted_grab_job_uniq_never_falls_back() -> None:
    side = new_side()
    side.connected()
    side.grab()
    side.receive(reply(T.NO_JOB))
    side.receive(reply(T.NOOP))
    side.grab()
    event = side.receive(reply(T.ERROR, b"ERR_UNKNOWN_COMMAND", b"Unknown"))
    assert isinstance(event, ErrorAnswer) and event.send == b""
    assert side.uniques


def test_unexpected_packets_are_reported_not_raised() -> None:
    side = new_side()
    side.connected()
    side.grab()
    event = side.receive(reply(T.JOB_CREATED, b"H:x:1"))
    assert isinstance(event, Unexpected) and event.packet.kind is T.JOB_CREATED
    side.receive(reply(T.NO_JOB))
    assert isinstance(side.receive(reply(T.WORK_COMPLETE, b"H:x:1", b"")), Unexpected)
    assert side.state is LinkState.SLEEPING


def test_calls_out_of_turn_are_caller_bugs() -> None:
    side = new_side()
    with pytest.raises(RuntimeError, match="grab while down"):
        side.grab()
    side.connected()
    with pytest.raises(RuntimeError, match="finished while idle"):
        side.finished(grab=True)
    side.grab()
    with pytest.raises(RuntimeError, match="grab while grabbing"):
        side.grab()


def test_lost_goes_down_from_any_state() -> None:
    side = new_side()
    side.connected()
    side.grab()
    side.receive(reply(T.JOB_ASSIGN_UNIQ, b"H:x:1", b"reverse", b"u", b""))
    side.lost()
    assert side.state is LinkState.DOWN
    assert encode_request(T.SET_CLIENT_ID, b"w-1") in side.connected()


def test_grab_ahead_asks_while_running_and_finished_sends_no_second_grab() -> None:
    side = new_side()
    side.connected()
    side.grab()
    side.receive(reply(T.JOB_ASSIGN_UNIQ, b"H:x:1", b"reverse", b"u-1", b"abc"))
    assert sent(side.grab_ahead()) == [(T.GRAB_JOB_UNIQ, ())]
    assert side.state is LinkState.RUNNING  # the job still runs
    with pytest.raises(RuntimeError, match=r"grab ahead while running \(again\)"):
        side.grab_ahead()
    assert side.finished(grab=True) == b""  # the grab is out already
    assert side.state is LinkState.GRABBING
    event = side.receive(reply(T.JOB_ASSIGN_UNIQ, b"H:x:2", b"reverse", b"u-2", b"def"))
    assert isinstance(event, Assigned) and event.assignment.handle == b"H:x:2"
    assert sent(side.grab_ahead()) == [(T.GRAB_JOB_UNIQ, ())]  # once per job
    assert side.finished(grab=False) == b""  # stopping: the answer is still to come
    assert side.state is LinkState.GRABBING
    assert isinstance(side.receive(reply(T.NO_JOB)), NoJob)
    assert side.state is LinkState.SLEEPING


def test_grab_ahead_only_while_running_and_lost_forgets_it() -> None:
    side = new_side()
    side.connected()
    with pytest.raises(RuntimeError, match="grab ahead while idle"):
        side.grab_ahead()
    side.grab()
    side.receive(reply(T.JOB_ASSIGN_UNIQ, b"H:x:1", b"reverse", b"u", b""))
    side.grab_ahead()
    side.lost()
    side.connected()
    side.grab()
    side.receive(reply(T.JOB_ASSIGN_UNIQ, b"H:x:2", b"reverse", b"u", b""))
    assert sent(side.finished(grab=True)) == [(T.GRAB_JOB_UNIQ, ())]  # nothing was ahead
