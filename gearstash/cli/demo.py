"""``gearstash demo``: the seed's example, end to end, on a private gearmand.

The example of the classic Gearman article: a ``reverse`` worker that reports progress, two
background jobs ``ABC123`` and ``DEF456`` followed by handle — except that here the worker's data and
result are not lost: they are fetched back by handle from the store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from gearstash import config
from gearstash.cli.progress import ProgressDisplay
from gearstash.cli.visible import visible
from gearstash.client.client import Client
from gearstash.model.records import JobRef
from gearstash.store.urls import redact_url
from gearstash.testing.gearmand import Gearmand
from gearstash.worker.job import Job


def reverse(job: Job) -> bytes:
    """Reverse the workload in ``$GEARSTASH_DEMO_STEPS`` steps (default 10), reporting each step
    as WORK_STATUS and a WORK_DATA chunk, ``$GEARSTASH_DEMO_DELAY`` seconds apart."""
    steps, delay = config.demo_pace()
    text = job.workload
    for step in range(1, steps + 1):
        time.sleep(delay)
        job.send_status(step, steps)
        job.send_data(b"step %d/%d of %s" % (step, steps, text))
    return text[::-1]


def run_demo(payloads: list[str], *, steps: int = 10, delay: float = 0.15) -> None:
    """Run the whole demo; raises GearstashError when a part cannot start."""
    console = Console(emoji=False)  # a handle like H:x:1 must not turn into an emoji
    with tempfile.TemporaryDirectory(prefix="gearstash-demo-") as folder, Gearmand() as gearmand:
        # A private store (the folder is 0700): the demo never writes into the user's own store.
        store = f"sqlite:///{folder}/demo.db"
        console.print(f"[bold]gearmand[/] listening on {gearmand.address} (private, for this demo)")
        env = dict(
            os.environ,
            GEARSTASH_STORE=store,
            GEARSTASH_SPOOL=f"{folder}/spool",
            GEARSTASH_DEMO_STEPS=str(steps),
            GEARSTASH_DEMO_DELAY=str(delay),
        )
        # The worker's messages go to a file and are shown from there, so that none is printed
        # into the middle of the live progress bars.
        worker_log = Path(folder, "worker.log")
        with worker_log.open("wb") as log_file:
            worker = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gearstash",
                    "worker",
                    "--server",
                    gearmand.address,
                    "gearstash.cli.demo:reverse",
                ],
                env=env,
                stdout=log_file,
                stderr=log_file,
            )
        shown = _show_worker_log(console, worker_log, 0, wait_for_line=worker)
        try:
            with Client([gearmand.address], store=store) as client:
                console.print(f"[bold]store[/] {redact_url(store)}")
                refs = []
                for payload in payloads:
                    ref = client.submit_background("reverse", payload)
                    refs.append(ref)
                    console.print(
                        f"submitted reverse({escape(visible(payload))}) in the background: handle "
                        f"[cyan]{escape(visible(ref.handle))}[/]  (ref {escape(visible(str(ref)))})"
                    )
                _show_progress(client, refs, payloads)
            console.print(
                "\n[bold]gearmand has forgotten these jobs; the store has not.[/] "
                "Fetching by handle:"
            )
            with Client([gearmand.address], store=store) as reader:
                for ref, payload in zip(refs, payloads, strict=True):
                    view = reader.fetch(JobRef(ref.handle))
                    record = view.record
                    live = reader.status(JobRef(ref.handle))
                    console.print(
                        f"\n[cyan]{escape(visible(ref.handle))}[/] reverse({escape(visible(payload))}): "
                        f"state [green]{view.state.value}[/]  (gearmand says known="
                        f"{int(live.known)} running={int(live.running)})"
                    )
                    if record is not None:
                        for chunk in record.data:
                            console.print(
                                f"  data    {escape(visible(chunk))}",
                                highlight=False,
                            )
                        console.print(
                            f"  result  [bold]{escape(visible(record.result or b''))}[/]",
                            highlight=False,
                        )
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
            _show_worker_log(console, worker_log, shown)
    console.print("\nworker and gearmand stopped. Done.")


def _show_worker_log(
    console: Console,
    path: Path,
    offset: int,
    *,
    wait_for_line: subprocess.Popen[bytes] | None = None,
) -> int:
    """Print what the worker wrote to ``path`` from ``offset`` on (escaped); returns the new
    offset. ``wait_for_line``: first wait (up to 15 s, while that process lives) for a whole line,
    the worker's start-up banner."""
    deadline = time.monotonic() + 15
    while wait_for_line is not None and wait_for_line.poll() is None:
        if b"\n" in path.read_bytes()[offset:] or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    data = path.read_bytes()[offset:]
    text = data[: data.rfind(b"\n") + 1]
    for line in text.splitlines():
        console.print(visible(line), markup=False, highlight=False)
    return offset + len(text)


def _show_progress(client: Client, refs: list[JobRef], payloads: list[str]) -> None:
    with ProgressDisplay() as display:
        tasks = [
            display.add(f"{r.handle.decode()} reverse({p})")
            for r, p in zip(refs, payloads, strict=True)
        ]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            views = client.fetch_many(refs)
            for task, view in zip(tasks, views, strict=True):
                display.update(task, view)
            # Final in the store; the demo then fetches by bare handle, which is only
            # unambiguous once gearmand has also forgotten the job (a moment later).
            if all(v.state.final and v.status is not None and not v.status.known for v in views):
                return
            time.sleep(0.05)
