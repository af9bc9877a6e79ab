"""Settings: command-line option > environment > config file > default.

Secrets (a store URL with a password, the token secret) should never go on a command line, where
every user of the host can read them (``ps``, ``/proc/PID/cmdline``). They come from the
environment, from a file named by the environment (docker-secrets style), or from the config file.

=================  ==========================================  =========================
setting            environment                                 config file key
=================  ==========================================  =========================
store URL          ``GEARSTASH_STORE`` / ``GEARSTASH_STORE_FILE``  ``store`` / ``store_file``
job servers        ``GEARSTASH_SERVERS``                       ``servers`` (list or string)
token secret       ``GEARSTASH_TOKEN_SECRET`` /                ``token_secret`` /
                   ``GEARSTASH_TOKEN_SECRET_FILE``             ``token_secret_file``
worker spool       ``GEARSTASH_SPOOL``                         ``spool``
web admin          ``GEARSTASH_WEB_ADMIN`` /                   ``web_admin`` /
credential         ``GEARSTASH_WEB_ADMIN_FILE``                ``web_admin_file``
=================  ==========================================  =========================

The web admin credential (``gearstash web``) is a password hash made by ``gearstash web
hash-password`` (``scrypt$…``; one logs in with the password) or any other secret of at least 16
characters (one logs in with the secret itself).

The config file is TOML: ``--config FILE``, else ``$GEARSTASH_CONFIG``, else
``$XDG_CONFIG_HOME/gearstash/config.toml`` (``~/.config/gearstash/config.toml``); only the last one
may be missing. A ``*_FILE`` setting names a file whose content is the value (one trailing newline
is dropped); a relative path in the config file is relative to the config file's folder. A file
holding a secret that the group or others may read is used, with a warning in the log.

Errors are :class:`~gearstash.errors.ConfigError` naming the file and the key, never the value.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gearstash.errors import ConfigError
from gearstash.store.urls import url_secrets

log = logging.getLogger("gearstash.config")

CONFIG_ENV = "GEARSTASH_CONFIG"
STORE_ENV = "GEARSTASH_STORE"
SERVERS_ENV = "GEARSTASH_SERVERS"
TOKEN_SECRET_ENV = "GEARSTASH_TOKEN_SECRET"
SPOOL_ENV = "GEARSTASH_SPOOL"
HOME_ENV = "GEARSTASH_HOME"
WEB_ADMIN_ENV = "GEARSTASH_WEB_ADMIN"

DEFAULT_SPOOL_MAX_BYTES = 1 << 30
DEFAULT_WORKLOAD_MAX_BYTES = 64 << 10
"""The largest workload a worker or proxy capturing workloads stores (``--workload-max-bytes``)."""
"""A worker spool holds at most this many bytes unless told otherwise (``--spool-max-bytes``)."""
STRICT_PLUGINS_ENV = "GEARSTASH_STRICT_PLUGINS"
FILE_SUFFIX = "_FILE"

KNOWN_KEYS = frozenset(
    {
        "store",
        "store_file",
        "servers",
        "token_secret",
        "token_secret_file",
        "spool",
        "web_admin",
        "web_admin_file",
    }
)
"""Keys of the config file gearstash reads; others are logged as unknown and ignored."""

_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)")


@dataclass(frozen=True)
class Settings:
    """Resolved settings (``None``: not set anywhere) and where each came from.

    ``sources`` maps a setting name to a description of its origin (``"--store"``,
    ``"$GEARSTASH_STORE"``, ``"config file /etc/…"``) — never its value.
    """

    store: str | None = None
    servers: list[str] | None = None
    token_secret: str | None = field(default=None, repr=False)
    spool: str | None = None
    web_admin: str | None = field(default=None, repr=False)
    config_file: Path | None = None
    sources: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # the store URL and the secret stay out of reprs
        return f"Settings(sources={self.sources!r}, config_file={self.config_file!r})"

    @property
    def store_url(self) -> str:
        """The store URL, or the default SQLite store when none is set."""
        return self.store or default_store_url()


def url_has_secret(url: str) -> bool:
    """True when a store URL carries a password (in its userinfo or a query option)."""
    return bool(url_secrets(url))


def _user_config_path(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "gearstash" / "config.toml"


def config_path(
    explicit: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> tuple[Path, bool]:
    """The config file to read and whether it must exist (given explicitly or by the env)."""
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit), True
    named = env.get(CONFIG_ENV)
    if named:
        return Path(named), True
    return _user_config_path(env), False


_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def _warn_permissions(path: Path, what: str) -> None:
    """Log once per process and file when a file holding a secret is group/other readable."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if not mode & (stat.S_IRWXG | stat.S_IRWXO):
        return
    with _warned_lock:
        if (str(path), what) in _warned:
            return
        _warned.add((str(path), what))
    log.warning(
        "%s %s holds a secret and is readable by group or others (mode %04o): chmod 600 it",
        what,
        path,
        stat.S_IMODE(mode),
    )


def load_file(path: Path) -> dict[str, Any]:
    """Parse the TOML config file at ``path``. Raises ConfigError (unreadable, not TOML)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's messages may quote characters of the file: say only where it went wrong
        found = _POSITION.search(str(exc))
        where = f" (line {found.group(1)}, column {found.group(2)})" if found else ""
        raise ConfigError(f"config file {path} is not valid TOML{where}") from None
    for key in sorted(set(data) - KNOWN_KEYS):
        log.warning("config file %s: unknown key %r ignored", path, key)
    return data


def _string(data: Mapping[str, Any], key: str, path: Path) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"config file {path}: key {key!r} must be a string")
    return value


def read_secret_file(path: Path, origin: str) -> str:
    """The content of a docker-secrets style file (one trailing newline dropped).

    ``origin`` names where the path came from (``$GEARSTASH_STORE_FILE``, ``config file X key
    'store_file'``) for the error messages; the content never appears in them.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the file {path} named by {origin}: {exc.strerror or exc}"
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"the file {path} named by {origin} is not UTF-8 text") from None
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    if not text:
        raise ConfigError(f"the file {path} named by {origin} is empty")
    if "\n" in text or "\r" in text:
        raise ConfigError(f"the file {path} named by {origin} holds more than one line")
    _warn_permissions(path, "secret file")
    return text


def _from_env(env: Mapping[str, str], name: str) -> tuple[str | None, str]:
    """A setting from ``$NAME`` or the file named by ``$NAME_FILE`` (not both)."""
    direct = env.get(name) or None
    file_name = env.get(name + FILE_SUFFIX) or None
    if direct is not None and file_name is not None:
        raise ConfigError(f"set ${name} or ${name}{FILE_SUFFIX}, not both")
    if file_name is not None:
        origin = f"${name}{FILE_SUFFIX}"
        return read_secret_file(Path(file_name), origin), origin
    return direct, f"${name}"


def _from_file(data: Mapping[str, Any], key: str, path: Path) -> str | None:
    direct = _string(data, key, path)
    file_name = _string(data, key + "_file", path)
    if direct is not None and file_name is not None:
        raise ConfigError(f"config file {path}: set {key!r} or {key + '_file'!r}, not both")
    if file_name is not None:
        target = Path(file_name).expanduser()
        if not target.is_absolute():
            target = path.parent / target
        return read_secret_file(target, f"config file {path} key {key + '_file'!r}")
    return direct


def _servers(value: Any, path: Path) -> list[str]:
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = list(value)
    else:
        raise ConfigError(
            f"config file {path}: key 'servers' must be a list of strings or a string"
        )
    out = [part for item in items for part in item.replace(",", " ").split()]
    if not out:
        raise ConfigError(f"config file {path}: key 'servers' is empty")
    return out


def resolve(
    *,
    store: str | None = None,
    servers: list[str] | tuple[str, ...] | None = None,
    spool: str | None = None,
    config: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve every setting: the arguments (command-line options) > environment > config file.

    The config file is read only when some setting is not given by an option or the environment.
    Raises ConfigError for an unreadable or invalid file, naming the file and key only.
    """
    env = os.environ if env is None else env
    sources: dict[str, str] = {}
    values: dict[str, Any] = {}
    if store:
        values["store"], sources["store"] = store, "--store"
    if servers:
        values["servers"], sources["servers"] = list(servers), "--server"
    if spool:
        values["spool"], sources["spool"] = spool, "--spool"
    for key, name in (
        ("store", STORE_ENV),
        ("token_secret", TOKEN_SECRET_ENV),
        ("web_admin", WEB_ADMIN_ENV),
    ):
        if key not in values:
            value, origin = _from_env(env, name)
            if value is not None:
                values[key], sources[key] = value, origin
    if "servers" not in values and env.get(SERVERS_ENV, "").strip():
        values["servers"] = env[SERVERS_ENV].replace(",", " ").split()
        sources["servers"] = f"${SERVERS_ENV}"
    if "spool" not in values and env.get(SPOOL_ENV):
        values["spool"], sources["spool"] = env[SPOOL_ENV], f"${SPOOL_ENV}"

    path, required = config_path(config, env)
    used: Path | None = None
    missing = {"store", "servers", "token_secret", "spool", "web_admin"} - set(values)
    if missing and (required or path.is_file()):
        data = load_file(path)
        used = path
        origin = f"config file {path}"
        holds_secret = False
        for key in ("store", "token_secret", "web_admin"):
            secret_here = data.get(key) is not None
            if key in missing:
                value = _from_file(data, key, path)
                if value is not None:
                    values[key], sources[key] = value, origin
            if key != "store":
                holds_secret = holds_secret or secret_here
            elif isinstance(data.get(key), str):
                holds_secret = holds_secret or url_has_secret(data[key])
        if "servers" in missing and data.get("servers") is not None:
            values["servers"], sources["servers"] = _servers(data["servers"], path), origin
        if "spool" in missing:
            spool_value = _string(data, "spool", path)
            if spool_value is not None:
                values["spool"], sources["spool"] = spool_value, origin
        if holds_secret:
            _warn_permissions(path, "config file")
    return Settings(
        store=values.get("store"),
        servers=values.get("servers"),
        token_secret=values.get("token_secret"),
        spool=values.get("spool"),
        web_admin=values.get("web_admin"),
        config_file=used,
        sources=sources,
    )


def gearstash_home(env: Mapping[str, str] | None = None) -> Path:
    """The folder of gearstash's own files (the default store, spools): ``$GEARSTASH_HOME``, else
    ``$XDG_DATA_HOME/gearstash`` (``~/.local/share/gearstash``). Not created here: whoever writes
    into it creates it, private to the user (0700)."""
    env = os.environ if env is None else env
    home = env.get(HOME_ENV)
    if home:
        return Path(home)
    data = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "gearstash"


def default_store_url() -> str:
    """The store used when none is configured: SQLite ``jobs.db`` in :func:`gearstash_home`."""
    return f"sqlite:///{gearstash_home() / 'jobs.db'}"


def strict_plugins() -> bool:
    """``$GEARSTASH_STRICT_PLUGINS`` set (not 0/false/no): a plugin that fails to load is fatal."""
    return os.environ.get(STRICT_PLUGINS_ENV, "") not in ("", "0", "false", "no")


def spool_folder(
    spool: str | os.PathLike[str] | None, settings: Settings | None
) -> str | os.PathLike[str] | None:
    """The worker spool folder: ``spool`` (an option) > ``$GEARSTASH_SPOOL`` > the config file's
    ``spool``; None = the default folder for the store."""
    return spool or os.environ.get(SPOOL_ENV) or (settings.spool if settings else None)


def server_list_default() -> str:
    """``$GEARSTASH_SERVERS`` when set and not blank, else ``127.0.0.1:4730``."""
    return os.environ.get(SERVERS_ENV, "").strip() or "127.0.0.1:4730"


def demo_pace() -> tuple[int, float]:
    """The demo's steps per job and seconds per step (``$GEARSTASH_DEMO_STEPS``/``_DELAY``)."""
    return (
        int(os.environ.get("GEARSTASH_DEMO_STEPS", "10")),
        float(os.environ.get("GEARSTASH_DEMO_DELAY", "0.15")),
    )


def store_url(store: str | None = None, *, config: str | os.PathLike[str] | None = None) -> str:
    """The store URL to open: ``store`` > environment > config file > the default SQLite store."""
    return resolve(store=store, config=config).store_url


def servers(
    servers: list[str] | tuple[str, ...] | None = None,
    *,
    config: str | os.PathLike[str] | None = None,
) -> list[str] | None:
    """The job servers: ``servers`` > ``$GEARSTASH_SERVERS`` > config file; None = the default."""
    return resolve(servers=servers, config=config).servers


def token_secret(*, config: str | os.PathLike[str] | None = None) -> str | None:
    """The token secret from the environment (or its ``_FILE``) or the config file, else None."""
    return resolve(config=config).token_secret


__all__ = [
    "CONFIG_ENV",
    "KNOWN_KEYS",
    "SERVERS_ENV",
    "STORE_ENV",
    "TOKEN_SECRET_ENV",
    "WEB_ADMIN_ENV",
    "Settings",
    "config_path",
    "default_store_url",
    "demo_pace",
    "gearstash_home",
    "load_file",
    "read_secret_file",
    "resolve",
    "server_list_default",
    "servers",
    "spool_folder",
    "store_url",
    "strict_plugins",
    "token_secret",
    "url_has_secret",
]
