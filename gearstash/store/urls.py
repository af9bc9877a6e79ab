"""Store URLs: their scheme, their ``?ttl=``, and keeping their secrets out of text.

A store URL may carry a password (``redis://:pw@host/0``, ``?password=``), also inside another
URL given as a query option's value (``?read_url=`` followed by a percent-encoded URL with a
password of its own). :func:`redact_url`
masks every secret for display, :func:`url_secrets` lists them and :func:`scrub` removes them from
any text (a driver's error message) before it is logged or shown. Pure functions, no I/O.
"""

from __future__ import annotations

import re
from urllib.parse import (
    parse_qs,
    parse_qsl,
    quote,
    unquote,
    unquote_plus,
    urlsplit,
    urlunsplit,
)

from gearstash.errors import ConfigError


def url_scheme(url: str) -> str:
    """The scheme of a store URL, lower-cased (``postgresql+psycopg://`` → ``postgresql+psycopg``)."""
    scheme, sep, _ = url.partition(":")
    if not sep or not scheme:
        raise ConfigError(f"a store URL needs a scheme, like sqlite:///path: {redact_url(url)!r}")
    return scheme.lower()


DEFAULT_TTL = 86400.0
"""Seconds a store keeps a job after its last event unless told otherwise (``?ttl=`` in the URL)."""


def ttl_from_query(url: str, default: float = DEFAULT_TTL) -> float:
    """The ``ttl`` query parameter of a store URL in seconds (0 = keep for ever), else ``default``."""
    values = parse_qs(urlsplit(url).query).get("ttl")
    if not values:
        return default
    try:
        ttl = float(values[-1])
    except ValueError:
        raise ConfigError(f"ttl must be a number of seconds in {redact_url(url)!r}") from None
    if ttl < 0:
        raise ConfigError(f"ttl must not be negative in {redact_url(url)!r}")
    return ttl


_SECRET_OPTION = re.compile(r"pass|pwd|secret|token|credential", re.IGNORECASE)
"""Query options whose values are masked like a password (``password=``, ``sslpassword=``…)."""


def _secret_option(name: str) -> bool:
    return bool(_SECRET_OPTION.search(unquote(name)))


def _nested_url(value: str) -> bool:
    """True for a query option's (decoded) value that is itself a URL (``?read_url=``)."""
    return "://" in value


def _redact_option(name: str, value: str) -> str:
    """One ``name=value`` item of a URL's query, as :func:`redact_url` shows it."""
    if _secret_option(name):
        return f"{name}=***"
    decoded = unquote_plus(value)
    if _nested_url(decoded):
        shown = redact_url(decoded)
        if shown != decoded:
            return f"{name}={quote(shown, safe='*<>')}"
    return f"{name}={value}"


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``; the form to print and log.

    The userinfo password and the values of query options that name a secret (``password=``,
    ``sslpassword=``, ``secret=``, ``token=``…) become ``***``; an option whose value is a
    (percent-encoded) URL is shown as that URL redacted, re-encoded. A URL whose credentials cannot be
    located for sure (no scheme, or an ``@`` the parser did not read as the end of the userinfo,
    as with an unencoded ``/``, ``?`` or ``#`` in a password) is not shown at all.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if "@" in url:
        if not parts.scheme or not url[len(parts.scheme) + 1 :].startswith("//"):
            return "<unparseable URL>"
        if parts.netloc and "@" not in parts.netloc:
            return f"{parts.scheme}://<URL hidden: cannot tell where its password ends>"
        if not parts.netloc and not parts.path.startswith("/") and "@" in parts.path:
            return "<unparseable URL>"
    netloc = parts.netloc
    if parts.password is not None:
        user = parts.username or ""
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        try:
            port = parts.port
        except ValueError:
            port = None
        netloc = f"{user}:***@{host}" + (f":{port}" if port else "")
    query = parts.query
    if query:
        items = []
        for item in query.split("&"):
            name, eq, value = item.partition("=")
            items.append(_redact_option(name, value) if eq else item)
        query = "&".join(items)
    if netloc == parts.netloc:
        if query == parts.query:
            return url
        # textually, so that ``unix:///path?…`` keeps its empty authority
        return (
            url.partition("?")[0] + "?" + query + ("#" + parts.fragment if parts.fragment else "")
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def check_url_syntax(url: str) -> None:
    """Refuse a store URL whose parts cannot be told apart for sure, before any driver sees it.

    Raises :class:`~gearstash.errors.ConfigError` (the message shows no secret) when the URL has
    no scheme, when :func:`urllib.parse.urlsplit` rejects it, or when an ``@`` follows the host part
    (an unencoded ``/``, ``?`` or ``#`` in a user name or password, like
    ``redis://:pa/ss@host``): drivers would each read such a URL differently, one of them
    showing the password as a "port". An ``@`` in a path with no host (``sqlite:////tmp/a@b.db``)
    is fine.
    """
    scheme = url_scheme(url)
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigError(f"cannot parse the store URL {redact_url(url)!r}: {exc}") from None
    rest = url[len(scheme) + 1 :]
    if "@" not in rest:
        return
    if not rest.startswith("//") or (parts.netloc and "@" in rest[2 + len(parts.netloc) :]):
        raise ConfigError(
            f"cannot parse the store URL {redact_url(url)!r}: an '@' follows its host part; "
            "percent-encode '/', '?', '#' and '@' in a user name or password (%2F %3F %23 %40)"
        )


def _raw_userinfo_secrets(url: str) -> list[str]:
    """What may be a password in a URL whose userinfo the parser could not find: the text after
    the first ``:`` of everything between ``//`` and the last ``@``, whole and cut at ``/?#``."""
    _, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return []
    _, colon, password = rest.rpartition("@")[0].partition(":")
    if not colon:
        return []
    return [password, *re.split(r"[/?#]", password)]


def url_secrets(url: str) -> list[str]:
    """The secrets a store URL holds: its password, secret-named query options' values, and the
    secrets of a URL given as an option's value (``?read_url=``).

    Each secret comes as written and percent-decoded (drivers see the decoded form); the longest
    first, so :func:`scrub` replaces a secret before any part of it.
    """
    found: set[str] = set()
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        password, parts = None, None
    if password:
        found.update((password, unquote(password)))
    for raw in _raw_userinfo_secrets(url):
        found.update((raw, unquote(raw)))
    if parts is not None:
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if value and _secret_option(name):
                found.update((value, quote(value, safe=""), value.replace(" ", "+")))
            elif _nested_url(value):
                for secret in url_secrets(value):  # as the driver sees it, and as encoded here
                    found.update((secret, quote(secret, safe=""), _plus_form(secret)))
    return sorted((s for s in found if s), key=len, reverse=True)


def _plus_form(text: str) -> str:
    """``text`` percent-encoded as a query value may carry it (spaces as ``+``)."""
    return quote(text, safe=" ").replace(" ", "+")


def scrub(text: str, url: str) -> str:
    """``text`` (an error message, a log line) with every secret of ``url`` replaced by ``***``.

    The URL itself, should it appear, is replaced by its redacted form first.
    """
    if url and url in text:
        text = text.replace(url, redact_url(url))
    for secret in url_secrets(url):
        if len(secret) >= 3:  # shorter would mangle the message
            text = text.replace(secret, "***")
    return text
