"""Job output made safe for a terminal: control characters shown as escapes, never obeyed.

Job output is untrusted. A warning holding ``ESC ] 0;TITLE BEL`` would retitle the user's
terminal, a ``\\r`` would overwrite what was printed, a NUL or a bidi override would hide text.
Every human-readable view passes job text through :func:`visible`; ``follow`` and foreground
``submit`` stream raw bytes only to a pipe or with ``--raw`` (:func:`stream_chunk`).
"""

from __future__ import annotations

import re

_CONTROL = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]"
)
"""C0 and C1 controls, DEL, and the invisible direction and line marks."""


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str | bytes, *, keep: str = "") -> str:
    """``text`` (bytes are read as UTF-8, invalid bytes as ``\\xNN``) with every control
    character written as a visible escape (``\\x1b``, ``\\u202e``), except those in ``keep``
    (``"\\n\\t"`` for streamed chunks)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    if not keep:
        return _CONTROL.sub(_escape, text)
    return _CONTROL.sub(lambda m: m.group() if m.group() in keep else _escape(m), text)


def stream_chunk(chunk: bytes, *, raw: bool) -> bytes:
    """What ``follow`` and ``submit`` write for one data chunk: the bytes as they are when
    ``raw`` (a pipe, or ``--raw``), else :func:`visible` keeping newlines and tabs."""
    if raw:
        return chunk
    return visible(chunk, keep="\n\t").encode("utf-8")
