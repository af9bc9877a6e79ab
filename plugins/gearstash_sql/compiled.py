"""Core statements compiled once per store and run straight on a DBAPI cursor.

The write path is gearstash's hot path (a worker writes every job it runs), and SQLAlchemy's
``Connection.execute`` costs about as much per statement as SQLite itself. The common writes are
SQL text in :mod:`gearstash_sql.direct`; the general write path (a job run again, several jobs in one
call) compiles its Core constructs once for the store's dialect (:class:`Compiled`) and runs them
with ``cursor.execute``/``executemany`` on the thread's write connection. This is only done for
statements whose parameters the three drivers take natively (bytes, str, int, float, None) and whose
columns need no result processing; reads and DDL go through SQLAlchemy as usual."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.compiler import SQLCompiler


class Compiled:
    """One statement compiled for one dialect, with its parameters in the driver's order."""

    __slots__ = ("names", "positional", "sql")

    def __init__(
        self, statement: sa.ClauseElement, dialect: sa.Dialect, column_keys: Sequence[str] = ()
    ) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=list(column_keys) or None)
        assert isinstance(compiled, SQLCompiler)
        self.sql: str = compiled.string
        self.positional: bool = bool(compiled.positional)
        names = compiled.positiontup if compiled.positional else list(compiled.binds)
        self.names: tuple[str, ...] = tuple(names or ())

    def params(self, values: Mapping[str, Any]) -> Sequence[Any] | dict[str, Any]:
        """The parameters for ``cursor.execute`` from ``values`` (column/bind name → value)."""
        if self.positional:
            return [values[name] for name in self.names]
        return {name: values[name] for name in self.names}

    def __repr__(self) -> str:
        return f"Compiled({self.sql!r})"


class CompiledCache:
    """:class:`Compiled` statements made on first use, per set of column keys.

    For an UPDATE whose SET list depends on which columns a batch of events changed (a handful of
    combinations in practice).
    """

    __slots__ = ("_cache", "_dialect", "_make")

    def __init__(self, make: Callable[[], sa.ClauseElement], dialect: sa.Dialect) -> None:
        self._make = make
        self._dialect = dialect
        self._cache: dict[frozenset[str], Compiled] = {}

    def get(self, keys: Sequence[str]) -> Compiled:
        """The statement compiled with SET/VALUES for exactly ``keys`` (plus its own binds)."""
        key = frozenset(keys)
        compiled = self._cache.get(key)
        if compiled is None:
            compiled = self._cache[key] = Compiled(self._make(), self._dialect, sorted(key))
        return compiled
