"""How fast gearstash stores keep and give back jobs, next to Celery 5 result backends.

    .venv/bin/python bench/stores.py [--records 5000] [--repeat 3] [--cases WORD,...]

Sections (``--cases`` picks sections and/or stores by name; default: everything):

records   one ~100-byte result per record, single thread: write-only, read-only and write+read
          rates (median of R repeats of N records; within a repeat the rows take turns, a
          tenth of their records at a time), gearstash (``store.write([started,
          completed])``, ``store.get_many([ref])``) and Celery (``store_result``,
          ``get_task_meta``) side by side on the same servers; Celery's SQL backends use
          ``--sql-records`` records (they are slow). Targets: gearstash >= 2x Celery on Redis and
          memcached, >= 10x Celery's pooled SQL backend on SQLite and PostgreSQL (write+read).
fetch     ``Client.fetch_many`` of 1,000 jobs against 1,000 ``Client.fetch`` calls, through a
          private gearmand (the jobs stay queued there) and a store holding their records
          (redis, sqlite), and the batch's two parts (one pipelined status batch, one
          ``get_many``; the best of 5 per repeat). Target >= 20x.
wait      ``Client.wait(ref)`` latency on a push store (redis; postgres when its store has
          ``push``): from the end of the worker's final store write (a ``job_completed`` hook)
          to the return of wait(); sqlite (polling) for contrast. Target <= 5 ms median.

Stores: redis, redis-cluster, memcache, sqlite, postgres, mariadb (the last one an extra row, no
target; redis-cluster: a private cluster of three masters with a replica each, no Celery peer,
no target). The rows "bare redis set/get" and "bare memcache set/get" show the floor: one plain
client round trip per operation.
redis-server and memcached are started privately on free ports; PostgreSQL (db test) gets a
schema of its own and MariaDB a database of its own, both dropped at the end (``--private``: on
a PostgreSQL and a MariaDB of the run's own, the test suite's, on free ports). Results go to
bench/results/stores.json. Celery is needed for its rows only:

    .venv/bin/pip install 'celery[redis,memcache,sqlalchemy]'
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import servers
from targets import (
    CELERY_MISSING,
    RESULT,
    BareTarget,
    CeleryTarget,
    GearstashTarget,
    celery_installed,
)

from gearstash import Client, Worker, hookimpl
from gearstash.model.records import Event, EventKind, JobKey, State
from gearstash.spine.manager import get_plugin_manager, open_store
from gearstash.testing.gearmand import Gearmand

BENCH = Path(__file__).resolve().parent
SECTIONS = ("records", "fetch", "wait")
STORES = ("redis", "redis-cluster", "memcache", "sqlite", "postgres", "mariadb")
TARGETS = {"redis": 2.0, "memcache": 2.0, "sqlite": 10.0, "postgres": 10.0}
# the Celery row each target compares with: its SQL backend pooled (as a Celery worker child
# runs it; as shipped, it makes an engine per call: no fair peer)
PEERS = {"sqlite": "pooled", "postgres": "pooled"}
PHASES = ("write", "read", "write+read")
BLOCKS = 10  # rounds per repeat of the records section (rows take turns within a repeat)
SPLIT_TIMINGS = 5  # timings per repeat of each part of fetch_many (statuses, get_many)
WAIT_JOB_SECONDS = 0.03  # how long each job of the wait section runs before it completes


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def fmt(x: float | None, spec: str = ",.0f") -> str:
    return "-" if x is None else format(x, spec)


# ------------------------------------------------------------------------------ servers


@dataclass
class Urls:
    """Where each store lives in this run: gearstash URL and Celery backend URL per store."""

    gearstash: dict[str, str]
    celery: dict[str, str]
    ports: dict[str, int]  # of the private redis-server and memcached


def start_servers(
    stack: contextlib.ExitStack, stores: list[str], tmp: Path, private: bool = False
) -> Urls:
    """Start or reach what ``stores`` need; a store whose server is missing is left out.
    ``private``: PostgreSQL and MariaDB of the run's own too (else the machine's)."""
    gs: dict[str, str] = {}
    cel: dict[str, str] = {}
    ports: dict[str, int] = {}
    for store in stores:
        try:
            if store == "redis":
                port = ports[store] = stack.enter_context(servers.redis_server()).port
                gs[store] = f"redis://127.0.0.1:{port}/0?prefix=gsbench"
                cel[store] = f"redis://127.0.0.1:{port}/1"
            elif store == "redis-cluster":  # three masters, a replica each (WAIT 1 per write)
                gs[store] = stack.enter_context(servers.redis_cluster()).url + "?prefix=gsbench"
            elif store == "memcache":
                port = ports[store] = stack.enter_context(servers.memcached()).port
                gs[store] = f"memcache://127.0.0.1:{port}?prefix=gsbench"
                cel[store] = f"cache+memcached://127.0.0.1:{port}/"
            elif store == "sqlite":
                gs[store] = f"sqlite:///{tmp / 'gearstash.db'}"
                cel[store] = f"db+sqlite:///{tmp / 'celery.db'}"
            elif store == "postgres":
                schema = servers.private_postgres() if private else servers.postgres_schema()
                url = stack.enter_context(schema)
                gs[store], cel[store] = url, "db+" + url
            elif store == "mariadb":
                database = servers.private_mariadb() if private else servers.mariadb_database()
                gs[store] = stack.enter_context(database)
        except Exception as exc:
            print(f"{store}: unavailable, skipped ({type(exc).__name__}: {exc})")
    return Urls(gs, cel, ports)


# ------------------------------------------------------------------------------ 1. records


@dataclass
class Row:
    name: str
    store: str
    make: Callable[[], Any]  # -> GearstashTarget | CeleryTarget
    records: int


def rows_for(urls: Urls, records: int, sql_records: int) -> list[Row]:
    rows = [
        Row(f"gearstash {store}", store, lambda u=url: GearstashTarget(u), records)
        for store, url in urls.gearstash.items()
    ]
    rows += [
        Row(f"bare {store} set/get", store, lambda s=store, p=port: BareTarget(s, p), records)
        for store, port in urls.ports.items()
    ]
    if not celery_installed():
        print(CELERY_MISSING)
        return rows
    for store, url in urls.celery.items():
        if store in ("sqlite", "postgres"):
            n = min(records, sql_records)
            rows.append(Row(f"celery {store}", store, lambda u=url: CeleryTarget(u), n))
            make = lambda u=url: CeleryTarget(u, pooled=True)  # noqa: E731
            rows.append(Row(f"celery {store} pooled", store, make, n))
        else:
            rows.append(Row(f"celery {store}", store, lambda u=url: CeleryTarget(u), records))
    return rows


def seconds(op: Callable[[Any], None], keys: list[Any]) -> float:
    start = time.perf_counter()
    for key in keys:
        op(key)
    return time.perf_counter() - start


def bench_records(rows: list[Row], repeat: int) -> dict[str, dict[str, Any]]:
    """Every row's write, read and write+read rates.

    Each repeat runs in BLOCKS rounds; every round does a tenth of every row's records (write,
    read back, write+read), so load that comes and goes on the machine hits all rows alike.
    """
    targets = {row.name: row.make() for row in rows}
    results: dict[str, dict[str, Any]] = {
        row.name: {"records": row.records, **{p: [] for p in PHASES}} for row in rows
    }
    try:
        for row in rows:  # warm-up: tables, connections, scripts
            target = targets[row.name]
            for key in [target.key("warm", i) for i in range(20)]:
                target.write(key)
                target.read(key)
        for rep in range(repeat):
            spent = {row.name: dict.fromkeys(PHASES, 0.0) for row in rows}
            for block in range(BLOCKS):
                for row in rows:
                    target = targets[row.name]
                    part = range(block * row.records // BLOCKS, (block + 1) * row.records // BLOCKS)
                    first = [target.key(f"{rep}a", i) for i in part]
                    second = [target.key(f"{rep}b", i) for i in part]

                    def both(key: Any, t: Any = target) -> None:
                        t.write(key)
                        t.read(key)

                    took = spent[row.name]
                    took["write"] += seconds(target.write, first)
                    took["read"] += seconds(target.read, first)
                    took["write+read"] += seconds(both, second)
            for row in rows:
                got = results[row.name]
                for p in PHASES:
                    got[p].append(row.records / spent[row.name][p])
                print(
                    f"  run {rep + 1}/{repeat} {row.name:<24} "
                    + "  ".join(f"{p} {got[p][-1]:>8,.0f}/s" for p in PHASES),
                    flush=True,
                )
    finally:
        for target in targets.values():
            target.close()
    for got in results.values():
        for p in PHASES:
            got[f"{p} median"] = median(got[p])
    return results


def record_verdicts(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for store, target in TARGETS.items():
        peer = f"celery {store}" + (f" {PEERS[store]}" if store in PEERS else "")
        ours, theirs = results.get(f"gearstash {store}"), results.get(peer)
        value = None
        if ours and theirs:
            value = ours["write+read median"] / theirs["write+read median"]
        out.append(
            {
                "check": f"{store} write+read vs Celery"
                + (f" {PEERS[store]}" if store in PEERS else ""),
                "value": value,
                "target": f">= {target:g}x",
                "verdict": "n/a" if value is None else "meets" if value >= target else "short",
                "per_phase": None
                if not (ours and theirs)
                else {p: ours[f"{p} median"] / theirs[f"{p} median"] for p in PHASES},
            }
        )
    return out


def print_records(results: dict[str, dict[str, Any]], checks: list[dict[str, Any]]) -> None:
    print(f"\n{'case':<26} {'records':>7} {'write/s':>9} {'read/s':>9} {'write+read/s':>12}")
    for name, got in results.items():
        print(
            f"{name:<26} {got['records']:>7,} {got['write median']:>9,.0f} "
            f"{got['read median']:>9,.0f} {got['write+read median']:>12,.0f}"
        )
    print(f"\n{'gearstash vs Celery':<40} {'write':>7} {'read':>7} {'w+r':>7}  target")
    for c in checks:
        ph = c["per_phase"] or {}
        cells = " ".join(f"{fmt(ph.get(p), '.1f'):>7}" for p in PHASES)
        print(f"{c['check']:<40} {cells}  {c['target']}: {c['verdict']}")


# ------------------------------------------------------------------------------ 2. fetch


def bench_fetch(g: Gearmand, store: str, url: str, jobs: int, repeat: int) -> dict[str, Any]:
    """fetch_many(refs) against a loop of fetch(ref), same client, same jobs. The records are
    written through one store object and read through another, as a worker and a client in
    two processes would (no name or connection of the writer is at hand for the reader)."""
    opened = open_store(url)
    reader = None
    try:
        reader = open_store(url)
        with Client([g.address], store=reader) as client:
            fn = f"fetch_{store}"
            refs = [client.submit_background(fn, b"w", unique=f"f{i}") for i in range(jobs)]
            now = time.time()
            for ref in refs:
                key = JobKey(ref.server or "", ref.handle, ref.unique or b"")
                opened.write(
                    [
                        Event(EventKind.STARTED, key, now, function=fn.encode(), worker="bench"),
                        Event(EventKind.COMPLETED, key, now, RESULT),
                    ]
                )
            views = client.fetch_many(refs)
            if any(v.state is not State.COMPLETE or v.result != RESULT for v in views):
                raise RuntimeError(f"fetch_many on {store} did not see every record complete")
            many: list[float] = []
            single: list[float] = []
            statuses: list[float] = []
            reads: list[float] = []
            for _ in range(repeat):
                start = time.perf_counter()
                client.fetch_many(refs)
                many.append(time.perf_counter() - start)
                start = time.perf_counter()
                for ref in refs:
                    client.fetch(ref)
                single.append(time.perf_counter() - start)
                for _ in range(SPLIT_TIMINGS):  # the batch's two parts, the best of several
                    start = time.perf_counter()
                    client.links.statuses(refs)
                    statuses.append(time.perf_counter() - start)
                    start = time.perf_counter()
                    reader.get_many(refs)
                    reads.append(time.perf_counter() - start)
    finally:
        opened.close()
        if reader is not None:
            reader.close()
    out = {"jobs": jobs, "fetch_many_s": many, "fetch_loop_s": single}
    out.update(statuses_s=statuses, get_many_s=reads)
    out["speedup"] = median(single) / median(many)
    out["speedup_of_mins"] = min(single) / min(many)
    print(
        f"  fetch {store:<8} fetch_many {median(many) * 1e3:8.1f} ms (min {min(many) * 1e3:.1f})"
        f"   {jobs} x fetch {median(single) * 1e3:8.1f} ms (min {min(single) * 1e3:.1f})"
        f"   {out['speedup']:.1f}x (of the mins {out['speedup_of_mins']:.1f}x); best statuses "
        f"{min(statuses) * 1e3:.1f} ms, get_many {min(reads) * 1e3:.1f} ms",
        flush=True,
    )
    return out


# ------------------------------------------------------------------------------ 3. wait


def capabilities(url: str) -> frozenset[str]:
    store = open_store(url)
    try:
        return store.capabilities
    finally:
        store.close()


class Stamps:
    """A job_completed hook: when each job's final store write returned (perf_counter)."""

    def __init__(self) -> None:
        self.at: dict[bytes, float] = {}

    @hookimpl
    def job_completed(self, job: Any, result: bytes) -> None:
        self.at[job.handle] = time.perf_counter()


def bench_wait(g: Gearmand, store: str, url: str, jobs: int) -> dict[str, Any]:
    """Latency from the worker's final store write to the return of Client.wait()."""
    stamps = Stamps()
    pm = get_plugin_manager()
    pm.register(stamps)  # before the Worker is made: it looks its hooks up once
    fn = f"wait_{store}"
    worker = Worker([g.address], store=url, concurrency=1)
    worker.register(fn, lambda job: time.sleep(WAIT_JOB_SECONDS) or b"done")
    thread = threading.Thread(target=worker.work, kwargs={"handle_signals": False}, daemon=True)
    thread.start()
    latencies: list[float] = []
    try:
        with Client([g.address], store=url) as client:
            capabilities = sorted(client.store.capabilities)
            for _ in range(jobs):
                ref = client.submit_background(fn, b"w")
                view = client.wait(ref, timeout=10)
                returned = time.perf_counter()
                if view.state is not State.COMPLETE:
                    raise RuntimeError(f"wait on {store} ended {view.state}")
                deadline = returned + 1.0  # the hook runs in the worker's thread: may lag
                while ref.handle not in stamps.at and time.perf_counter() < deadline:
                    time.sleep(0.001)
                latencies.append(returned - stamps.at[ref.handle])
    finally:
        worker.stop()
        thread.join(10)
        worker.close()
        pm.unregister(stamps)
    ms = sorted(x * 1e3 for x in latencies)
    out = {
        "jobs": jobs,
        "capabilities": capabilities,
        "median_ms": median(ms),
        "p90_ms": statistics.quantiles(ms, n=10)[8],
        "min_ms": ms[0],
        "max_ms": ms[-1],
        "latencies_ms": ms,
    }
    print(
        f"  wait  {store:<8} ({'push' if 'push' in capabilities else 'polls'}) median "
        f"{out['median_ms']:.2f} ms  p90 {out['p90_ms']:.2f} ms  min {ms[0]:.2f}  max {ms[-1]:.2f}",
        flush=True,
    )
    return out


# ------------------------------------------------------------------------------ main


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in ("celery", "redis", "hiredis", "pymemcache", "SQLAlchemy", "psycopg", "PyMySQL"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    return {
        "nproc": os.cpu_count() or 0,
        "cpu": cpu,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "packages": versions,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--records", type=int, default=5000, help="records per run (default 5000)")
    ap.add_argument("--sql-records", type=int, default=1000, help="for Celery SQL (default 1000)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per case; median kept (default 3)")
    ap.add_argument("--fetch-jobs", type=int, default=1000, help="jobs of the fetch section")
    ap.add_argument("--wait-jobs", type=int, default=200, help="jobs of the wait section")
    ap.add_argument("--cases", default="", help=f"comma-separated: {', '.join(SECTIONS + STORES)}")
    ap.add_argument("--output", type=Path, default=BENCH / "results" / "stores.json")
    ap.add_argument(
        "--private",
        action="store_true",
        help="PostgreSQL and MariaDB of the run's own on free loopback ports (else the machine's)",
    )
    opts = ap.parse_args()
    if opts.records < 1 or opts.repeat < 1 or opts.wait_jobs < 10 or opts.fetch_jobs < 1:
        ap.error("--records, --repeat and --fetch-jobs must be >= 1, --wait-jobs >= 10")
    words = {w.strip() for w in opts.cases.split(",") if w.strip()}
    unknown = words - set(SECTIONS + STORES)
    if unknown:
        ap.error(f"unknown --cases {', '.join(sorted(unknown))}")
    sections = [s for s in SECTIONS if s in words] or list(SECTIONS)
    stores = [s for s in STORES if s in words] or list(STORES)

    info = machine()
    print(
        f"{info['nproc']} x {info['cpu']}; Python {info['python']}; N={opts.records} "
        f"(Celery SQL {min(opts.records, opts.sql_records)}), repeat={opts.repeat}"
    )
    out: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": info}
    out["load_average"] = os.getloadavg()
    print(f"load average {' '.join(f'{x:.2f}' for x in out['load_average'])}")
    out.update(records=opts.records, sql_records=opts.sql_records, repeat=opts.repeat)
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gearstash-stores-")))
        urls = start_servers(stack, stores, tmp, opts.private)
        if "records" in sections:
            results = bench_records(rows_for(urls, opts.records, opts.sql_records), opts.repeat)
            checks = record_verdicts(results)
            out.update(per_record=results, record_checks=checks)
        if "fetch" in sections or "wait" in sections:
            g = stack.enter_context(Gearmand())
            out["gearmand"] = g.version()
        if "fetch" in sections:
            out["fetch"] = {}
            for store, url in urls.gearstash.items():
                if store in ("redis", "sqlite"):
                    url = url.replace("gsbench", "gsfetch").replace("gearstash.db", "fetch.db")
                    out["fetch"][store] = bench_fetch(g, store, url, opts.fetch_jobs, opts.repeat)
        if "wait" in sections:
            out["wait"] = {}
            for store, url in urls.gearstash.items():
                push = "push" in capabilities(url)
                if store in ("redis", "sqlite") or (store == "postgres" and push):
                    out["wait"][store] = bench_wait(g, store, url, opts.wait_jobs)
                elif store == "postgres":
                    print("  wait  postgres: its store has no push capability yet; skipped")

    if "records" in sections:
        print_records(out["per_record"], out["record_checks"])
    verdicts = list(out.get("record_checks", []))
    for store, got in out.get("fetch", {}).items():
        ok = got["speedup"] >= 20
        verdicts.append(
            {
                "check": f"fetch_many vs fetch loop, {store}",
                "value": got["speedup"],
                "target": ">= 20x",
                "verdict": "meets" if ok else "short",
            }
        )
    for store, got in out.get("wait", {}).items():
        if "push" in got["capabilities"]:
            ok = got["median_ms"] <= 5
            verdicts.append(
                {
                    "check": f"wait latency median, {store}",
                    "value": got["median_ms"],
                    "target": "<= 5 ms",
                    "verdict": "meets" if ok else "short",
                }
            )
    print()
    for c in verdicts:
        print(f"{c['check']:<45} {fmt(c['value'], '.2f'):>8} ({c['target']}): {c['verdict']}")
    out["verdicts"] = verdicts
    opts.output.parent.mkdir(parents=True, exist_ok=True)
    opts.output.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {opts.output}")


if __name__ == "__main__":
    main()
