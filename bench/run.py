"""Background-job throughput of single worker processes against one private gearmand.

    .venv/bin/python bench/run.py [--jobs 20000] [--repeat 5] [--memory-jobs 100000]

For every case and repeat: fill the queue of a fresh function name with N trivial background
jobs (pipelined SUBMIT_JOB_BG on a raw socket) and check gearmand's ``status`` shows N queued;
run one worker process that drains exactly N jobs and reports its own first-to-last-job time
and CPU time; check ``status`` shows 0 left and, for SQLite and Redis capture (gearstash, or the
PHP worker writing to Redis by hand), that every job's record is in the store (Redis: a private
redis-server on a free port). A case with P > 1 processes starts P workers on the same queue,
stops them with SIGTERM once gearmand shows the queue drained, and counts the jobs started while
all P were serving (those cases run with pipeline=16 and prefetch). Cases are interleaved
within each repeat so drift hits them alike. Then one memory run per gearstash store: 100k
jobs, VmRSS at job 10,000 and at the end. Prints a table and writes bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import servers

from gearstash.model.records import JobRef, State
from gearstash.protocol.admin import parse_status
from gearstash.protocol.packets import Decoder, PacketType, encode_request
from gearstash.spine.manager import open_store
from gearstash.testing.gearmand import Gearmand

BENCH = Path(__file__).resolve().parent
PY = sys.executable
RUN_TIMEOUT = 600.0  # seconds for one worker process; a short queue must not hang the bench
RSS_AT = 10_000


@dataclass(frozen=True)
class Case:
    name: str
    impl: str  # gearstash | php | phpredis | pygearman
    variant: str  # plain | status
    store: str = ""  # gearstash: null | sqlite | redis; phpredis: redis
    procs: int = 0  # 0: one process draining exactly N; P >= 1: P processes until drained
    pipeline: int | None = None  # gearstash: Worker(pipeline=K)
    prefetch: bool = False  # gearstash: Worker(prefetch=True)
    capture: bool = False  # gearstash: Worker(capture_workload=True)
    default: bool = True  # run without --cases


PHP_REDIS = "php+redis by hand status+data"
CASES = [
    Case("php plain", "php", "plain"),
    Case("php status+data", "php", "status"),
    Case(PHP_REDIS, "phpredis", "status", "redis"),
    Case("gearstash plain", "gearstash", "plain", "null"),
    Case("gearstash status+data", "gearstash", "status", "null"),
    Case("gearstash sqlite status+data", "gearstash", "status", "sqlite"),
    Case("gearstash redis status+data", "gearstash", "status", "redis"),
    Case("gearstash sqlite status+data pipeline=16", "gearstash", "status", "sqlite", pipeline=16),
    Case("gearstash redis status+data pipeline=16", "gearstash", "status", "redis", pipeline=16),
    Case(
        "gearstash sqlite status+data pipeline=16 prefetch",
        "gearstash",
        "status",
        "sqlite",
        pipeline=16,
        prefetch=True,
    ),
    Case(
        "gearstash redis status+data pipeline=16 prefetch",
        "gearstash",
        "status",
        "redis",
        pipeline=16,
        prefetch=True,
    ),
    *[
        Case(
            f"gearstash redis status+data x{n} proc{'s' * (n > 1)}",
            "gearstash",
            "status",
            "redis",
            procs=n,
            pipeline=16,
            prefetch=True,
        )
        for n in (1, 2, 4)
    ],
    *[
        Case(
            f"gearstash {store} status+data capture-workload",
            "gearstash",
            "status",
            store,
            capture=True,
            default=False,
        )
        for store in ("sqlite", "redis")
    ],
    Case("gearstash sqlite plain", "gearstash", "plain", "sqlite", default=False),
    Case("gearstash redis plain", "gearstash", "plain", "redis", default=False),
    Case("pygearman plain", "pygearman", "plain", default=False),
    Case("pygearman status+data", "pygearman", "status", default=False),
]
REDIS_TTL = 86400  # seconds: the PHP-by-hand worker's EXPIRE (php_worker.php byhand)


# ------------------------------------------------------------------------------ gearmand


def fill(port: int, function: str, n: int, batch: int = 1000) -> list[tuple[bytes, bytes]]:
    """Submit ``n`` background jobs, ``batch`` packets per send; return (handle, unique) of each."""
    fn = function.encode()
    jobs: list[tuple[bytes, bytes]] = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        decoder = Decoder()
        while len(jobs) < n:
            uniques = [b"%s-%d" % (fn, i) for i in range(len(jobs), min(len(jobs) + batch, n))]
            sock.sendall(
                b"".join(
                    encode_request(PacketType.SUBMIT_JOB_BG, fn, u, workload(u)) for u in uniques
                )
            )
            handles: list[bytes] = []
            while len(handles) < len(uniques):
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("gearmand closed the submitting connection")
                decoder.feed(chunk)
                for packet in decoder:
                    if packet.kind != PacketType.JOB_CREATED:
                        raise RuntimeError(f"submit answered {packet.kind.name} {packet.args}")
                    handles.append(packet.args[0])
            jobs.extend(zip(handles, uniques, strict=True))
    return jobs


def workload(unique: bytes) -> bytes:
    return b"payload of " + unique


def queued(g: Gearmand, function: str) -> tuple[int, int]:
    """(total, running) of ``function`` in gearmand's admin ``status``."""
    for row in parse_status(g.admin("status").splitlines()):
        if row.function == function:
            return row.queued, row.running
    return 0, 0


def wait_drained(g: Gearmand, function: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while (left := queued(g, function)) != (0, 0):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{function}: {left[0]} jobs left ({left[1]} running) after the run")
        time.sleep(0.02)


# ------------------------------------------------------------------------------ workers


def worker_argv(case: Case, g: Gearmand, function: str, n: int, store_url: str) -> list[str]:
    if case.impl == "gearstash":
        args = [g.address, function, str(n), case.variant, store_url]
        extra = [] if case.pipeline is None else ["--pipeline", str(case.pipeline)]
        extra += ["--prefetch"] if case.prefetch else []
        extra += ["--capture-workload"] if case.capture else []
        return [PY, str(BENCH / "gs_worker.py"), *args, str(RSS_AT if n > RSS_AT else 0), *extra]
    if case.impl in ("php", "phpredis"):
        variant = "byhand" if case.impl == "phpredis" else case.variant
        php = [str(BENCH / "php_worker.php"), g.host, str(g.port), function, str(n), variant]
        if case.impl == "phpredis":
            php.append(store_url.rsplit(":", 1)[1].split("/")[0])  # the Redis port
        return ["php", *php]
    return [PY, str(BENCH / "pygearman_worker.py"), g.address, function, str(n), case.variant]


def run_one(
    case: Case, g: Gearmand, function: str, n: int, tmp: Path, redis_url: str = ""
) -> dict[str, float]:
    """Fill, drain with one worker process, verify; return the worker's JSON report."""
    jobs = fill(g.port, function, n)
    if queued(g, function)[0] != n:
        raise RuntimeError(f"{function}: expected {n} queued, status says {queued(g, function)}")
    store_url = {"null": "null://", "redis": redis_url}.get(
        case.store, f"sqlite:///{tmp / (function + '.db')}"
    )
    if case.procs:
        report = run_processes(case, g, function, n, store_url)
    else:
        report = run_single(case, g, function, n, store_url)
    wait_drained(g, function)
    if case.impl == "phpredis":
        check_by_hand(store_url, jobs)
    elif case.store in ("sqlite", "redis"):
        check_captured(store_url, g.address, jobs, case.variant, case.capture)
    return report


def run_single(case: Case, g: Gearmand, function: str, n: int, store_url: str) -> dict[str, float]:
    """One worker process drains exactly ``n`` jobs; its own report."""
    proc = subprocess.run(
        worker_argv(case, g, function, n, store_url),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{case.name} worker exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    report: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    if report["jobs"] != n:
        raise RuntimeError(f"{case.name}: worker ran {report['jobs']} jobs, not {n}")
    report["rate"] = (n - 1) / report["seconds"]
    report["cpu_us"] = report["cpu_seconds"] / (n - 1) * 1e6
    return report


def run_processes(
    case: Case, g: Gearmand, function: str, n: int, store_url: str
) -> dict[str, float]:
    """``case.procs`` worker processes serve the queue until gearmand shows it drained, then get
    SIGTERM (they finish the job in hand). The rate counts the jobs started while every process
    was serving (from the latest first job start to the earliest last one), so no process's
    start-up or wind-down is in it; CPU is the sum of the processes' CPU over all their jobs."""
    argv = worker_argv(case, g, function, 0, store_url)
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(case.procs)
    ]
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while queued(g, function) != (0, 0):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"{case.name}: workers exited or timed out before the drain")
            time.sleep(0.05)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        outputs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    reports = []
    for p, (out, err) in zip(procs, outputs, strict=True):
        if p.returncode != 0:
            raise RuntimeError(f"{case.name} worker exited {p.returncode}:\n{err[-2000:]}")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    total = sum(int(r["jobs"]) for r in reports)
    if total != n:
        raise RuntimeError(f"{case.name}: workers ran {total} jobs, not {n}")
    if any(r["jobs"] < 2 for r in reports):
        raise RuntimeError(
            f"{case.name}: a worker ran fewer than 2 jobs: {[r['jobs'] for r in reports]}"
        )
    start = max(r["starts"][0] for r in reports)
    end = min(r["starts"][-1] for r in reports)
    inside = sum(sum(1 for t in r["starts"] if start <= t <= end) for r in reports)
    cpu = sum(r["cpu_seconds"] for r in reports)
    return {
        "jobs": total,
        "seconds": end - start,
        "rate": (inside - 1) / (end - start),
        "cpu_us": cpu / (total - len(reports)) * 1e6,
        "per_process": [r["jobs"] for r in reports],  # type: ignore[dict-item]
    }


def check_by_hand(url: str, jobs: list[tuple[bytes, bytes]]) -> None:
    """The PHP-by-hand worker stored every job: status, result, unique and data chunk, with a TTL."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        for start in range(0, len(jobs), 1000):
            part = jobs[start : start + 1000]
            pipe = client.pipeline(transaction=False)
            for handle, _ in part:
                pipe.hgetall(b"byhand:" + handle)
                pipe.lrange(b"byhand:" + handle + b":data", 0, -1)
                pipe.ttl(b"byhand:" + handle)
            replies = pipe.execute()
            for i, (handle, unique) in enumerate(part):
                head, data, ttl = replies[3 * i : 3 * i + 3]
                want = {b"status": b"1/2", b"result": workload(unique)[::-1], b"unique": unique}
                if head != want or data != [b"half way"] or not 0 < ttl <= REDIS_TTL:
                    raise RuntimeError(f"{url}: job {handle!r} not stored by hand: {head} {data}")
    finally:
        client.close()


def check_captured(
    url: str, server: str, jobs: list[tuple[bytes, bytes]], variant: str, capture: bool = False
) -> None:
    """Every job must be in the store, complete, with its result (and its status and data, and
    with ``capture`` its workload)."""
    store = open_store(url)
    try:
        for start in range(0, len(jobs), 500):
            part = jobs[start : start + 500]
            records = store.get_many([JobRef(h, server, u) for h, u in part])
            for (handle, unique), rec in zip(part, records, strict=True):
                ok = (
                    rec is not None
                    and rec.state == State.COMPLETE
                    and rec.result == workload(unique)[::-1]
                    and (variant == "plain" or (len(rec.status) == 1 and rec.data == [b"half way"]))
                    and rec.workload == (workload(unique) if capture else None)
                )
                if not ok:
                    raise RuntimeError(f"{url}: job {handle!r} not captured right: {rec}")
    finally:
        store.close()


def sqlite_problem(tmp: Path) -> str | None:
    """Why the sqlite:// store cannot be used, or None when it opens."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            open_store(f"sqlite:///{tmp / 'probe.db'}").close()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


# ------------------------------------------------------------------------------ report


def machine(g: Gearmand) -> dict[str, str | int]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    php = subprocess.run(
        ["php", "-r", 'echo PHP_VERSION, " gearman ", phpversion("gearman");'],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return {
        "nproc": os.cpu_count() or 0,
        "cpu": cpu,
        "python": platform.python_version(),
        "gearmand": g.version(),
        "php": php,
        "kernel": platform.release(),
    }


def summarize(
    rates: dict[str, list[float]], cpu_us: dict[str, list[float]]
) -> dict[str, dict[str, float]]:
    out = {}
    for name, values in rates.items():
        if values:
            out[name] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
                "cpu_us": statistics.median(cpu_us[name]),
            }
    return out


def ratio(summary: dict[str, dict[str, float]], a: str, b: str) -> float | None:
    if a in summary and b in summary:
        return summary[a]["median"] / summary[b]["median"]
    return None


def best(summary: dict[str, dict[str, float]], prefix: str) -> str:
    """The single-process case named ``prefix`` or ``prefix`` + a pipelining suffix with the
    highest median (pipelined variants are named ``prefix pipeline=K``)."""
    names = [n for n in summary if n == prefix or n.startswith(prefix + " pipeline=")]
    return max(names, key=lambda n: summary[n]["median"]) if names else prefix


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def print_table(summary: dict[str, dict[str, float]]) -> None:
    print(
        f"\n{'case':<40} {'median/s':>9} {'min/s':>9} {'max/s':>9} {'vs PHP':>7}"
        f" {'vs PHP+Redis':>12} {'CPU us/job':>10}"
    )
    for case in CASES:
        s = summary.get(case.name)
        if s is None:
            continue
        suffix = "plain" if case.variant == "plain" else "status+data"
        print(
            f"{case.name:<40} {s['median']:>9,.0f} {s['min']:>9,.0f} {s['max']:>9,.0f} "
            f"{fmt(ratio(summary, case.name, 'php ' + suffix)):>7} "
            f"{fmt(ratio(summary, case.name, PHP_REDIS)):>12} {s['cpu_us']:>10.0f}"
        )


def verdicts(
    summary: dict[str, dict[str, float]], memory: dict[str, dict[str, float]]
) -> list[dict[str, object]]:
    redis_best = best(summary, "gearstash redis status+data")
    sqlite_best = best(summary, "gearstash sqlite status+data")
    checks = [
        (
            "gearstash redis (best single process) vs PHP+Redis",
            ratio(summary, redis_best, PHP_REDIS),
            1.5,
        ),
        (
            "gearstash sqlite (best single process) vs PHP+Redis",
            ratio(summary, sqlite_best, PHP_REDIS),
            1.0,
        ),
        (
            "gearstash plain (null://) vs PHP plain",
            ratio(summary, "gearstash plain", "php plain"),
            1.0,
        ),
        (
            "gearstash status+data (null://) vs PHP status+data",
            ratio(summary, "gearstash status+data", "php status+data"),
            1.0,
        ),
        (
            "redis x2 processes vs x1",
            ratio(
                summary,
                "gearstash redis status+data x2 procs",
                "gearstash redis status+data x1 proc",
            ),
            1.7,
        ),
    ]
    out: list[dict[str, object]] = [
        {
            "check": name,
            "value": value,
            "target": f">= {target}",
            "verdict": "n/a" if value is None else ("meets" if value >= target else "short"),
        }
        for name, value, target in checks
    ]
    for store, m in memory.items():
        growth = m["growth_mb"]
        out.append(
            {
                "check": f"memory growth {store} over {m['jobs']:,.0f} jobs",
                "value": growth,
                "target": "< 10 MB",
                "verdict": "meets" if growth < 10 else "short",
            }
        )
    return out


# ------------------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=20_000, help="jobs per run (default 20000)")
    ap.add_argument("--repeat", type=int, default=5, help="runs per case; median kept (default 5)")
    ap.add_argument(
        "--memory-jobs",
        type=int,
        default=100_000,
        help="jobs of the memory runs; 0 skips them (default 100000)",
    )
    ap.add_argument("--cases", default="", help="comma-separated substrings of case names to run")
    ap.add_argument("--output", type=Path, default=BENCH / "results" / "latest.json")
    opts = ap.parse_args()
    if opts.jobs < 2 or opts.repeat < 1:
        ap.error("--jobs must be at least 2 and --repeat at least 1")
    wanted = [w.strip() for w in opts.cases.split(",") if w.strip()]
    cases = [c for c in CASES if (c.default and not wanted) or any(w in c.name for w in wanted)]

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gearstash-bench-")))
        g = stack.enter_context(Gearmand())
        problem = sqlite_problem(tmp)
        if problem:
            print(f"sqlite:// store unavailable, its cases are skipped: {problem}")
            cases = [c for c in cases if c.store != "sqlite"]
        redis_url = ""
        if any(c.store == "redis" for c in cases):
            try:
                port = stack.enter_context(servers.redis_server()).port
                redis_url = f"redis://127.0.0.1:{port}/0"
            except RuntimeError as exc:
                print(f"redis:// store unavailable, its cases are skipped: {exc}")
                cases = [c for c in cases if c.store != "redis"]
        info = machine(g)
        print(
            f"gearmand {info['gearmand']} on {g.address}; {info['nproc']} x {info['cpu']}; "
            f"Python {info['python']}; N={opts.jobs}, repeat={opts.repeat}"
        )

        rates: dict[str, list[float]] = {c.name: [] for c in cases}
        cpu_us: dict[str, list[float]] = {c.name: [] for c in cases}
        for rep in range(opts.repeat):
            for i, case in enumerate(cases):
                function = f"bench{rep}_{i}_{case.impl}_{case.variant}"
                report = run_one(case, g, function, opts.jobs, tmp, redis_url)
                rates[case.name].append(report["rate"])
                cpu_us[case.name].append(report["cpu_us"])
                print(
                    f"  run {rep + 1}/{opts.repeat} {case.name:<40} {report['rate']:>9,.0f} jobs/s"
                    f"  {report['cpu_us']:>5.0f} us CPU/job",
                    flush=True,
                )

        memory: dict[str, dict[str, float]] = {}
        if opts.memory_jobs > RSS_AT:
            stores = ["null"] + ([] if problem else ["sqlite"])
            for store in stores:
                case = Case(f"gearstash {store} memory", "gearstash", "plain", store)
                report = run_one(case, g, f"benchmem_{store}", opts.memory_jobs, tmp)
                growth = (report["rss_end_kb"] - report["rss_start_kb"]) / 1024
                memory[f"{store}://"] = {
                    "jobs": opts.memory_jobs,
                    "rate": report["rate"],
                    "rss_at_10k_mb": report["rss_start_kb"] / 1024,
                    "rss_end_mb": report["rss_end_kb"] / 1024,
                    "growth_mb": growth,
                }
                print(
                    f"  memory {store}://: RSS {report['rss_start_kb'] / 1024:.1f} MB at job "
                    f"{RSS_AT:,}, {report['rss_end_kb'] / 1024:.1f} MB after "
                    f"{opts.memory_jobs:,} ({growth:+.1f} MB), {report['rate']:,.0f} jobs/s",
                    flush=True,
                )

    summary = summarize(rates, cpu_us)
    print_table(summary)
    checks = verdicts(summary, memory)
    print()
    for c in checks:
        value = c["value"]
        shown = "-" if value is None else f"{value:.2f}"
        print(f"{c['check']:<55} {shown:>7} (target {c['target']}): {c['verdict']}")

    opts.output.parent.mkdir(parents=True, exist_ok=True)
    opts.output.write_text(
        json.dumps(
            {
                "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "jobs": opts.jobs,
                "repeat": opts.repeat,
                "machine": info,
                "rates": rates,
                "cpu_us_per_job": cpu_us,
                "summary": summary,
                "memory": memory,
                "checks": checks,
                "skipped": problem,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {opts.output}")


if __name__ == "__main__":
    main()
