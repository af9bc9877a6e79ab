"""Signed, opaque job tokens a web app can hand to a browser instead of a raw job reference.

A token names one job (its :class:`~gearstash.model.records.JobRef`) until it expires. Its payload is
encrypted, then authenticated (encrypt-then-MAC), so whoever holds the token learns nothing about
the job (handle, job server, unique) and cannot alter or forge it without the secret::

    gs1.<body>.<mac>
    body = base64url(iv || AES-256-CTR(enc_key, iv, payload))
    mac  = base64url(HMAC-SHA256(mac_key, "gs1." + purpose + "." + body))

* two 32-byte keys are derived from the configured secret (its bytes; a ``str`` is UTF-8):
  ``enc_key = HMAC-SHA256(secret, "gearstash token enc")`` and
  ``mac_key = HMAC-SHA256(secret, "gearstash token mac")`` (the secret is the HMAC key, the
  ASCII label the message);
* ``iv`` is 16 random bytes, new for every token, used as AES-CTR's whole initial 128-bit counter
  block (big-endian increment — OpenSSL's ``aes-256-ctr``); the ciphertext is as long as the
  payload (no padding);
* base64url is RFC 4648 §5 (``-`` and ``_``) without ``=`` padding; the MAC is over the ASCII text
  ``gs1.<purpose>.<body as it appears in the token>``;
* ``payload`` is a JSON object ``{"r": "<job reference>", "x": <expiry, unix seconds, integer>}``
  (its UTF-8 bytes), padded with spaces to a multiple of 64 bytes; other keys are ignored;
* ``purpose`` (default ``fetch``) is authenticated but not sent: a token minted for one purpose is
  refused for another;
* the token is valid while ``now < x`` and expired from the second ``x`` on.

The padding hides the reference's length up to 64 bytes (AES-CTR itself does not pad).

:meth:`TokenSigner.verify` checks, in this order: the length (at most :data:`MAX_TOKEN_LENGTH`
characters, before anything is decoded), the ``gs1`` prefix and the base64url alphabet, the MAC
(constant-time, against the current and any previous secret) — nothing is decrypted before it
matches — then it decrypts the payload and checks it and the expiry. A refused token raises
:class:`~gearstash.errors.BadToken` whose ``reason`` is ``"malformed"``, ``"bad signature"`` or
``"expired"`` — nothing else is said about it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import os
import re
import time
from collections.abc import Sequence
from typing import NamedTuple

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from gearstash.errors import BadToken, ConfigError
from gearstash.model.records import JobRef

VERSION = "gs1"
PAD_BYTES = 64
"""Plaintext payloads are padded with spaces to a multiple of this many bytes."""
MAX_TOKEN_LENGTH = 4096
"""Longer tokens are refused before they are decoded."""
MIN_SECRET_BYTES = 16
DEFAULT_TTL = 3600.0
DEFAULT_PURPOSE = "fetch"

_B64 = re.compile(r"[A-Za-z0-9_-]+")
_PURPOSE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SIGNATURE_LENGTH = 43  # 32 bytes of HMAC-SHA256 in unpadded base64url
IV_BYTES = 16
_ENC_LABEL = b"gearstash token enc"
_MAC_LABEL = b"gearstash token mac"


def b64encode(data: bytes) -> str:
    """Unpadded base64url text of ``data``."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(text: str) -> bytes:
    """Bytes of unpadded base64url ``text``; ValueError for anything else."""
    if not _B64.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:
        raise ValueError("not unpadded base64url") from exc


class _Keys(NamedTuple):
    enc: bytes
    mac: bytes


def _keys(secret: bytes | str) -> _Keys:
    """The encryption and MAC keys derived from one secret."""
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if len(key) < MIN_SECRET_BYTES:
        raise ConfigError(f"a token secret must be at least {MIN_SECRET_BYTES} bytes long")
    return _Keys(
        enc=hmac.new(key, _ENC_LABEL, hashlib.sha256).digest(),
        mac=hmac.new(key, _MAC_LABEL, hashlib.sha256).digest(),
    )


def _ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    """AES-256-CTR of ``data`` (encryption and decryption are the same operation)."""
    crypt = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return crypt.update(data) + crypt.finalize()


class TokenSigner:
    """Mints and checks job tokens with an HMAC secret.

    :param secret: the signing secret (``str`` is used as its UTF-8 bytes); at least 16 bytes —
        use 32 random bytes, e.g. ``python -c "import secrets; print(secrets.token_urlsafe(32))"``.
    :param previous: older secrets still accepted by :meth:`verify` (key rotation: sign with the
        new secret, keep the old one here until its tokens have expired).
    :param purpose: what the tokens are for (letters, digits, ``-``, ``_``); signed, so a token
        for one purpose is refused by a signer for another.
    """

    def __init__(
        self,
        secret: bytes | str,
        *,
        previous: Sequence[bytes | str] = (),
        purpose: str = DEFAULT_PURPOSE,
    ) -> None:
        if isinstance(previous, str | bytes):
            raise ConfigError("previous must be a sequence of secrets, not one secret")
        if not _PURPOSE.fullmatch(purpose):
            raise ConfigError("a token purpose is 1 to 64 letters, digits, '-' or '_'")
        self._keys = [_keys(secret)] + [_keys(p) for p in previous]
        self.purpose = purpose

    def __repr__(self) -> str:
        return f"TokenSigner(purpose={self.purpose!r}, secrets={len(self._keys)})"

    @classmethod
    def from_config(
        cls, *, purpose: str = DEFAULT_PURPOSE, config: str | None = None
    ) -> TokenSigner:
        """A signer with the configured secret: ``$GEARSTASH_TOKEN_SECRET``, the file named by
        ``$GEARSTASH_TOKEN_SECRET_FILE``, or the config file's ``token_secret(_file)``.

        Raises ConfigError when no secret is configured.
        """
        from gearstash.config import token_secret

        secret = token_secret(config=config)
        if not secret:
            raise ConfigError(
                "no token secret configured: set $GEARSTASH_TOKEN_SECRET, "
                "$GEARSTASH_TOKEN_SECRET_FILE or token_secret in the config file"
            )
        return cls(secret, purpose=purpose)

    def _mac(self, key: bytes, body: str) -> str:
        message = f"{VERSION}.{self.purpose}.{body}".encode("ascii")
        return b64encode(hmac.new(key, message, hashlib.sha256).digest())

    def sign(self, ref: JobRef | str, *, ttl: float = DEFAULT_TTL, now: float | None = None) -> str:
        """A token for ``ref`` (a :class:`JobRef` or its string form) valid for ``ttl`` seconds.

        The expiry is rounded up to a whole second, so the token lives at least ``ttl`` seconds.
        """
        if not (isinstance(ttl, int | float) and math.isfinite(ttl) and ttl > 0):
            raise ConfigError("a token ttl must be a positive number of seconds")
        job = ref if isinstance(ref, JobRef) else JobRef.parse(ref)
        expires = math.ceil((time.time() if now is None else now) + ttl)
        payload = json.dumps(
            {"r": str(job), "x": expires}, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")
        # padded with spaces (JSON ignores them) to a multiple of PAD_BYTES, so a token's length
        # says little about the length of the reference it hides
        payload += b" " * (-len(payload) % PAD_BYTES)
        keys, iv = self._keys[0], os.urandom(IV_BYTES)
        body = b64encode(iv + _ctr(keys.enc, iv, payload))
        token = f"{VERSION}.{body}.{self._mac(keys.mac, body)}"
        if len(token) > MAX_TOKEN_LENGTH:
            raise ConfigError(f"the job reference is too long for a token ({len(token)} chars)")
        return token

    def verify(self, token: str, *, now: float | None = None) -> JobRef:
        """The job reference ``token`` names. Raises :class:`BadToken` when it is refused."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
            raise BadToken("malformed")
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != VERSION:
            raise BadToken("malformed")
        _, body, signature = parts
        if (
            len(signature) != _SIGNATURE_LENGTH
            or not _B64.fullmatch(signature)
            or not _B64.fullmatch(body)
        ):
            raise BadToken("malformed")
        matched: _Keys | None = None
        for keys in self._keys:  # every key, always: the time taken does not tell which matched
            if hmac.compare_digest(self._mac(keys.mac, body), signature) and matched is None:
                matched = keys
        if matched is None:
            raise BadToken("bad signature")
        # authenticated: only now is anything decoded or decrypted
        try:
            raw = b64decode(body)
            if len(raw) <= IV_BYTES:
                raise ValueError("no ciphertext")
            plain = _ctr(matched.enc, raw[:IV_BYTES], raw[IV_BYTES:])
            payload = json.loads(plain.decode("utf-8"))
        except ValueError:  # bad base64, length, UTF-8 or JSON (all ValueError subclasses)
            raise BadToken("malformed") from None
        if not isinstance(payload, dict):
            raise BadToken("malformed")
        ref, expires = payload.get("r"), payload.get("x")
        if not isinstance(ref, str) or not isinstance(expires, int) or isinstance(expires, bool):
            raise BadToken("malformed")
        if (time.time() if now is None else now) >= expires:
            raise BadToken("expired")
        try:
            return JobRef.parse(ref)
        except (ConfigError, ValueError):
            raise BadToken("malformed") from None


__all__ = [
    "IV_BYTES",
    "MAX_TOKEN_LENGTH",
    "MIN_SECRET_BYTES",
    "VERSION",
    "TokenSigner",
    "b64decode",
    "b64encode",
]
