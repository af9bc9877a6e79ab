"""Store URLs: gearstash's own query options apart from redis-py's, and passwords kept out of sight.

No I/O. ``ttl`` is read by :func:`gearstash.store.urls.ttl_from_query`; ``grace`` and ``prefix`` here;
every other option goes to redis-py (``socket_timeout=2``, ``ssl_ca_certs=...``).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from gearstash.errors import ConfigError
from gearstash.store.urls import DEFAULT_TTL, redact_url

DEFAULT_GRACE = DEFAULT_TTL
"""At most this many seconds an expired job keeps reading as ``expired`` (``?grace=``)."""

OWN_OPTIONS = frozenset({"ttl", "grace", "prefix"})


def _own_option(name: str) -> bool:
    return name in OWN_OPTIONS or name.startswith("gearstash_")


def split_url(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without gearstash's own query options (for redis-py), and those options."""
    base, sep, query = url.partition("?")
    if not sep:
        return url, {}
    pairs = parse_qsl(query.partition("#")[0], keep_blank_values=True)
    own = {name: value for name, value in pairs if _own_option(name)}
    rest = "&".join(part for part in query.split("&") if not _own_option(part.partition("=")[0]))
    return (base + "?" + rest if rest else base), own


def redact(url: str) -> str:
    """:func:`~gearstash.store.urls.redact_url`, and ``***`` for query options naming a password."""
    text = redact_url(url)
    base, sep, query = text.partition("?")
    if not sep:
        return text
    parts = []
    for part in query.split("&"):
        name, eq, _ = part.partition("=")
        parts.append(f"{name}=***" if eq and "password" in name.lower() else part)
    return base + "?" + "&".join(parts)


def secrets_of(url: str) -> list[str]:
    """The passwords a URL holds (its userinfo password, ``*password*`` query options)."""
    found = []
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        found.append(password)
    query = url.partition("?")[2]
    found += [v for k, v in parse_qsl(query, keep_blank_values=True) if "password" in k.lower()]
    return [s for s in found if s]


def seconds(own: dict[str, str], name: str, default: float, url: str) -> float:
    """Option ``name`` of ``own`` (from :func:`split_url`) as seconds, ``default`` when absent."""
    if name not in own:
        return default
    try:
        value = float(own[name])
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds in {url!r}") from None
    if value < 0:
        raise ConfigError(f"{name} must not be negative in {url!r}")
    return value
