"""What a read sends and what it makes of the answers: read scripts in, job records out. No I/O.

One read script per distinct reference, in one pipeline: READ for a complete reference (its job's
keys), READ_REF for one without server or unique (it follows the handle index inside the script,
to the newest matching job that has not vanished). A job asked for twice yields a record each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gearstash.errors import StoreError
from gearstash.records import JobError, JobKey, JobRecord, JobRef, State, StatusPoint

from .connection import Command
from .layout import Layout, decode_key
from .scripts import READ_REF_SHA, READ_SHA

_STATES = {state.value.encode(): state for state in State}


class ReadBatch:
    """The read scripts for some references (:attr:`commands`), and how to answer each one."""

    __slots__ = ("after", "commands", "order", "slots")

    def __init__(self, layout: Layout, prefix: bytes, refs: Sequence[JobRef], after: int) -> None:
        self.after = after
        commands: list[Command] = []
        slots: dict[JobRef, int] = {}
        order: list[int] = []
        for ref in refs:
            slot = slots.get(ref)
            if slot is None:
                slot = slots[ref] = len(commands)
                server, unique = ref.server, ref.unique
                if server is not None and unique is not None:
                    names = layout.keys(JobKey(server, ref.handle, unique))
                    # job, data, warnings, status, gone
                    commands.append((b"EVALSHA", READ_SHA, 5, *names[2:7], after))
                else:
                    commands.append(
                        (
                            b"EVALSHA",
                            READ_REF_SHA,
                            1,
                            layout.index(ref.handle),
                            prefix,
                            ref.handle,
                            server or b"",
                            b"0" if server is None else b"1",
                            unique or b"",
                            b"0" if unique is None else b"1",
                            after,
                        )
                    )
            order.append(slot)
        self.commands = commands
        self.slots = slots  # each distinct reference -> its command
        self.order = order  # each reference asked for -> its command

    def records(self, replies: list[Any], name: str) -> list[JobRecord | None]:
        """The record of each reference from the scripts' ``replies``; ``name`` for errors."""
        after = self.after
        records: list[JobRecord | None] = []
        for ref, reply in zip(self.slots, replies, strict=True):
            try:
                if ref.server is not None and ref.unique is not None:
                    key = JobKey(ref.server, ref.handle, ref.unique)
                    records.append(_record(key, reply, after))
                elif reply is None:
                    records.append(None)
                else:
                    found = decode_key(reply[0])
                    records.append(None if found is None else _record(found, reply[1:], after))
            except (KeyError, ValueError, IndexError, TypeError) as exc:
                raise StoreError(
                    f"{name}: read failed: a malformed job record for {ref} "
                    f"({type(exc).__name__}: {exc})"
                ) from exc
        out: list[JobRecord | None] = []
        used: set[int] = set()
        for slot in self.order:
            record = records[slot]
            if record is not None and slot in used:  # a job asked for twice: a record each
                record = record.copy()
            used.add(slot)
            out.append(record)
        return out


def _float(value: bytes | None) -> float | None:
    return None if value is None else float(value)


def _record(key: JobKey, reply: list[Any], after: int) -> JobRecord | None:
    """A record from the read script's answer; None when the job is gone without a trace."""
    if reply[0] == 0:
        if reply[1] is None:
            return None
        return JobRecord(key, state=State.EXPIRED, expires_at=float(reply[1]), data_offset=after)
    _, flat, data, warnings, status = reply
    fields: dict[bytes, bytes] = dict(zip(flat[::2], flat[1::2], strict=True))
    stored = (fields.get(b"server", b"").decode("utf-8", "replace"), fields.get(b"handle"))
    if stored != (key.server, key.handle) or fields.get(b"unique") != key.unique:
        return None  # another job under the same digest (never seen; 96 bits)
    error = None
    kind = fields.get(b"error_kind")
    if kind is not None:
        error = JobError(
            kind.decode(),
            fields.get(b"error_message", b"").decode("utf-8", "replace"),
            fields.get(b"traceback", b"").decode("utf-8", "replace"),
        )
    points = []
    for item in status:
        numerator, denominator, at = item.split(b" ")
        points.append(StatusPoint(int(numerator), int(denominator), float(at)))
    return JobRecord(
        key,
        function=fields.get(b"function", b""),
        state=_STATES[fields.get(b"state", b"running")],
        attempt=int(fields.get(b"attempt", b"1")),
        data=data,
        warnings=warnings,
        status=points,
        result=fields.get(b"result"),
        error=error,
        worker=fields.get(b"worker", b"").decode("utf-8", "replace"),
        started_at=_float(fields.get(b"started_at")),
        finished_at=_float(fields.get(b"finished_at")),
        updated_at=_float(fields.get(b"updated_at")),
        expires_at=_float(fields.get(b"expires_at")),
        data_offset=after,
    )
