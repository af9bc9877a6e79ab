"""``gearstash worker --metrics-port``: a real worker's Prometheus metrics over HTTP."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import httpx2
from workers import running_worker

from gearstash.client.client import Client
from gearstash.testing.gearmand import Gearmand, free_port
from gearstash.worker.metrics import instrument, serve
from gearstash.worker.worker import Worker


def _value(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    assert found, f"{name} not in the metrics"
    return float(found.group(1))


def test_worker_metrics_count_jobs_and_time_writes(gearmand: Gearmand, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/m.db"
    port = free_port()
    servers = [gearmand.address]
    probe = Worker(servers, store=url, spool=str(tmp_path / "spool"))
    try:
        registry = instrument(probe)
        serve(registry, port)
        before = httpx2.get(f"http://127.0.0.1:{port}/metrics").text
        assert _value(before, "gearstash_worker_jobs_total") == 0
        assert _value(before, "gearstash_spool_batches") == 0
        assert _value(before, "gearstash_store_down_seconds") == 0
    finally:
        probe.close()
    # the same through the command line, on a worker that runs jobs
    metrics_port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gearstash", "worker", "-s", gearmand.address, "--store", url,
         "--metrics-port", str(metrics_port), "--max-jobs", "3", "workers:echo"],
        cwd=Path(__file__).parent, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        with Client(servers, store=url) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    httpx2.get(f"http://127.0.0.1:{metrics_port}/metrics")
                    break
                except httpx2.ConnectError:
                    assert time.monotonic() < deadline and proc.poll() is None
                    time.sleep(0.1)
            refs = [client.submit_background("echo", b"%d" % i) for i in range(2)]
            for ref in refs:
                assert client.wait(ref, timeout=30).result is not None
            text = httpx2.get(f"http://127.0.0.1:{metrics_port}/metrics").text
            assert _value(text, "gearstash_worker_jobs_total") == 2
            writes = _value(text, 'gearstash_store_write_seconds_count{outcome="ok"}')
            assert writes >= 2
            assert _value(text, 'gearstash_store_write_seconds_count{outcome="error"}') == 0
            last = client.submit_background("echo", b"last")
            assert client.wait(last, timeout=30).result == b"last"
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        said = proc.stderr.read()
        proc.stderr.close()
    assert "metrics on http://127.0.0.1" in said


def test_metered_store_passes_reads_through(gearmand: Gearmand, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/p.db"
    worker = Worker([gearmand.address], store=url)
    try:
        instrument(worker)
        with (
            running_worker([gearmand.address], worker.store) as _w,
            Client([gearmand.address], store=url) as client,
        ):
            ref = client.submit_background("reverse", b"abc")
            assert client.wait(ref, timeout=30).result == b"cba"
        assert worker.store.get_many([ref])[0] is not None
        assert hasattr(worker.store, "get_after")  # optional methods pass through
    finally:
        worker.close()
