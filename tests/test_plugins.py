"""The plugin spine: hooks, entry points, broken plugins, and the docs of every hook."""

from __future__ import annotations

import inspect
import sys
import textwrap
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from workers import running_worker

import gearstash
from gearstash import Client, State
from gearstash.errors import ConfigError, GearstashError
from gearstash.spine import hookspecs
from gearstash.spine import manager as plugins_module
from gearstash.spine.manager import EventHooks, get_plugin_manager, open_store, store_types

README = (Path(__file__).parent.parent / "README.md").read_text()
HOOKS = sorted(
    name for name, fn in vars(hookspecs).items() if callable(fn) and hasattr(fn, "gearstash_spec")
)


class Recorder:
    """An observer plugin recording every worker event."""

    def __init__(self) -> None:
        self.seen: list[tuple] = []

    @gearstash.hookimpl
    def job_started(self, job):
        self.seen.append(("started", job.function, job.workload))

    @gearstash.hookimpl
    def job_data(self, job, data):
        self.seen.append(("data", data))

    @gearstash.hookimpl
    def job_warning(self, job, warning):
        self.seen.append(("warning", warning))

    @gearstash.hookimpl
    def job_status(self, job, numerator, denominator):
        self.seen.append(("status", numerator, denominator))

    @gearstash.hookimpl
    def job_completed(self, job, result):
        self.seen.append(("completed", result))

    @gearstash.hookimpl
    def job_failed(self, job, error):
        self.seen.append(("failed", error.kind, error.message))

    @gearstash.hookimpl
    def store_failed(self, store_url, error, events):
        self.seen.append(("store_failed", store_url, str(error), events))


@pytest.fixture
def recorder():
    pm = get_plugin_manager()
    plugin = Recorder()
    pm.register(plugin, name="test-recorder")
    yield plugin
    pm.unregister(plugin)


def test_builtin_stores_come_through_entry_points():
    types = store_types()
    for scheme in ("memory", "null", "sqlite", "postgresql", "mysql", "mariadb"):
        assert scheme in types, scheme
    assert types["memory"].plugin == "memory" and types["sqlite"].plugin == "sql"


def test_unknown_scheme_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"no store for scheme 'nosuch'.*known schemes"):
        open_store("nosuch://x")
    with pytest.raises(ConfigError, match="needs a scheme"):
        open_store("just-a-path")


@pytest.mark.gearmand
def test_every_worker_event_reaches_the_hooks(gearmand, recorder):
    store = f"memory://{uuid.uuid4().hex}"
    with running_worker([gearmand.address], store), Client([gearmand.address], store=store) as c:
        assert c.submit("reverse", b"ab").result == b"ba"
        assert c.submit("refuse", b"x").state is State.FAILED
        assert c.submit("boom", b"y").state is State.FAILED
    assert recorder.seen == [
        ("started", "reverse", b"ab"),
        ("status", 1, 3),
        ("data", b"chunk-0"),
        ("status", 2, 3),
        ("data", b"chunk-1"),
        ("status", 3, 3),
        ("data", b"chunk-2"),
        ("warning", b"careful"),
        ("completed", b"ba"),
        ("started", "refuse", b"x"),
        ("failed", "fail", "refused x"),
        ("started", "boom", b"y"),
        ("data", b"before the crash"),
        ("failed", "exception", "ValueError: bad input: y"),
    ]


@pytest.mark.gearmand
def test_store_failed_hook_and_a_raising_observer_never_fail_a_job(gearmand, recorder):
    class Exploding:
        @gearstash.hookimpl
        def job_completed(self, job, result):
            raise RuntimeError("observer bug")

    class DeadStore:
        url = "dead://"
        capabilities = frozenset()

        def write(self, events):
            raise OSError("connection refused")

        def get_many(self, refs):
            return [None] * len(refs)

        def close(self):
            pass

    pm = get_plugin_manager()
    exploding = Exploding()
    pm.register(exploding)
    try:
        with (
            running_worker([gearmand.address], DeadStore()),
            Client([gearmand.address], store="null://") as c,
        ):
            assert c.submit("echo", b"ok").result == b"ok"
    finally:
        pm.unregister(exploding)
    failures = [s for s in recorder.seen if s[0] == "store_failed"]
    assert failures and failures[0][1:3] == ("dead://", "connection refused")


def _fake_distribution(tmp_path: Path, name: str, module_source: str) -> None:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(module_source))
    dist = tmp_path / f"{name}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[gearstash]\n{name} = {name}\n")


@pytest.fixture
def fresh_plugins(monkeypatch, tmp_path):
    """A fresh plugin manager that sees distributions written into tmp_path."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins_module, "_pm", None)
    monkeypatch.setattr(plugins_module, "_loaded", [])
    monkeypatch.setattr(plugins_module, "_failed", [])
    yield tmp_path
    for mod in [m for m in sys.modules if m.startswith("gs_test_")]:
        del sys.modules[mod]


def test_third_party_store_plugin_is_found_by_entry_point(fresh_plugins):
    _fake_distribution(
        fresh_plugins,
        "gs_test_good",
        """
        import gearstash

        class Store:
            capabilities = frozenset()
            def __init__(self, url):
                self.url = url
            def write(self, events):
                pass
            def get_many(self, refs):
                return [None] * len(refs)
            def close(self):
                pass

        @gearstash.hookimpl
        def register_stores(register):
            register("goodstore", Store, description="third party")
        """,
    )
    store = open_store("goodstore://x")
    assert type(store).__module__ == "gs_test_good" and store.url == "goodstore://x"
    assert any(
        p.name == "gs_test_good" and p.stores == ["goodstore"]
        for p in plugins_module.loaded_plugins()
    )


def test_broken_plugin_warns_and_is_skipped(fresh_plugins, monkeypatch):
    _fake_distribution(fresh_plugins, "gs_test_broken", "raise ImportError('missing dependency')\n")
    with pytest.warns(plugins_module.PluginWarning, match="gs_test_broken.*missing dependency"):
        get_plugin_manager()
    assert ("gs_test_broken", "ImportError: missing dependency") in plugins_module.failed_plugins()
    assert "sqlite" in store_types()  # the others still work


def test_strict_mode_makes_a_broken_plugin_fatal(fresh_plugins, monkeypatch):
    _fake_distribution(fresh_plugins, "gs_test_broken2", "raise ImportError('nope')\n")
    monkeypatch.setenv("GEARSTASH_STRICT_PLUGINS", "1")
    with pytest.raises(GearstashError, match="gs_test_broken2"):
        get_plugin_manager()


def test_event_hooks_cost_nothing_without_observers():
    hooks = EventHooks(get_plugin_manager())
    assert hooks._data is None and hooks._completed is None


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_with_its_signature(hook):
    params = ", ".join(inspect.signature(getattr(hookspecs, hook)).parameters)
    assert f"`{hook}({params})`" in README, f"README lacks `{hook}({params})`"


HOOK_ARGUMENTS = {
    "job": SimpleNamespace(function="f", workload=b"w"),
    "data": b"d",
    "warning": b"w",
    "numerator": 1,
    "denominator": 2,
    "result": b"r",
    "error": SimpleNamespace(kind="fail", message="m"),
    "store_url": "memory://hooks",
    "events": [],
}


# register_stores feeds the store registry: test_builtin_stores_come_through_entry_points.
@pytest.mark.parametrize("hook", [h for h in HOOKS if h != "register_stores"])
def test_every_hook_reaches_an_observer_with_its_arguments(hook, recorder):
    """The Recorder (which the event tests above observe with) implements every hook with the
    spec's parameters, and a call through the plugin manager reaches it once."""
    impl = getattr(Recorder, hook, None)
    assert impl is not None, f"the Recorder does not implement {hook}"
    spec_params = list(inspect.signature(getattr(hookspecs, hook)).parameters)
    assert list(inspect.signature(impl).parameters)[1:] == spec_params
    getattr(get_plugin_manager().hook, hook)(**{name: HOOK_ARGUMENTS[name] for name in spec_params})
    assert len(recorder.seen) == 1, recorder.seen
    assert hook.removeprefix("job_") == recorder.seen[0][0]
