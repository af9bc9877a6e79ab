"""Who may do what in the web face: the admin credential, CSRF tokens, loopback, headers. No I/O
beyond hashing.

* The admin credential (``gearstash.config``: ``$GEARSTASH_WEB_ADMIN``, its ``_FILE``, or
  ``web_admin`` in the config file — never argv) is either a password hash made by
  :func:`hash_password` (``scrypt$N$r$p$salt$hash``; one logs in with the password) or a secret
  of at least 16 characters (one logs in with the secret). Without one the app is read-only.
* Sessions are Starlette's signed cookies (itsdangerous, HMAC) keyed by :func:`session_key`:
  derived from the credential, so sessions survive a restart; random per process without one.
* Every POST carries the session's CSRF token (form field ``csrf`` or header ``X-CSRF-Token``),
  compared in constant time.
* Without a credential, routes that list or read jobs by reference answer only loopback clients
  (127.0.0.0/8, ::1) unless the app is ``public``; token routes answer everyone.
* Admin logins are rate limited per client address (:class:`LoginThrottle`).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import ipaddress
import math
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from gearstash.errors import ConfigError

MIN_SECRET_CHARS = 16
_SCRYPT = "scrypt"
_N, _R, _P = 2**14, 8, 1

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
"""The Content-Security-Policy of every page: scripts and styles from the app only, none inline."""

SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",  # token links must not leak through Referer
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """A password hash to configure as the admin credential (``scrypt$N$r$p$salt$hash``)."""
    if len(password) < 8:
        raise ConfigError("an admin password needs at least 8 characters")
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"{_SCRYPT}${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


@dataclass(frozen=True)
class AdminCredential:
    """The configured admin credential (its text never appears in a repr, log or error)."""

    value: str

    def __post_init__(self) -> None:
        if self.is_hash:
            try:
                self._parts()
            except (ValueError, TypeError):
                raise ConfigError(
                    "the web admin credential looks like a scrypt hash but is malformed"
                ) from None
        elif len(self.value) < MIN_SECRET_CHARS:
            raise ConfigError(
                f"the web admin credential must be a password hash (gearstash web "
                f"hash-password) or a secret of at least {MIN_SECRET_CHARS} characters"
            )

    def __repr__(self) -> str:
        return "AdminCredential(***)"

    @property
    def is_hash(self) -> bool:
        """True for a ``scrypt$…`` password hash."""
        return self.value.startswith(_SCRYPT + "$")

    def _parts(self) -> tuple[int, int, int, bytes, bytes]:
        _name, n, r, p, salt, digest = self.value.split("$")
        return int(n), int(r), int(p), _unb64(salt), _unb64(digest)

    def check(self, offered: str) -> bool:
        """True when ``offered`` is the password (for a hash) or the secret; constant time."""
        if len(offered) > 1024:
            return False
        if not self.is_hash:
            return hmac.compare_digest(offered.encode(), self.value.encode())
        n, r, p, salt, digest = self._parts()
        try:
            got = hashlib.scrypt(offered.encode(), salt=salt, n=n, r=r, p=p, dklen=len(digest))
        except ValueError:
            return False
        return hmac.compare_digest(got, digest)

    def session_key(self) -> str:
        """The key that signs session cookies, derived from the credential."""
        return hmac.new(self.value.encode(), b"gearstash web session", "sha256").hexdigest()


def session_key(credential: AdminCredential | None) -> str:
    """The session signing key: from the credential, else random for this process."""
    return credential.session_key() if credential else secrets.token_hex(32)


def new_csrf() -> str:
    """A fresh CSRF token for a session."""
    return secrets.token_urlsafe(24)


def csrf_matches(expected: object, offered: object) -> bool:
    """True when both are non-empty strings and equal (constant time)."""
    if not isinstance(expected, str) or not isinstance(offered, str) or not expected:
        return False
    return hmac.compare_digest(expected.encode(), offered.encode())


@functools.lru_cache(maxsize=256)
def is_loopback(host: str | None) -> bool:
    """True for a loopback client address (127.0.0.0/8, ::1, ::ffff:127.x)."""
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


class LoginThrottle:
    """Admin login attempts per client address: at most ``limit`` attempts that did not succeed
    within ``window`` seconds; beyond that :meth:`attempt` refuses (the caller answers 429 with
    ``Retry-After``) until the oldest of them leaves the window.

    An attempt counts from the moment it is made (before the password is checked), so parallel
    guesses cannot slip past the limit while the hash runs; a successful login clears its
    address. At most ``max_clients`` addresses are remembered (the least recently seen are
    forgotten first), so a flood of addresses cannot grow memory without bound. Clients behind
    one reverse proxy share its address (and its limit). Thread-safe; ``clock`` is monotonic
    seconds.
    """

    def __init__(
        self,
        limit: int = 5,
        window: float = 300.0,
        *,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1 or window <= 0 or max_clients < 1:
            raise ConfigError("a login throttle needs limit >= 1, window > 0, max_clients >= 1")
        self.limit = limit
        self.window = window
        self.max_clients = max_clients
        self._clock = clock
        self._lock = threading.Lock()
        self._attempts: OrderedDict[str, deque[float]] = OrderedDict()

    def attempt(self, client: str) -> int:
        """Count an attempt by ``client`` and return 0; or, when it already made ``limit``
        attempts within the window, count nothing and return the whole seconds (>= 1) until it
        may try again."""
        now = self._clock()
        with self._lock:
            times = self._attempts.pop(client, None) or deque()
            while times and times[0] <= now - self.window:
                times.popleft()
            wait = 0
            if len(times) >= self.limit:
                wait = max(1, math.ceil(times[0] + self.window - now))
            else:
                times.append(now)
            if times:
                self._attempts[client] = times  # now the most recently seen
                while len(self._attempts) > self.max_clients:
                    self._attempts.popitem(last=False)
            return wait

    def succeeded(self, client: str) -> None:
        """A login by ``client`` succeeded: forget its attempts."""
        with self._lock:
            self._attempts.pop(client, None)
