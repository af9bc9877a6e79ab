"""The worker's side of one job-server connection, as a sans-IO state machine (h11 style).

A worker connection goes round one loop: say hello (``SET_CLIENT_ID``, ``CAN_DO``…), ask for a
job (``GRAB_JOB_UNIQ``), and either run the job it is assigned or, on ``NO_JOB``, announce
``PRE_SLEEP`` and wait for the server's ``NOOP`` before asking again. :class:`WorkerSide` keeps
where the connection stands and says what to send; the caller moves the bytes and runs the jobs.
Nothing here touches a socket, a clock or a thread::

    side = WorkerSide(b"my-worker", [("reverse", None)])
    send(side.connected())          # hello; the state is now IDLE
    send(side.grab())               # GRABBING
    event = side.receive(packet)    # Assigned / NoJob / Woken / ErrorAnswer / Ignored / …
    ...                             # Assigned: run it; then send(final + side.finished(grab=True))

A worker may ask for its next job while one runs (``side.grab_ahead()`` when RUNNING): the server's
answer then waits on the connection, and ``finished`` sends no second grab.

Older and other job servers speak only the original protocol: when a server answers ``ERROR``
"unknown command" (:attr:`~gearstash.protocol.packets.ErrorReply.unknown_command`) to
``GRAB_JOB_UNIQ`` before it ever accepted one, the connection falls back to ``GRAB_JOB``
(:class:`ErrorAnswer` then carries the request to send instead), and the fallback is kept across
reconnects to that server. A server that refuses ``WORK_DATA``/``WORK_WARNING`` turns
:attr:`WorkerSide.work_output` off: the worker stores them and no longer sends them there.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from gearstash.protocol.packets import (
    ErrorReply,
    JobAssignment,
    Packet,
    PacketType,
    encode_request,
)

__all__ = [
    "Assigned",
    "ErrorAnswer",
    "Ignored",
    "LinkState",
    "NoJob",
    "Unexpected",
    "Woken",
    "WorkerEvent",
    "WorkerSide",
]


class LinkState(enum.Enum):
    """Where a worker connection stands."""

    DOWN = "down"
    """Not connected (the initial state, and after :meth:`WorkerSide.lost`)."""
    IDLE = "idle"
    """Connected and awake; nothing asked yet: :meth:`WorkerSide.grab` next."""
    GRABBING = "grabbing"
    """A grab was sent; the answer is a job, ``NO_JOB`` or an error."""
    SLEEPING = "sleeping"
    """``PRE_SLEEP`` was sent; the server's ``NOOP`` wakes the connection."""
    RUNNING = "running"
    """A job was assigned and runs; :meth:`WorkerSide.finished` ends it."""


@dataclass(frozen=True, slots=True)
class Assigned:
    """The server assigned a job: run it, then call :meth:`WorkerSide.finished`."""

    assignment: JobAssignment


@dataclass(frozen=True, slots=True)
class NoJob:
    """No job for now: send ``send`` (``PRE_SLEEP``) and wait for the connection to be readable."""

    send: bytes


@dataclass(frozen=True, slots=True)
class Woken:
    """A sleeping connection got ``NOOP``: it is IDLE again, grab next."""


@dataclass(frozen=True, slots=True)
class ErrorAnswer:
    """The server answered ``ERROR``. ``send`` is the request to send instead (the ``GRAB_JOB``
    fallback) or empty when nothing is to be done but to log it and read on. ``no_work_output``:
    this error says the server takes no ``WORK_DATA``/``WORK_WARNING`` (see
    :attr:`WorkerSide.work_output`); say it once, it is not sent again."""

    error: ErrorReply
    send: bytes
    no_work_output: bool = False


@dataclass(frozen=True, slots=True)
class Ignored:
    """Nothing to do (a ``NOOP`` left over while a grab is answered): read on."""


@dataclass(frozen=True, slots=True)
class Unexpected:
    """A packet the worker side has no use for in this state (logged and ignored by callers)."""

    packet: Packet


WorkerEvent = Assigned | NoJob | Woken | ErrorAnswer | Ignored | Unexpected

_GRAB_UNIQ = encode_request(PacketType.GRAB_JOB_UNIQ)
_GRAB_PLAIN = encode_request(PacketType.GRAB_JOB)
_PRE_SLEEP = encode_request(PacketType.PRE_SLEEP)
_ASSIGN = frozenset({PacketType.JOB_ASSIGN_UNIQ, PacketType.JOB_ASSIGN, PacketType.JOB_ASSIGN_ALL})
_WOKEN = Woken()
_NO_JOB = NoJob(_PRE_SLEEP)
_IGNORED = Ignored()


_WORK_OUTPUT = frozenset({"work_data", "work_warning"})


class WorkerSide:
    """The state of one worker connection and the bytes it should send next.

    :param client_id: sent as ``SET_CLIENT_ID`` in the hello.
    :param functions: ``(name, timeout)`` pairs, sent as ``CAN_DO`` (``timeout`` None) or
        ``CAN_DO_TIMEOUT``.

    Calls out of turn (a grab while RUNNING, ``finished`` while IDLE…) raise ``RuntimeError``:
    they are bugs of the caller, never of the server. What the server sends is never an
    exception here: an unexpected packet comes back as :class:`Unexpected`.
    """

    __slots__ = ("_ahead", "_confirmed", "_grab", "_hello", "state", "work_output")

    def __init__(self, client_id: bytes, functions: Sequence[tuple[str, int | None]]) -> None:
        self.state = LinkState.DOWN
        self.work_output = True
        """False once this server refused ``WORK_DATA`` or ``WORK_WARNING`` (Perl's
        Gearman::Server has neither): the worker then stores them without sending them."""
        self._grab = _GRAB_UNIQ
        self._confirmed = False  # the server accepted GRAB_JOB_UNIQ once: never fall back
        self._ahead = False  # a grab was sent while the job runs (grab_ahead)
        self._hello = b"".join(
            [encode_request(PacketType.SET_CLIENT_ID, client_id)]
            + [
                encode_request(PacketType.CAN_DO, name.encode())
                if timeout is None
                else encode_request(PacketType.CAN_DO_TIMEOUT, name.encode(), b"%d" % timeout)
                for name, timeout in functions
            ]
        )

    @property
    def uniques(self) -> bool:
        """False once this server proved it has no ``GRAB_JOB_UNIQ`` (jobs then come without
        their unique: the worker stores them with an empty one)."""
        return self._grab is _GRAB_UNIQ

    def connected(self) -> bytes:
        """The connection is (re)made: returns the hello to send; the state becomes IDLE."""
        self.state = LinkState.IDLE
        return self._hello

    def lost(self) -> None:
        """The connection broke or was closed: DOWN until :meth:`connected`."""
        self.state = LinkState.DOWN
        self._ahead = False

    def grab_ahead(self) -> bytes:
        """Ask for the next job while the assigned one runs: returns the grab request (sent
        once per job); its answer is read after :meth:`finished`, which then sends no grab."""
        if self.state is not LinkState.RUNNING or self._ahead:
            raise RuntimeError(f"grab ahead while {self.state.value}" + " (again)" * self._ahead)
        self._ahead = True
        return self._grab

    def grab(self) -> bytes:
        """Ask for a job: returns the grab request; IDLE → GRABBING."""
        if self.state is not LinkState.IDLE:
            raise RuntimeError(f"grab while {self.state.value}")
        self.state = LinkState.GRABBING
        return self._grab

    def finished(self, *, grab: bool) -> bytes:
        """The assigned job ended (its final packet is the caller's to send first). With ``grab``
        returns the next grab request (RUNNING → GRABBING), else nothing (RUNNING → IDLE).
        After :meth:`grab_ahead` the grab is out already: returns nothing and the state is
        GRABBING either way (the answer is still to come; a job it assigns is the caller's)."""
        if self.state is not LinkState.RUNNING:
            raise RuntimeError(f"finished while {self.state.value}")
        if self._ahead:
            self._ahead = False
            self.state = LinkState.GRABBING
            return b""
        if grab:
            self.state = LinkState.GRABBING
            return self._grab
        self.state = LinkState.IDLE
        return b""

    def _refuses_work_output(self, error: ErrorReply) -> bool:
        """True (and :attr:`work_output` turned off) when ``error`` refuses a WORK_DATA or
        WORK_WARNING: the server names it, or, not naming any, it does not know a command while
        the grab is settled (the only optional requests a worker sends are those two)."""
        if not self.work_output or not error.unknown_command:
            return False
        named = error.refused_command
        settled = self._confirmed or self._grab is _GRAB_PLAIN
        if named in _WORK_OUTPUT or (named is None and settled):
            self.work_output = False
            return True
        return False

    def receive(self, packet: Packet) -> WorkerEvent:
        """What ``packet`` from the server means, and the state that follows."""
        kind = packet.kind
        state = self.state
        if state is LinkState.GRABBING:
            if kind in _ASSIGN:
                if kind is PacketType.JOB_ASSIGN_UNIQ or kind is PacketType.JOB_ASSIGN_ALL:
                    self._confirmed = True
                self.state = LinkState.RUNNING
                return Assigned(JobAssignment.from_packet(packet))
            if kind is PacketType.NO_JOB:
                if self._grab is _GRAB_UNIQ:
                    self._confirmed = True
                self.state = LinkState.SLEEPING
                return _NO_JOB
            if kind is PacketType.ERROR:
                error = ErrorReply.from_packet(packet)
                if self._refuses_work_output(error):
                    return ErrorAnswer(error, b"", no_work_output=True)
                if self._grab is _GRAB_UNIQ and not self._confirmed and error.unknown_command:
                    self._grab = _GRAB_PLAIN  # an old server: no GRAB_JOB_UNIQ
                    return ErrorAnswer(error, _GRAB_PLAIN)
                return ErrorAnswer(error, b"")
            if kind is PacketType.NOOP:
                return _IGNORED  # left over from sleeping: the grab's answer is still to come
            return Unexpected(packet)
        if state is LinkState.SLEEPING and kind is PacketType.NOOP:
            self.state = LinkState.IDLE
            return _WOKEN
        if kind is PacketType.ERROR:
            error = ErrorReply.from_packet(packet)
            return ErrorAnswer(error, b"", no_work_output=self._refuses_work_output(error))
        if kind is PacketType.NOOP:
            return _IGNORED
        return Unexpected(packet)
