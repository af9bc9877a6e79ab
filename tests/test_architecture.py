"""The house rules, read from the source: who may import what.

Every import of ``gearstash`` and of the built-in stores in ``plugins/`` is read with :mod:`ast` —
top-level ones, ones inside functions and ``if TYPE_CHECKING:`` ones alike — and the rules of the
layout are checked on that graph. A new module that breaks a rule fails here, naming the import.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gearstash"
PLUGINS = ROOT / "plugins"
STORE_PACKAGES = ("gearstash_memory", "gearstash_sql", "gearstash_redis", "gearstash_memcache")


@dataclass(frozen=True)
class Import:
    """``module`` imports ``target`` (and, for ``from X import a, b``, the ``names``)."""

    module: str
    target: str
    names: tuple[str, ...]
    line: int

    def __str__(self) -> str:
        what = f"from {self.target} import {', '.join(self.names)}" if self.names else self.target
        return f"{self.module}:{self.line}: {what}"


def module_name(path: Path) -> str:
    base = PLUGINS if PLUGINS in path.parents else ROOT
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> Iterator[Path]:
    yield from sorted(PACKAGE.rglob("*.py"))
    for name in STORE_PACKAGES:
        yield from sorted((PLUGINS / name).rglob("*.py"))


def imports_of(path: Path) -> Iterator[Import]:
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(name, alias.name, (), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, target] if target else base)
            yield Import(name, target, tuple(a.name for a in node.names), node.lineno)


ALL_IMPORTS = [imp for path in source_files() for imp in imports_of(path)]
MODULES = {module_name(p) for p in source_files()}


def resolve(imp: Import) -> set[str]:
    """The project modules an import loads: ``from gearstash.cli import main`` is the module
    ``gearstash.cli.main`` when that is a module, else the package ``gearstash.cli``."""
    found = set()
    for name in imp.names:
        if f"{imp.target}.{name}" in MODULES:
            found.add(f"{imp.target}.{name}")
    if imp.target in MODULES and (not imp.names or len(found) < len(imp.names)):
        found.add(imp.target)
    return found


def test_the_source_was_read() -> None:
    # The rules below would pass vacuously on an empty graph.
    assert len(MODULES) > 60
    assert any(
        i.module == "gearstash.worker.slot" and i.target == "gearstash.worker.job"
        for i in ALL_IMPORTS
    )


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("gearstash.protocol")))
def test_the_protocol_touches_no_socket(module: str) -> None:
    """The codec and the worker state machine are sans-IO: no sockets, selectors, threads or
    clocks; moving bytes is the transport's business."""
    forbidden = {"socket", "select", "selectors", "ssl", "threading", "time", "asyncio"}
    bad = [str(i) for i in ALL_IMPORTS if i.module == module and i.target in forbidden]
    assert not bad


def test_only_the_transport_and_the_harnesses_open_sockets() -> None:
    allowed_prefixes = (
        "gearstash.transport.",
        "gearstash.worker.slot",  # a socketpair to wake a sleeping slot
        "gearstash.testing.",
        "gearstash.store.spoolfile",  # the host name in a spool's header
        "gearstash.worker.worker",  # the host name in the worker's identity
        "gearstash_",  # stores talk to their servers through their drivers
    )
    users = {i.module for i in ALL_IMPORTS if i.target == "socket"}
    stray = sorted(m for m in users if not m.startswith(allowed_prefixes))
    assert not stray, f"socket imported outside the transport: {stray}"


def test_no_private_name_is_imported_across_modules() -> None:
    bad = [
        str(i)
        for i in ALL_IMPORTS
        if (i.target.startswith("gearstash") and i.target != i.module)
        for n in i.names
        if n.startswith("_") and not n.startswith("__")
    ]
    assert not bad


@pytest.mark.parametrize("store", STORE_PACKAGES)
def test_stores_import_only_the_model_the_store_contract_and_the_spine(store: str) -> None:
    allowed = (
        "gearstash.model.",
        "gearstash.store.contract",
        "gearstash.store.urls",
        "gearstash.spine.",
        "gearstash.errors",
    )
    bad = [
        str(i)
        for i in ALL_IMPORTS
        if i.module.split(".")[0] == store
        and i.target.startswith("gearstash")
        and not i.target.startswith(store)
        and not (i.target == "gearstash" and i.names == ("hookimpl",))
        and not i.target.startswith(allowed)
    ]
    assert not bad


def import_graph() -> dict[str, set[str]]:
    """Module → the project modules it imports (the lazy ``gearstash/__init__.py`` facade, which
    imports nothing at run time, left out: everything else may name it for ``hookimpl``)."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in ALL_IMPORTS:
        if imp.module == "gearstash":
            continue
        for target in resolve(imp):
            if target != imp.module and target != "gearstash":
                graph[imp.module].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles_type_checking_ones_included() -> None:
    graph = import_graph()
    assert sum(len(v) for v in graph.values()) > 100
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_job_is_a_leaf_and_tokens_need_no_client() -> None:
    graph = import_graph()
    assert graph["gearstash.worker.job"] <= {"gearstash.model.records"}
    assert not {m for m in graph["gearstash.client.tokens"] if m.startswith("gearstash.client")}


ENVIRON = re.compile(r"os\.environ|os\.getenv|environ\.get")


def test_the_environment_is_read_in_config_only() -> None:
    readers = sorted(module_name(p) for p in source_files() if ENVIRON.search(p.read_text()))
    # the demo passes the environment on to the worker it starts, with the store URL added
    assert readers == ["gearstash.cli.demo", "gearstash.config"], readers
    demo = (PACKAGE / "cli" / "demo.py").read_text()
    assert len(ENVIRON.findall(demo)) == 1 and "dict(\n            os.environ," in demo


def one_place(pattern: str) -> list[str]:
    return sorted(module_name(p) for p in source_files() if re.search(pattern, p.read_text()))


def test_one_home_folder_one_spool_bound_one_admin_reader() -> None:
    assert one_place(r"XDG_DATA_HOME") == ["gearstash.config"]
    assert one_place(r"1 << 30|2 \*\* 30|1024 \*\* 3") == ["gearstash.config"]
    assert one_place(r"class \w*Admin\w*Reader") == ["gearstash.protocol.admin"]
    # and both places that read admin replies use it
    for module in ("gearstash.transport.connection", "gearstash.testing.gearmand"):
        assert any(i.module == module and "AdminReader" in i.names for i in ALL_IMPORTS), module
