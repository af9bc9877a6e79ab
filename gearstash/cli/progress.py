"""Progress display for ``gearstash wait`` and the demo.

On a terminal: rich progress bars from each job's numerator/denominator. Elsewhere (pipes, CI logs):
one plain line per change, like gearman's ``10% Complete``.
"""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from gearstash.cli.visible import visible
from gearstash.client.client import JobView


class ProgressDisplay:
    """Shows the progress of one or more jobs; a context manager."""

    def __init__(self, *, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        # handles, uniques and server names are shown as they are: no rich markup, no emoji codes
        # (``H:x:1`` must not become a cross mark, nor ``[/b]`` in a unique a markup error)
        self.console = console or Console(stderr=True, markup=False, emoji=False)
        self.live = enabled and self.console.is_terminal
        self._progress: Progress | None = None
        self._labels: dict[int, str] = {}
        self._last: dict[int, str] = {}
        if self.live:
            self._progress = Progress(
                TextColumn("{task.description}", markup=False),
                BarColumn(),
                TextColumn("{task.fields[info]}", markup=False),
                TimeElapsedColumn(),
                console=self.console,
            )

    def __enter__(self) -> ProgressDisplay:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def add(self, label: str) -> int:
        """Add a job line; returns its id for :meth:`update`. Control characters in ``label``
        are shown escaped."""
        label = visible(label)
        if self._progress is not None:
            task = int(self._progress.add_task(label, total=None, info="asking…"))
        else:
            task = len(self._labels)
        self._labels[task] = label
        return task

    def update(self, task: int, view: JobView) -> None:
        """Show ``view``'s state and numerator/denominator on line ``task``."""
        if not self.enabled:
            return
        num, den = view.numerator, view.denominator
        pct = f"{100 * num // den}% Complete" if den else ""
        info = view.state.value if not pct or view.state.final else pct
        if self._progress is not None:
            if view.state.final and den:
                num = den
            self._progress.update(TaskID(task), completed=num, total=den or None, info=info)
            return
        line = f"{self._labels[task]}: {info}" + (f" ({num}/{den})" if den else "")
        if self._last.get(task) != line:
            self._last[task] = line
            self.console.print(line, highlight=False, markup=False, emoji=False)
