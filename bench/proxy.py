"""The capturing proxy's targets (issue 12), measured side by side in one run.

    .venv/bin/python bench/proxy.py [--jobs 20000] [--workers 4] [--repeat 2] [--latency 2000]

Throughput: N background jobs are queued on a private gearmand (pipelined SUBMIT_JOB_BG), then W
PHP pecl-gearman worker processes (bench/php_worker.php; each job sends one status, one data
chunk and returns its result) drain them; the rate is N / wall time from starting the workers to
the last one's exit. Cases, interleaved within each repeat:

* ``direct plain``      the PHP worker straight to gearmand, nothing captured;
* ``direct by hand``    the same, writing status, data and result to Redis itself (phpredis, one
                        pipelined round trip per job);
* ``proxy redis``       the PHP worker through ``gearstash proxy --store redis://`` (checked: every
                        job's record complete, with its status, chunk and result);
* ``proxy null``        the PHP worker through ``gearstash proxy --store null://``.

Latency: one PHP worker, one client submitting foreground jobs one at a time (SUBMIT_JOB, wait
for WORK_COMPLETE) straight to gearmand; p50/p90 of the round trip with the worker direct and
through the proxy (Redis and null). The targets: proxy redis ≥ 1.0 x direct by hand, proxy null ≥
0.5 x direct plain, added p50 ≤ 0.3 ms. Writes bench/results/proxy.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import servers
from run import BENCH, check_captured, fill, queued, wait_drained

from gearstash.protocol.packets import Decoder, PacketType, encode_request
from gearstash.testing.gearmand import Gearmand, free_port

CASES = ("direct plain", "direct by hand", "proxy redis", "proxy null")


class ProxyProcess:
    """``gearstash proxy`` in front of ``g`` on a free port, stopped with SIGTERM."""

    def __init__(self, g: Gearmand, store: str, home: Path, processes: int = 1) -> None:
        self.port = free_port()
        argv = [
            str(Path(sys.executable).with_name("gearstash")),
            "proxy",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--upstream",
            g.address,
            "--store",
            store,
            "--processes",
            str(processes),
        ]
        self.log = home / f"proxy-{self.port}.log"
        env = {**os.environ, "GEARSTASH_HOME": str(home)}
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env
            )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"proxy did not start: {self.log.read_text()}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def drain(port: int, function: str, n: int, workers: int, variant: str, redis_port: int) -> float:
    """Run ``workers`` PHP workers on ``port`` until they ran ``n`` jobs; return the wall time."""
    share = [n // workers + (1 if i < n % workers else 0) for i in range(workers)]
    argv = ["php", str(BENCH / "php_worker.php"), "127.0.0.1", str(port), function]
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [*argv, str(k), variant, str(redis_port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in share
    ]
    done = 0
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"PHP worker exited {proc.returncode}: {err[-2000:]}")
        done += json.loads(out.strip().splitlines()[-1])["jobs"]
    wall = time.perf_counter() - start
    if done != n:
        raise RuntimeError(f"workers ran {done} jobs, not {n}")
    return wall


def throughput(
    case: str, g: Gearmand, n: int, workers: int, redis_port: int, home: Path, tag: str
) -> float:
    function = f"bench_{case.replace(' ', '_')}_{tag}"
    jobs = fill(g.port, function, n)
    if queued(g, function)[0] != n:
        raise RuntimeError(f"{function}: not all {n} jobs queued")
    redis_url = f"redis://127.0.0.1:{redis_port}/0?prefix=px{tag}"
    proxy = None
    port = g.port
    if case.startswith("proxy"):
        proxy = ProxyProcess(g, redis_url if case == "proxy redis" else "null://", home)
        port = proxy.port
    variant = "byhand" if case == "direct by hand" else "status"
    try:
        wall = drain(port, function, n, workers, variant, redis_port)
    finally:
        if proxy is not None:
            proxy.stop()
    wait_drained(g, function)
    if case == "proxy redis":
        check_captured(redis_url, g.address, jobs, "status")
    return n / wall


def latency(g: Gearmand, port: int, count: int, function: str) -> list[float]:
    """Round trips (seconds) of ``count`` foreground jobs, one at a time, with one PHP worker
    connected on ``port``."""
    worker = subprocess.Popen(
        [
            "php",
            str(BENCH / "php_worker.php"),
            "127.0.0.1",
            str(port),
            function,
            str(count + 50),
            "status",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    times: list[float] = []
    try:
        with socket.create_connection(("127.0.0.1", g.port), timeout=30) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            decoder = Decoder()
            fn = function.encode()
            for i in range(count + 50):
                packet = encode_request(PacketType.SUBMIT_JOB, fn, b"lat-%d" % i, b"x" * 20)
                start = time.perf_counter()
                sock.sendall(packet)
                finished = False
                while not finished:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionError("gearmand closed the client connection")
                    decoder.feed(chunk)
                    for p in decoder:
                        if p.kind in (PacketType.WORK_COMPLETE, PacketType.WORK_FAIL):
                            finished = True
                if i >= 50:  # the first jobs warm up (and wait for the worker to connect)
                    times.append(time.perf_counter() - start)
    finally:
        worker.wait(timeout=30)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--latency", type=int, default=2000)
    args = parser.parse_args()
    results: dict[str, list[float]] = {c: [] for c in CASES}
    lat: dict[str, dict[str, float]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="gs-proxy-bench-") as tmp,
        servers.redis_server() as redis,
    ):
        home = Path(tmp)
        g = Gearmand(workdir=home / "gearmand")
        g.start()
        try:
            for r in range(args.repeat):
                for case in CASES:
                    rate = throughput(case, g, args.jobs, args.workers, redis.port, home, str(r))
                    results[case].append(rate)
                    print(f"repeat {r + 1}: {case:16s} {rate:9.0f} jobs/s", flush=True)
            if args.latency:
                runs = {
                    "direct": None,
                    "proxy redis": f"redis://127.0.0.1:{redis.port}/0?prefix=lat",
                    "proxy null": "null://",
                }
                for name, store in runs.items():
                    proxy = ProxyProcess(g, store, home) if store else None
                    try:
                        port = proxy.port if proxy else g.port
                        times = latency(g, port, args.latency, f"lat_{name.replace(' ', '_')}")
                    finally:
                        if proxy is not None:
                            proxy.stop()
                    q = statistics.quantiles(times, n=10)
                    lat[name] = {"p50_ms": statistics.median(times) * 1e3, "p90_ms": q[8] * 1e3}
                    print(
                        f"latency {name:12s} p50 {lat[name]['p50_ms']:.3f} ms  "
                        f"p90 {lat[name]['p90_ms']:.3f} ms",
                        flush=True,
                    )
        finally:
            g.stop()
    best = {c: max(v) for c, v in results.items()}
    summary = {
        "jobs": args.jobs,
        "workers": args.workers,
        "repeat": args.repeat,
        "rates": results,
        "best": best,
        "proxy_redis_vs_by_hand": best["proxy redis"] / best["direct by hand"],
        "proxy_null_vs_direct": best["proxy null"] / best["direct plain"],
        "latency": lat,
    }
    if lat:
        summary["added_p50_ms"] = {
            k: v["p50_ms"] - lat["direct"]["p50_ms"] for k, v in lat.items() if k != "direct"
        }
    print(json.dumps(summary, indent=2))
    out = BENCH / "results"
    out.mkdir(exist_ok=True)
    (out / "proxy.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
