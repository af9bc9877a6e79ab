"""The one bytes <-> JSON codec of gearstash.

Job output is bytes. In JSON (the record format ``gearstash.job/1``, ``fetch --json``, the HTTP
API, the spool) a bytes value is a JSON string when it is valid UTF-8 — what people read — and
``{"base64": "..."}`` otherwise, so nothing is lost and text stays readable.
"""

from __future__ import annotations

import base64
from typing import Any

__all__ = ["bytes_to_json", "json_to_bytes"]


def bytes_to_json(value: bytes) -> str | dict[str, str]:
    """A JSON string when ``value`` is valid UTF-8, else ``{"base64": ...}``."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(value).decode("ascii")}


def json_to_bytes(value: Any) -> bytes:
    """The inverse of :func:`bytes_to_json`."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and isinstance(value.get("base64"), str):
        return base64.b64decode(value["base64"], validate=True)
    if isinstance(value, dict) and isinstance(value.get("b"), str):  # spools of gearstash 0.1
        return base64.b64decode(value["b"], validate=True)
    raise ValueError(f"not an encoded bytes value: {value!r}")
