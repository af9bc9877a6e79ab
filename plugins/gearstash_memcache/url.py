"""What a ``memcache://`` URL names: its servers and the store's options (no I/O)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from gearstash.errors import ConfigError
from gearstash.store.urls import redact_url, ttl_from_query

DEFAULT_PORT = 11211
DEFAULT_TIMEOUT = 2.0
DEFAULT_GRACE = 86400.0
_PREFIX = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_OPTIONS = {"ttl", "grace", "prefix", "timeout"}


@dataclass(frozen=True, slots=True)
class Target:
    """What a ``memcache://`` URL names."""

    servers: list[tuple[str, int]]  # (host as given to connect(), port)
    names: list[str]  # "host:port" (IPv6 in brackets): routing and messages
    ttl: float
    grace: float
    prefix: str
    timeout: float


def parse_url(url: str) -> Target:
    """Parse ``memcache://host[:port][,host[:port]...][?ttl=&grace=&prefix=&timeout=]``."""
    shown = redact_url(url)
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("memcache", "memcached"):
        raise ConfigError(f"not a memcache:// URL: {shown!r}")
    netloc = parts.netloc
    if "@" in netloc:
        raise ConfigError(
            f"memcache URLs take no user or password (memcached's text protocol has no "
            f"authentication): {shown!r}"
        )
    if parts.path not in ("", "/"):
        raise ConfigError(f"a memcache URL has no path: {shown!r}")
    servers: list[tuple[str, int]] = []
    names: list[str] = []
    for item in netloc.split(","):
        host, port = _host_port(item.strip(), shown)
        name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if name in names:
            raise ConfigError(f"server {name} named twice in {shown!r}")
        servers.append((host, port))
        names.append(name)
    options = parse_qs(parts.query, keep_blank_values=True)
    unknown = [k for k in options if k not in _OPTIONS and not k.startswith("gearstash_")]
    if unknown:
        raise ConfigError(
            f"unknown option {unknown[0]!r} in {shown!r} (known: {', '.join(sorted(_OPTIONS))})"
        )

    def number(name: str, default: float, positive: bool = False) -> float:
        values = options.get(name)
        if not values:
            return default
        try:
            value = float(values[-1])
        except ValueError:
            raise ConfigError(f"{name} must be a number of seconds in {shown!r}") from None
        if value < 0 or (positive and value == 0) or value != value:
            raise ConfigError(f"{name} out of range in {shown!r}")
        return value

    prefix = options.get("prefix", ["gs"])[-1]
    if not _PREFIX.fullmatch(prefix):
        raise ConfigError(f"prefix must be 1-32 of [A-Za-z0-9_.-] in {shown!r}")
    return Target(
        servers,
        names,
        ttl_from_query(url),
        number("grace", DEFAULT_GRACE),
        prefix,
        number("timeout", DEFAULT_TIMEOUT, positive=True),
    )


def _host_port(item: str, shown: str) -> tuple[str, int]:
    if item.startswith("["):
        host, sep, rest = item[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"bad server {item!r} in {shown!r}")
        port_text = rest[1:]
    elif item.count(":") > 1:
        raise ConfigError(f"put an IPv6 address in brackets ([::1]:11211) in {shown!r}")
    else:
        host, _, port_text = item.partition(":")
    host = host.lower()
    if not host:
        raise ConfigError(f"a memcache URL needs host[:port] in {shown!r}")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"bad port {port_text!r} in {shown!r}")
    return host, int(port_text)
