"""Load: N worker processes drain J background jobs of C data chunks each into one store, then
every chunk is checked: stored exactly once, in order, for every job.

    .venv/bin/python bench/load.py --store redis --workers 4 --jobs-per-worker 20000
    .venv/bin/python bench/load.py --store postgres --workers 4 --jobs-per-worker 20000
    .venv/bin/python bench/load.py --private --gearmands 2 --prefork --store redis

``--store`` takes ``redis`` (a fresh key prefix in db 15 of 127.0.0.1:6379, deleted afterwards),
``postgres`` (a fresh schema in db ``test`` of 127.0.0.1:5432, dropped afterwards), or any store URL
shared by processes (used as is, nothing cleaned up); ``--private`` runs ``redis`` and ``postgres``
on a redis-server or PostgreSQL of the run's own on a free loopback port instead (the test suite's
servers: PostgreSQL with fsync off), touching no server of the machine. A private gearmand on a
free port serves the run; ``--gearmands N`` starts N of them, the client spreads the jobs over
them (by unique) and every worker serves them all (``-s`` each).

What happens (:func:`run_load`, which ``tests/test_load.py`` calls with a small size):

1. ``workers x jobs_per_worker`` background jobs go to a fresh function name with distinct uniques
   (``Client.submit_background_many``, 1,000 a call), before any worker runs (``--live``: after the workers
   registered, while they work);
2. ``workers`` separate ``gearstash worker`` CLI processes start (``--prefork``: ONE ``gearstash
   worker --processes <workers>`` supervisor and its children), each serving :func:`chunky`: it
   sends ``chunks`` WORK_DATA chunks ``b"<unique>:<i>:" + payload`` and returns
   ``b"done:<unique>"`` (``--flush-interval S``: ``load.py --serve`` processes running
   ``Worker(flush_interval=S)`` instead; 0 makes every event a store write of its own);
3. the driver waits until no gearmand holds a job of the function (a worker stores a job's
   events before the server hears it ended), stops the workers with SIGTERM, and checks their
   exit codes and stderr;
4. every job is read back with ``Client.fetch_many`` (1,000 per call) and checked: state complete,
   attempt 1, exactly ``chunks`` data chunks equal to the expected ones in order (a missing, extra,
   repeated, foreign or misplaced chunk is named), the result, no error. For Redis and SQL stores
   the job records and data chunks are also counted in the store's own layout (SCAN + LLEN, or
   ``count(*)``), apart from ``get_many``.

The processing rate is jobs (chunks) over the span from the first job's ``started_at`` to the last
one's ``finished_at`` in the stored records. Prints a report; ``--json`` prints it as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gearstash.worker.job import Job

BENCH = Path(__file__).resolve().parent
REDIS_BASE = "redis://127.0.0.1:6379/15"
POSTGRES_BASES = (
    "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "postgresql+psycopg://root@127.0.0.1:5432/test",
)
FETCH_BATCH = 1000
MAX_EXAMPLES = 20


# ------------------------------------------------------------------------------ the job


def expected_chunk(unique: bytes, index: int, payload: int) -> bytes:
    """Data chunk ``index`` of the job with ``unique``: it names its job and its place."""
    return b"%s:%d:%s" % (unique, index, b"." * payload)


def expected_result(unique: bytes) -> bytes:
    return b"done:" + unique


def chunky(job: Job) -> bytes:
    """The job the worker processes serve: workload ``b"<chunks> <payload bytes>"``."""
    chunks, payload = (int(part) for part in job.workload.split())
    for i in range(chunks):
        job.send_data(expected_chunk(job.unique, i, payload))
    return expected_result(job.unique)


# ------------------------------------------------------------------------------ the report


@dataclass
class Report:
    store: str
    workers: int
    jobs: int
    chunks_per_job: int
    flush_interval: float | None = None  # None: the gearstash worker CLI
    live: bool = False  # submitted while the workers ran (else: queue filled first)
    gearmands: int = 1
    prefork: bool = False  # one `gearstash worker --processes N` (else N separate processes)
    submit_s: float = 0.0
    wait_s: float = 0.0  # first worker spawned → gearmand holds no job of the function
    processing_s: float = 0.0  # first stored started_at → last stored finished_at
    verify_s: float = 0.0
    jobs_ok: int = 0
    chunks_stored: int = 0  # data chunks of all records read back
    raw_jobs: int | None = None  # job records counted in the store's own layout
    raw_chunks: int | None = None  # data chunks counted in the store's own layout
    jobs_per_worker: dict[str, int] = field(default_factory=dict)
    jobs_per_server: dict[str, int] = field(default_factory=dict)
    anomalies: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    worker_errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        expected_chunks = self.jobs * self.chunks_per_job
        return (
            self.jobs_ok == self.jobs
            and not self.anomalies
            and not self.worker_errors
            and self.chunks_stored == expected_chunks
            and self.raw_jobs in (None, self.jobs)
            and self.raw_chunks in (None, expected_chunks)
        )

    def anomaly(self, kind: str, example: str) -> None:
        self.anomalies[kind] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{kind}: {example}")

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["anomalies"] = dict(self.anomalies)
        out["ok"] = self.ok
        return out

    def text(self) -> str:
        total_chunks = self.jobs * self.chunks_per_job
        span = self.processing_s or float("nan")
        lines = [
            f"store {self.store}: {self.workers} worker processes, {self.gearmands} gearmand"
            f"{'s' if self.gearmands > 1 else ''}, {self.jobs:,} jobs x "
            f"{self.chunks_per_job} chunks = {total_chunks:,} chunks; workers: "
            + (
                f"gearstash worker --processes {self.workers}"
                if self.prefork
                else "gearstash worker CLI"
                if self.flush_interval is None
                else f"Worker(flush_interval={self.flush_interval})"
            )
            + ("; submitted while they ran" if self.live else "; queue filled first"),
            f"submit     {self.submit_s:8.2f} s  {self.jobs / self.submit_s:9,.0f} jobs/s",
            f"processing {self.processing_s:8.2f} s  {self.jobs / span:9,.0f} jobs/s  "
            f"{total_chunks / span:9,.0f} chunks/s  (stored started_at → finished_at; "
            f"{self.wait_s:.2f} s from spawning the workers to an empty queue)",
            f"verify     {self.verify_s:8.2f} s  {self.jobs / self.verify_s:9,.0f} jobs/s "
            "(fetch_many of 1,000)",
            f"jobs ok {self.jobs_ok:,}/{self.jobs:,}; data chunks read back {self.chunks_stored:,}"
            f"; counted in the store: jobs {_maybe(self.raw_jobs)}, chunks "
            f"{_maybe(self.raw_chunks)}",
            "jobs per worker: "
            + ", ".join(f"{w} {n:,}" for w, n in sorted(self.jobs_per_worker.items())),
            "jobs per gearmand: "
            + ", ".join(f"{s} {n:,}" for s, n in sorted(self.jobs_per_server.items())),
        ]
        if self.anomalies:
            lines.append("ANOMALIES: " + ", ".join(f"{k} {n:,}" for k, n in self.anomalies.items()))
            lines += ["  " + e for e in self.examples]
        lines += ["WORKER: " + e for e in self.worker_errors]
        lines.append("OK: every chunk stored exactly once and in order" if self.ok else "FAILED")
        return "\n".join(lines)


def _maybe(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


# ------------------------------------------------------------------------------ the run


def run_load(
    server: str | Sequence[str],
    store_url: str,
    *,
    workers: int = 4,
    jobs_per_worker: int = 250,
    chunks: int = 5,
    payload: int = 64,
    concurrency: int = 1,
    flush_interval: float | None = None,
    live: bool = False,
    prefork: bool = False,
    timeout: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Run the load against the gearmand(s) at ``server`` (``host:port``, or several: the jobs
    are spread over them by unique and every worker serves them all) and ``store_url``.

    ``flush_interval``: None runs ``gearstash worker`` (its default, 0.05 s: a job's events go in
    one store write); a number runs workers with that ``Worker(flush_interval=...)``. ``prefork``:
    one ``gearstash worker --processes <workers>`` instead of ``workers`` separate processes.
    ``live``: start the workers first and submit while they work (else the queue is filled first).
    """
    from gearstash import Client

    servers = [server] if isinstance(server, str) else list(server)
    if prefork and flush_interval is not None:
        raise ValueError("prefork runs the gearstash worker CLI: no flush_interval")
    say = progress or (lambda _text: None)
    run = secrets.token_hex(4)
    function = f"load-{run}"
    total = workers * jobs_per_worker
    report = Report(
        _redacted(store_url), workers, total, chunks, flush_interval, live, len(servers), prefork
    )
    workload = b"%d %d" % (chunks, payload)
    uniques = [b"%s-%d" % (run.encode(), n) for n in range(total)]
    timeout = timeout if timeout is not None else 120.0 + total / 20

    def spawn() -> float:
        say(f"starting {workers} worker processes")
        spawned = time.perf_counter()
        made = _spawn_workers(
            servers, store_url, function, workers, concurrency, flush_interval, prefork, Path(tmp)
        )
        procs.extend(made)
        return spawned

    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    with (
        Client(servers, store=store_url) as client,
        tempfile.TemporaryDirectory(prefix="gearstash-load-") as tmp,
    ):
        try:
            if live:
                spawned = spawn()
                _wait_until(servers, function, procs, 60.0, say, workers=workers * concurrency)
            say(f"submitting {total:,} jobs to {function}")
            t0 = time.perf_counter()
            refs = []
            for start in range(0, len(uniques), 1000):  # pipelined, markers in one write
                batch = uniques[start : start + 1000]
                refs += client.submit_background_many([(function, workload, u) for u in batch])
            report.submit_s = time.perf_counter() - t0
            if not live:
                spawned = spawn()
            _wait_until(servers, function, procs, timeout, say)
            report.wait_s = time.perf_counter() - spawned
        finally:
            _stop_workers(procs, report)

        say("verifying")
        t0 = time.perf_counter()
        _verify(client, refs, chunks, payload, report)
        report.raw_jobs, report.raw_chunks = raw_counts(store_url)
        report.verify_s = time.perf_counter() - t0
    return report


def _spawn_workers(
    servers: list[str],
    store_url: str,
    function: str,
    n: int,
    concurrency: int,
    flush_interval: float | None,
    prefork: bool,
    tmp: Path,
) -> list[tuple[subprocess.Popen[bytes], Path]]:
    """``gearstash worker`` CLI processes serving every one of ``servers``; with
    ``flush_interval``, ``load.py --serve`` ones; ``prefork``: one CLI supervisor of ``n``."""
    env = dict(os.environ, GEARSTASH_STORE=store_url, GEARSTASH_SERVERS=",".join(servers))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH), env.get("PYTHONPATH")]))
    if flush_interval is None:
        argv = [sys.executable, "-m", "gearstash", "worker", "-c", str(concurrency)]
        for server in servers:
            argv += ["-s", server]
        if prefork:
            argv += ["--processes", str(n)]
        argv += ["-n", f"chunky={function}", "load:chunky"]
    else:
        argv = [sys.executable, str(BENCH / "load.py"), "--serve", function]
        argv += ["--concurrency", str(concurrency), "--flush-interval", str(flush_interval)]
    procs = []
    for i in range(1 if prefork else n):
        log = tmp / f"worker-{i}.log"
        with open(log, "wb") as out:
            # cwd: not the checkout, whose gearstash/ would shadow a PYTHONPATH one (python -m)
            proc = subprocess.Popen(
                argv, env=env, cwd=tmp, stdin=subprocess.DEVNULL, stderr=out, stdout=out
            )
        procs.append((proc, log))
    return procs


def serve(function: str, concurrency: int, flush_interval: float) -> None:
    """A worker process serving :func:`chunky` as ``function`` with ``Worker(flush_interval=...)``
    (0 writes every event on its own); servers and store from the environment."""
    from gearstash import Worker

    worker = Worker(concurrency=concurrency, flush_interval=flush_interval)
    worker.register(function, chunky)
    try:
        worker.work()
    finally:
        worker.close()


def _wait_until(
    servers: list[str],
    function: str,
    procs: list[tuple[subprocess.Popen[bytes], Path]],
    timeout: float,
    say: Callable[[str], None],
    *,
    workers: int = 0,
) -> None:
    """Until no gearmand's ``status`` shows a job of ``function`` (or, with ``workers``, every
    one shows that many worker connections registered for it); raise if a worker died or time
    ran out."""
    from gearstash.protocol.admin import parse_status
    from gearstash.testing.gearmand import admin_command

    deadline = time.monotonic() + timeout
    next_say = time.monotonic() + 10
    while True:
        rows = []
        for server in servers:
            host, _, port = server.rpartition(":")
            status = parse_status(admin_command(host, int(port), "status").splitlines())
            rows.append(next((r for r in status if r.function == function), None))
        left = sum(row.queued for row in rows if row is not None)
        running = sum(row.running for row in rows if row is not None)
        if workers and all(row is not None and row.workers >= workers for row in rows):
            return
        if not workers and left == 0:
            return
        if any(p.poll() is not None for p, _ in procs):
            raise RuntimeError(f"a worker process exited with {left} jobs left")
        if time.monotonic() > deadline:
            waited = f"{workers} workers" if workers else f"{left} jobs left"
            raise RuntimeError(f"{waited} after {timeout:.0f} s")
        if time.monotonic() > next_say and not workers:
            say(f"{left:,} jobs left ({running} running)")
            next_say += 10
        time.sleep(0.1)


def _stop_workers(procs: list[tuple[subprocess.Popen[bytes], Path]], report: Report) -> None:
    for proc, _ in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for i, (proc, log) in enumerate(procs):
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
            report.worker_errors.append(f"worker {i} ignored SIGTERM for 20 s (killed)")
        lines = log.read_text(errors="replace").splitlines()
        # the CLI's start-up line ("gearstash worker: serving ...") and its one line on the
        # signal ("gearstash worker: stopped on SIGTERM after N job(s)") are expected; nothing else
        said = ("gearstash worker: serving", "gearstash worker: stopped on SIGTERM")
        extra = [line for line in lines if not line.startswith(said)]
        if code != 0 or extra:
            tail = " | ".join(extra[-5:])
            report.worker_errors.append(f"worker {i} pid {proc.pid} exit {code}: {tail}")


def _verify(client: Any, refs: list[Any], chunks: int, payload: int, report: Report) -> None:
    per_worker: Counter[str] = Counter()
    per_server: Counter[str] = Counter()
    first_start, last_end = float("inf"), 0.0
    for start in range(0, len(refs), FETCH_BATCH):
        batch = refs[start : start + FETCH_BATCH]
        for ref, view in zip(batch, client.fetch_many(batch), strict=True):
            record = view.record
            name = ref.unique.decode()
            if record is None:
                report.anomaly("missing record", name)
                continue
            if record.key.unique != ref.unique or record.key.handle != ref.handle:
                report.anomaly("another job's record", f"{name}: got {record.key}")
                continue
            report.chunks_stored += len(record.data)
            per_worker[record.worker] += 1
            per_server[record.key.server] += 1
            if record.started_at is not None:
                first_start = min(first_start, record.started_at)
            if record.finished_at is not None:
                last_end = max(last_end, record.finished_at)
            expected = [expected_chunk(ref.unique, i, payload) for i in range(chunks)]
            if not check_job(record, view.state, expected, report):
                report.jobs_ok += 1
    report.jobs_per_worker = dict(per_worker)
    report.jobs_per_server = dict(per_server)
    report.processing_s = max(last_end - first_start, 0.0)


def check_job(record: Any, fetched: Any, expected: list[bytes], report: Report) -> bool:
    """Count each anomaly of one job's record (``fetched``: its state from ``fetch_many``) in
    ``report``; True if it had any."""
    from gearstash.model.records import State

    unique = record.key.unique
    name = unique.decode("utf-8", "replace")
    data: list[bytes] = list(record.data)
    bad = False
    if fetched != State.COMPLETE or record.state != State.COMPLETE:
        report.anomaly("not complete", f"{name} fetched {fetched}, stored {record.state}")
        bad = True
    if record.attempt != 1:
        report.anomaly("attempt != 1", f"{name} attempt {record.attempt}")
        bad = True
    if record.result != expected_result(unique) or record.error is not None:
        report.anomaly("wrong result", f"{name} result {record.result!r} error {record.error}")
        bad = True
    if data != expected:
        bad = True
        counts = Counter(data)
        if any(n > 1 for n in counts.values()):
            report.anomaly("duplicated chunk", f"{name}: {_short(data)}")
        if any(chunk not in expected for chunk in data):
            report.anomaly("foreign chunk", f"{name}: {_short(data)}")
        if any(chunk not in counts for chunk in expected):
            report.anomaly("lost chunk", f"{name}: {_short(data)}")
        if len(data) == len(expected) and sorted(data) == sorted(expected):
            report.anomaly("out of order", f"{name}: {_short(data)}")
    return bad


def _short(data: list[bytes]) -> str:
    return "[" + ", ".join(repr(d.rpartition(b":")[0]) for d in data) + "]"


def _redacted(url: str) -> str:
    from gearstash.store.urls import redact_url

    return redact_url(url)


# ------------------------------------------------------------------------------ raw counts


def raw_counts(store_url: str) -> tuple[int | None, int | None]:
    """(job records, data chunks) counted in the store's own layout; (None, None) if unsupported.

    Redis: SCAN for ``<prefix>:*:job`` and ``<prefix>:*:data``, LLEN of each data list. SQL: rows
    of ``gearstash_jobs`` and data rows of ``gearstash_chunks``. Meant for a store of this run only.
    """
    scheme = store_url.partition(":")[0].partition("+")[0].lower()
    if scheme in ("redis", "rediss", "unix"):
        return _redis_counts(store_url)
    if scheme in ("postgresql", "postgres", "sqlite", "mysql", "mariadb"):
        return _sql_counts(store_url)
    return None, None


def _redis_counts(store_url: str) -> tuple[int, int]:
    import redis
    from gearstash_redis.url import split_url

    base, own = split_url(store_url)
    prefix = own.get("prefix", "gs")
    r = redis.Redis.from_url(base)
    try:
        jobs = sum(1 for _ in r.scan_iter(match=f"{prefix}:*:job", count=5000))
        data_keys = list(r.scan_iter(match=f"{prefix}:*:data", count=5000))
        chunks = 0
        for start in range(0, len(data_keys), 5000):
            pipe = r.pipeline(transaction=False)
            for key in data_keys[start : start + 5000]:
                pipe.llen(key)
            chunks += sum(pipe.execute())
    finally:
        r.close()
    return jobs, chunks


def _sql_counts(store_url: str) -> tuple[int, int]:
    import sqlalchemy as sa
    from gearstash_sql.engine import make_engine, parse_url

    engine = make_engine(parse_url(store_url))
    try:
        with engine.connect() as conn:
            jobs = conn.execute(sa.text("SELECT count(*) FROM gearstash_jobs")).scalar_one()
            chunks = conn.execute(
                sa.text("SELECT count(*) FROM gearstash_chunks WHERE kind = 'data'")
            ).scalar_one()
    finally:
        engine.dispose()
    return int(jobs), int(chunks)


# ------------------------------------------------------------------------------ private stores


@contextlib.contextmanager
def redis_store(base: str = REDIS_BASE) -> Iterator[str]:
    """A store URL with a fresh key prefix in ``base``'s db; its keys are deleted afterwards."""
    import redis

    prefix = f"gsload{secrets.token_hex(4)}"
    try:
        yield f"{base}?prefix={prefix}&ttl=86400"
    finally:
        r = redis.Redis.from_url(base)
        try:
            keys = list(r.scan_iter(match=f"{prefix}:*", count=5000))
            for start in range(0, len(keys), 5000):
                r.delete(*keys[start : start + 5000])
        finally:
            r.close()


@contextlib.contextmanager
def postgres_store(base: str | None = None) -> Iterator[str]:
    """A store URL on a fresh PostgreSQL schema (``search_path``), dropped afterwards."""
    import sqlalchemy as sa

    name = f"gsload_{secrets.token_hex(4)}"
    problems = []
    for url in [base] if base else POSTGRES_BASES:
        engine = sa.create_engine(url)
        try:
            with engine.begin() as conn:
                conn.execute(sa.text(f"CREATE SCHEMA {name}"))
        except Exception as exc:
            problems.append(f"{url}: {type(exc).__name__}: {exc}")
            engine.dispose()
            continue
        try:
            sep = "&" if "?" in url else "?"
            yield f"{url}{sep}options=-csearch_path%3D{name}"
        finally:
            with engine.begin() as conn:
                conn.execute(sa.text(f"DROP SCHEMA {name} CASCADE"))
            engine.dispose()
        return
    raise RuntimeError("PostgreSQL unavailable: " + "; ".join(problems))


@contextlib.contextmanager
def store_for(name: str, private: bool = False) -> Iterator[str]:
    """The store URL of ``--store name``; ``private``: on a server of the run's own."""
    from gearstash.testing.servers import PrivateServer, postgres_spec, redis_spec

    with contextlib.ExitStack() as stack:
        if name == "redis":
            base = stack.enter_context(PrivateServer(redis_spec())).url if private else REDIS_BASE
            yield stack.enter_context(redis_store(base))
        elif name in ("postgres", "postgresql"):
            base = stack.enter_context(PrivateServer(postgres_spec())).url if private else None
            yield stack.enter_context(postgres_store(base))
        else:
            yield name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default="redis", help="redis, postgres, or a store URL")
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument(
        "--jobs-per-worker",
        "--jobs",
        type=int,
        default=20000,
        help="jobs per worker process; total = workers x this (default 20000)",
    )
    parser.add_argument("--chunks", type=int, default=5, help="data chunks per job (default 5)")
    parser.add_argument("--payload", type=int, default=64, help="filler bytes per chunk (64)")
    parser.add_argument("--concurrency", type=int, default=1, help="-c of each worker (1)")
    parser.add_argument(
        "--flush-interval",
        type=float,
        default=None,
        help="run workers with Worker(flush_interval=S) instead of the gearstash worker CLI "
        "(0: every event is its own store write)",
    )
    parser.add_argument(
        "--live",
        action="store_true",
        help="start the workers first and submit while they work (default: fill the queue first)",
    )
    parser.add_argument(
        "--gearmands", type=int, default=1, help="private gearmands the jobs are spread over (1)"
    )
    parser.add_argument(
        "--prefork",
        action="store_true",
        help="one `gearstash worker --processes <workers>` instead of separate worker processes",
    )
    parser.add_argument(
        "--private",
        action="store_true",
        help="redis/postgres: a server of the run's own on a free loopback port",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--serve", metavar="FUNCTION", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.concurrency, args.flush_interval or 0.0)
        return 0

    import gearstash
    from gearstash.testing.gearmand import Gearmand

    def say(text: str) -> None:
        print(time.strftime("%H:%M:%S"), text, file=sys.stderr, flush=True)

    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    load = os.getloadavg()
    with contextlib.ExitStack() as stack:
        gearmands = [stack.enter_context(Gearmand()) for _ in range(max(1, args.gearmands))]
        url = stack.enter_context(store_for(args.store, args.private))
        addresses = [g.address for g in gearmands]
        say(f"gearmand {gearmands[0].version()} on {', '.join(addresses)}; store {_redacted(url)}")
        say(f"gearstash from {Path(gearstash.__file__).parent}")
        report = run_load(
            addresses,
            url,
            workers=args.workers,
            jobs_per_worker=args.jobs_per_worker,
            chunks=args.chunks,
            payload=args.payload,
            concurrency=args.concurrency,
            flush_interval=args.flush_interval,
            live=args.live,
            prefork=args.prefork,
            progress=say,
        )
    if args.json:
        print(json.dumps({"started": started, "load": load, **report.to_json()}, indent=1))
    else:
        print(f"started {started}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        print(report.text())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
