"""Benchmarks of one ``gearstash web`` process (issue 11's targets), reported in BENCHMARKS.md.

    .venv/bin/python bench/web.py [--followers 1000] [--jobs 100000] [--stores sqlite,redis,postgres]

0. The hub alone (``hub``): N followers of N jobs in this process, one chunk written to each;
   write-to-formatted-event latency without HTTP (and ``memory://`` works only here).
1. SSE followers: N jobs running in the store, N concurrent ``/api/jobs/{ref}/events`` streams
   (one per job, raw asyncio sockets on uvloop); then a writer process gives every job a data
   chunk (one write each, back to back) whose payload is the writer's clock; the latency is the
   receiver's clock when the ``chunk`` event arrives minus that. Also the web process's threads
   and RSS (``/proc``) idle before and with N followers, and its CPU time per event.
2. ``GET /api/jobs`` (first page, 50 jobs) over ``--jobs`` stored jobs: p50 of 50 requests.
3. ``GET /api/jobs/{ref}`` with keep-alive: requests per second over 5 s from 8 connections.

Stores: SQLite in a temp dir, Redis (a private redis-server), PostgreSQL (a private schema on the
machine's server). Job servers named in the jobs are not configured, so reads are store reads.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import uvloop  # noqa: E402
from servers import postgres_schema, redis_server  # noqa: E402

from gearstash.model.records import Event, EventKind, JobKey, JobRef  # noqa: E402
from gearstash.spine.manager import open_store  # noqa: E402
from gearstash.testing.gearmand import free_port  # noqa: E402

SERVER = "bench.invalid:4730"


@contextlib.contextmanager
def store_url(kind: str, tmp: str) -> Iterator[str]:
    if kind == "sqlite":
        url = f"sqlite:///{tmp}/web-{os.getpid()}.db"
        open_store(url).close()  # made here: gearstash web never creates its store
        yield url
    elif kind == "redis":
        with redis_server() as server:
            yield f"redis://127.0.0.1:{server.port}/0"
    elif kind == "memory":
        yield "memory://bench"
    elif kind == "postgres":
        with postgres_schema() as url:
            yield url
    else:
        raise SystemExit(f"unknown store {kind}")


@contextlib.contextmanager
def web_process(url: str, tmp: str) -> Iterator[tuple[int, int]]:
    """``gearstash web`` on a free port; yields (port, pid)."""
    port = free_port()
    env = {
        **os.environ,
        "GEARSTASH_STORE": url,
        "GEARSTASH_HOME": tmp,
        "XDG_CONFIG_HOME": tmp,
        "GEARSTASH_SERVERS": "127.0.0.1:9",
    }
    proc = subprocess.Popen(
        [str(ROOT / ".venv/bin/gearstash"), "web", "--listen", f"127.0.0.1:{port}"],
        env=env,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with contextlib.closing(
                    __import__("socket").create_connection(("127.0.0.1", port), 0.2)
                ):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("gearstash web did not start") from None
                time.sleep(0.1)
        yield port, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def proc_status(pid: int) -> tuple[int, int]:
    """(threads, RSS in KiB) of a process."""
    threads = rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            threads = int(line.split()[1])
        elif line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return threads, rss


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


# ------------------------------------------------------------------------------ SSE followers


async def follow(port: int, ref: str, ready: asyncio.Event, got: asyncio.Queue[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    path = f"/api/jobs/{quote(ref, safe='')}/events"
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    await writer.drain()
    event = ""
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            text = line.decode().rstrip("\r\n")
            if text.startswith("event: "):
                event = text[7:]
            elif text.startswith("data: "):
                if event == "state":
                    ready.set()
                elif event == "chunk":
                    sent = float(json.loads(text[6:])["data"])
                    await got.put(time.time() - sent)
    finally:
        writer.close()


def write_chunks(url: str, keys: list[tuple[str, bytes, bytes]]) -> None:
    """In the writer process: one chunk (the clock) to each job, one write each."""
    store = open_store(url)
    try:
        for server, handle, unique in keys:
            key = JobKey(server, handle, unique)
            store.write([Event(EventKind.DATA, key, time.time(), b"%r" % time.time())])
    finally:
        store.close()


async def sse_bench(
    port: int, pid: int, url: str, followers: int, rounds: int
) -> dict[str, object]:
    store = open_store(url)
    keys = [JobKey(SERVER, b"H:sse:%d" % i, b"u%d" % i) for i in range(followers)]
    now = time.time()
    for start in range(0, followers, 500):
        store.write(
            [Event(EventKind.STARTED, k, now, function=b"f") for k in keys[start : start + 500]]
        )
    base_threads, base_rss = proc_status(pid)
    got: asyncio.Queue[float] = asyncio.Queue()
    readies = [asyncio.Event() for _ in keys]
    tasks = []
    for key, ready in zip(keys, readies, strict=True):
        ref = str(JobRef(key.handle, key.server, key.unique))
        tasks.append(asyncio.create_task(follow(port, ref, ready, got)))
        if len(tasks) % 100 == 0:
            await asyncio.sleep(0.05)
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 120)
    await asyncio.sleep(2)
    idle_threads, idle_rss = proc_status(pid)
    latencies: list[float] = []
    loop = asyncio.get_running_loop()
    # the writer is a process of its own, as a worker is: its writes do not hold this
    # process's interpreter while the streams are read
    spec = [(k.server, k.handle, k.unique) for k in keys]
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as writer:
        await loop.run_in_executor(writer, write_chunks, url, [])  # started before the clock
        cpu_before = cpu_seconds(pid)
        for _round in range(rounds):
            await loop.run_in_executor(writer, write_chunks, url, spec)
            for _ in keys:
                latencies.append(await asyncio.wait_for(got.get(), 60))
            await asyncio.sleep(0.5)
        user, system = (b - a for a, b in zip(cpu_before, cpu_seconds(pid), strict=True))
    busy_threads, _busy_rss = proc_status(pid)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    store.close()
    return {
        "followers": followers,
        "events": len(latencies),
        "latency_p50_ms": round(1000 * percentile(latencies, 50), 1),
        "latency_p99_ms": round(1000 * percentile(latencies, 99), 1),
        "threads_idle_before": base_threads,
        "threads_with_followers": max(idle_threads, busy_threads),
        "rss_before_kib": base_rss,
        "rss_with_idle_followers_kib": idle_rss,
        "kib_per_idle_follower": round((idle_rss - base_rss) / followers, 1),
        "server_cpu_us_per_event": round(1e6 * (user + system) / len(latencies)),
        "of_which_system_us": round(1e6 * system / len(latencies)),
    }


async def hub_bench(url: str, followers: int) -> dict[str, object]:
    """The hub and the event formatting alone, in this process (no HTTP, no sockets)."""
    from gearstash.web.events import Cursor, Follower
    from gearstash.web.hub import Hub

    store = open_store(url)
    keys = [JobKey(SERVER, b"H:hub:%d" % i, b"h%d" % i) for i in range(followers)]
    store.write([Event(EventKind.STARTED, k, time.time(), function=b"f") for k in keys])
    hub = Hub(store, interval=0.05)
    latencies: list[float] = []

    async def one(key: JobKey) -> None:
        follower = Follower(Cursor())
        async for record in hub.follow(JobRef(key.handle, key.server, key.unique)):
            for message in follower.step(record, time.time()):
                if message.startswith("id:") and "event: chunk" in message:
                    sent = json.loads(message.rsplit("data: ", 1)[1])["data"]
                    latencies.append(time.time() - float(sent))

    tasks = [asyncio.create_task(one(k)) for k in keys]
    await asyncio.sleep(1)
    started = time.monotonic()

    def write_round() -> None:
        for key in keys:
            store.write([Event(EventKind.DATA, key, time.time(), b"%r" % time.time())])

    await asyncio.to_thread(write_round)
    written = time.monotonic() - started
    while len(latencies) < followers:
        await asyncio.sleep(0.02)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await hub.close()
    store.close()
    return {
        "followers": followers,
        "write_round_s": round(written, 2),
        "hub_rounds": hub.rounds,
        "latency_p50_ms": round(1000 * percentile(latencies, 50), 1),
        "latency_p99_ms": round(1000 * percentile(latencies, 99), 1),
    }


# ------------------------------------------------------------------------------ HTTP


async def http_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> bytes:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    await writer.drain()
    length = 0
    status = await reader.readline()
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    body = await reader.readexactly(length)
    if not status.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"{path}: {status!r} {body[:200]!r}")
    return body


async def list_bench(port: int, url: str, jobs: int) -> dict[str, object]:
    store = open_store(url)
    now = time.time()
    batch: list[Event] = []
    filled = time.monotonic()
    for i in range(jobs):
        key = JobKey(SERVER, b"H:list:%d" % i, b"l%d" % i)
        batch += [
            Event(EventKind.STARTED, key, now, function=b"f"),
            Event(EventKind.STATUS, key, now, numerator=1, denominator=2),
            Event(EventKind.COMPLETED, key, now, b"r"),
        ]
        if len(batch) >= 3000:
            store.write(batch)
            batch = []
    store.write(batch)
    filled = time.monotonic() - filled
    store.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    times = []
    for _ in range(50):
        started = time.perf_counter()
        body = await http_get(reader, writer, "/api/jobs?limit=50")
        times.append(time.perf_counter() - started)
    page = json.loads(body)
    assert len(page["jobs"]) == 50 and page["cursor"]
    filtered = []
    for _ in range(20):
        started = time.perf_counter()
        await http_get(reader, writer, "/api/jobs?limit=50&state=complete")
        filtered.append(time.perf_counter() - started)
    counts = []
    for _ in range(5):
        started = time.perf_counter()
        await http_get(reader, writer, "/api/counts")
        counts.append(time.perf_counter() - started)
    writer.close()
    return {
        "stored_jobs": jobs,
        "fill_s": round(filled, 1),
        "first_page_p50_ms": round(1000 * statistics.median(times), 2),
        "first_page_state_complete_p50_ms": round(1000 * statistics.median(filtered), 2),
        "counts_p50_ms": round(1000 * statistics.median(counts), 1),
    }


async def rate_bench(
    port: int, url: str, connections: int = 8, seconds: float = 5.0
) -> dict[str, object]:
    store = open_store(url)
    key = JobKey(SERVER, b"H:rate:1", b"r1")
    store.write([Event(EventKind.STARTED, key, time.time(), function=b"f"),
                 Event(EventKind.DATA, key, time.time(), b"chunk"),
                 Event(EventKind.COMPLETED, key, time.time(), b"result")])  # fmt: skip
    store.close()
    path = "/api/jobs/" + quote(str(JobRef(key.handle, key.server, key.unique)), safe="")
    if shutil.which("wrk"):  # a C load generator leaves the CPU to the server
        out = subprocess.run(
            ["wrk", "-t2", f"-c{connections}", f"-d{int(seconds)}s", f"http://127.0.0.1:{port}{path}"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        if errors:
            raise RuntimeError(f"wrk saw {errors.group(1)} error responses")
        return {"requests_per_s": round(rate), "connections": connections, "client": "wrk"}
    deadline = time.monotonic() + seconds
    done = 0

    async def one() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < deadline:
            await http_get(reader, writer, path)
            done += 1
        writer.close()

    started = time.monotonic()
    await asyncio.gather(*(one() for _ in range(connections)))
    rate = round(done / (time.monotonic() - started))
    return {"requests_per_s": rate, "connections": connections, "client": "python asyncio"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--followers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--stores", default="sqlite,redis,postgres")
    parser.add_argument("--parts", default="hub,sse,list,rate")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.stores.split(","):
            with store_url(kind, tmp) as url:
                out: dict[str, object] = {}
                if "hub" in parts:
                    out["hub"] = asyncio.run(hub_bench(url, args.followers))
                    print(kind, "hub", out["hub"], flush=True)
                if kind == "memory":  # one process only: no web process can share it
                    results[kind] = out
                    continue
                with web_process(url, tmp) as (port, pid):
                    if "sse" in parts:
                        out["sse"] = uvloop.run(  # the client's loop as fast as the server's
                            sse_bench(port, pid, url, args.followers, args.rounds)
                        )
                        print(kind, "sse", out["sse"], flush=True)
                    if "rate" in parts:
                        out["job_rate"] = asyncio.run(rate_bench(port, url))
                        print(kind, "rate", out["job_rate"], flush=True)
                    if "list" in parts:
                        out["list"] = asyncio.run(list_bench(port, url, args.jobs))
                        print(kind, "list", out["list"], flush=True)
                results[kind] = out
    target = ROOT / "bench" / "results"
    target.mkdir(exist_ok=True)
    (target / "web.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
