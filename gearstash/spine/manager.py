"""The plugin manager: entry-point loading and typed wrappers around every hook call.

Plugins are modules registered in the ``gearstash`` entry-point group (the built-in stores too). They
are loaded lazily, once per process, on the first call of :func:`get_plugin_manager`. A plugin that
fails to import or register is skipped with a warning; set ``GEARSTASH_STRICT_PLUGINS=1`` to make that
fatal. Every untyped ``pm.hook.*`` call in gearstash lives here.
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy

from gearstash import config
from gearstash.errors import ConfigError, GearstashError, StoreDenied, StoreError
from gearstash.spine import hookspecs
from gearstash.store.contract import Store, StoreFactory, StoreType
from gearstash.store.urls import check_url_syntax, redact_url, scrub, url_scheme

if TYPE_CHECKING:
    from gearstash.model.records import JobError, JobInfo

log = logging.getLogger("gearstash.plugins")

ENTRY_POINT_GROUP = "gearstash"
hookimpl = pluggy.HookimplMarker("gearstash")


class PluginWarning(UserWarning):
    """A plugin could not be loaded and was skipped."""


@dataclass
class PluginInfo:
    """What ``gearstash plugins`` shows about one loaded plugin."""

    name: str
    module: str
    version: str
    stores: list[str] = field(default_factory=list)


_lock = threading.Lock()
_pm: pluggy.PluginManager | None = None
_loaded: list[PluginInfo] = []
_failed: list[tuple[str, str]] = []


def _strict() -> bool:
    return config.strict_plugins()


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as exc:  # a broken third-party plugin must not break gearstash
            if _strict():
                raise GearstashError(f"gearstash plugin {ep.name!r} failed to load: {exc}") from exc
            _failed.append((ep.name, f"{type(exc).__name__}: {exc}"))
            warnings.warn(
                f"gearstash plugin {ep.name!r} ({ep.value}) skipped: {type(exc).__name__}: {exc}",
                PluginWarning,
                stacklevel=2,
            )
            continue
        dist = ep.dist
        _loaded.append(PluginInfo(ep.name, ep.value, dist.version if dist is not None else "", []))


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with entry-point plugins loaded (once, lazily)."""
    global _pm
    if _pm is not None:
        return _pm
    with _lock:
        if _pm is None:
            pm = pluggy.PluginManager("gearstash")
            pm.add_hookspecs(hookspecs)
            _load_entry_points(pm)
            _pm = pm
    return _pm


def failed_plugins() -> list[tuple[str, str]]:
    """``(name, reason)`` for every entry-point plugin that was skipped."""
    get_plugin_manager()
    return list(_failed)


def loaded_plugins() -> list[PluginInfo]:
    """Every entry-point plugin that loaded, with the store schemes it registered."""
    types = store_types()
    infos = []
    for info in _loaded:
        plugin = get_plugin_manager().get_plugin(info.name)
        stores = [t.scheme for t in types.values() if t.plugin == _plugin_name(plugin)]
        infos.append(PluginInfo(info.name, info.module, info.version, stores))
    return infos


def _plugin_name(plugin: object) -> str:
    name = get_plugin_manager().get_name(plugin)
    return name if name else str(getattr(plugin, "__name__", repr(plugin)))


# ---------------------------------------------------------------- discovery


def store_types(pm: pluggy.PluginManager | None = None) -> dict[str, StoreType]:
    """Every registered store scheme → :class:`~gearstash.store.contract.StoreType` (first one wins)."""
    pm = pm or get_plugin_manager()
    found: dict[str, StoreType] = {}
    impls = pm.hook.register_stores.get_hookimpls()
    everyone = [impl.plugin for impl in impls]
    for impl in reversed(impls):  # pluggy's call order: the last registered plugin first
        plugin_name = impl.plugin_name

        def register(
            scheme: str,
            factory: StoreFactory,
            *,
            description: str = "",
            exists: Callable[[str], bool] | None = None,
            driver: str = "",
            extra: str = "",
            _plugin: str = plugin_name,
        ) -> None:
            key = scheme.lower()
            if key in found:
                log.warning(
                    "store scheme %r registered by %s and by %s; keeping %s",
                    key,
                    found[key].plugin,
                    _plugin,
                    found[key].plugin,
                )
                return
            found[key] = StoreType(key, factory, description, _plugin, exists, driver, extra)

        # Each plugin is called through pluggy's own hook caller (tracing and monitoring
        # apply), one plugin at a time, so every scheme knows its plugin and one broken
        # plugin cannot hide the stores of the others.
        only_this = pm.subset_hook_caller(
            "register_stores", [p for p in everyone if p is not impl.plugin]
        )
        try:
            only_this(register=register)
        except Exception as exc:
            if _strict():
                raise
            warnings.warn(
                f"gearstash plugin {plugin_name!r} failed in register_stores: {exc}",
                PluginWarning,
                stacklevel=2,
            )
    return found


def open_store(url: str, pm: pluggy.PluginManager | None = None, *, create: bool = True) -> Store:
    """Open the store for ``url``: the scheme picks the registered implementation.

    A scheme like ``postgresql+psycopg`` is looked up whole, then by its part before ``+``. Raises
    :class:`~gearstash.errors.ConfigError` for a URL that cannot be parsed for sure (see
    :func:`~gearstash.store.urls.check_url_syntax`; no driver sees it) or an unknown scheme, and
    whatever the factory raises (usually :class:`~gearstash.errors.StoreError`) when the store
    cannot be opened. A store whose driver is not installed raises ConfigError naming the extra
    to install. ``create=False`` (commands that only read): a store that can tell it is not there
    yet (a SQLite file) raises :class:`~gearstash.errors.StoreError` instead of being created.
    """
    check_url_syntax(url)
    scheme = url_scheme(url)
    types = store_types(pm)
    kind = types.get(scheme) or types.get(scheme.partition("+")[0])
    if kind is None:
        known = ", ".join(sorted(types)) or "none"
        raise ConfigError(
            f"no store for scheme {scheme!r} in {redact_url(url)!r}; known schemes: {known} "
            "(see `gearstash plugins`)"
        )
    if kind.missing and "+" not in scheme:
        extra = kind.missing
        raise ConfigError(
            f"the {scheme}:// store needs the [{extra}] extra: pip install 'gearstash[{extra}]'"
        )
    if not create and kind.exists is not None and not kind.exists(url):
        raise StoreError(
            f"no store at {redact_url(url)} (a command that only reads never creates one; "
            "check the URL, or start a worker or submit a job first)"
        )
    try:
        return kind.factory(url)
    except GearstashError as exc:  # stores redact already; make sure, for third-party ones too
        text = str(exc)
        if scrub(text, url) == text:
            raise
        cls = type(exc) if type(exc) in (StoreError, StoreDenied, ConfigError) else StoreError
        raise cls(scrub(text, url)) from None
    except Exception as exc:  # a driver error a store let through: never show its password
        cls = ConfigError if isinstance(exc, ValueError) else StoreError
        raise cls(
            f"{redact_url(url)}: opening the store failed: {type(exc).__name__}: "
            f"{scrub(str(exc), url)}"
        ) from None


def is_local_store(url: str, pm: pluggy.PluginManager | None = None) -> bool:
    """True when ``url`` names a store its plugin can tell is there or not (registered with
    ``exists``: a local file, like SQLite), rather than a server that may be down for a while."""
    types = store_types(pm)
    scheme = url_scheme(url)
    kind = types.get(scheme) or types.get(scheme.partition("+")[0])
    return kind is not None and kind.exists is not None


# ---------------------------------------------------------------- worker events


class EventHooks:
    """Typed, fast callers for the worker-event hooks.

    Built once per worker; when no plugin implements a hook, calling it costs one attribute test.
    Exceptions raised by observers are logged and swallowed.
    """

    def __init__(self, pm: pluggy.PluginManager | None = None) -> None:
        self.pm = pm or get_plugin_manager()
        hook = self.pm.hook
        self._started = hook.job_started if hook.job_started.get_hookimpls() else None
        self._data = hook.job_data if hook.job_data.get_hookimpls() else None
        self._warning = hook.job_warning if hook.job_warning.get_hookimpls() else None
        self._status = hook.job_status if hook.job_status.get_hookimpls() else None
        self._completed = hook.job_completed if hook.job_completed.get_hookimpls() else None
        self._failed = hook.job_failed if hook.job_failed.get_hookimpls() else None
        self._store_failed = hook.store_failed if hook.store_failed.get_hookimpls() else None

    @staticmethod
    def _call(caller: Any, **kwargs: Any) -> None:
        try:
            caller(**kwargs)
        except Exception:
            log.exception("a gearstash observer hook raised; ignored")

    def started(self, job: JobInfo) -> None:
        """Call ``job_started``."""
        if self._started is not None:
            self._call(self._started, job=job)

    def data(self, job: JobInfo, data: bytes) -> None:
        """Call ``job_data``."""
        if self._data is not None:
            self._call(self._data, job=job, data=data)

    def warning(self, job: JobInfo, warning: bytes) -> None:
        """Call ``job_warning``."""
        if self._warning is not None:
            self._call(self._warning, job=job, warning=warning)

    def status(self, job: JobInfo, numerator: int, denominator: int) -> None:
        """Call ``job_status``."""
        if self._status is not None:
            self._call(self._status, job=job, numerator=numerator, denominator=denominator)

    def completed(self, job: JobInfo, result: bytes) -> None:
        """Call ``job_completed``."""
        if self._completed is not None:
            self._call(self._completed, job=job, result=result)

    def failed(self, job: JobInfo, error: JobError) -> None:
        """Call ``job_failed``."""
        if self._failed is not None:
            self._call(self._failed, job=job, error=error)

    def store_failed(self, store_url: str, error: Exception, events: int) -> None:
        """Call ``store_failed``."""
        if self._store_failed is not None:
            self._call(self._store_failed, store_url=store_url, error=error, events=events)
