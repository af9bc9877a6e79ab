"""One gearstash worker process for bench/run.py: drain N jobs, print timings as JSON.

usage: gs_worker.py ADDRESS FUNCTION N plain|status STORE_URL [RSS_AT] [--pipeline K] [--prefetch]
       [--capture-workload]

Timing uses this process's own clock: from the start of the first job to the start of the
last one, so the rate covers N-1 complete job cycles and no start-up; ``cpu_seconds`` is the
process's CPU time (user + system) over the same span. With RSS_AT, VmRSS is
read from /proc/self/status when job RSS_AT starts and again after the last job is stored.

N = 0 serves until SIGTERM (one of several processes sharing a queue): then ``first`` and
``last`` are wall-clock times (``time.time()``, comparable across processes) of the first and
the last job start, and ``cpu_seconds`` is the CPU time between them.
"""

from __future__ import annotations

import argparse
import json
import time

from gearstash import Worker


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> None:
    ap = argparse.ArgumentParser()
    for name in ("address", "function"):
        ap.add_argument(name)
    ap.add_argument("n", type=int)
    ap.add_argument("variant", choices=("plain", "status"))
    ap.add_argument("store")
    ap.add_argument("rss_at", type=int, nargs="?", default=0)
    ap.add_argument("--pipeline", type=int, default=None, help="Worker(pipeline=K)")
    ap.add_argument("--prefetch", action="store_true", help="Worker(prefetch=True)")
    ap.add_argument("--capture-workload", action="store_true", help="Worker(capture_workload=True)")
    opts = ap.parse_args()
    n, rss_at, variant = opts.n, opts.rss_at, opts.variant
    clock = time.perf_counter if n else time.time
    cpu = time.process_time
    seen = {"count": 0, "first": 0.0, "last": 0.0, "cpu_first": 0.0, "cpu_last": 0.0, "rss_at": 0}
    starts: list[float] = []  # N = 0: every job's start (wall clock)
    mark = starts.append

    def job_fn(job):  # type: ignore[no-untyped-def]
        count = seen["count"] = seen["count"] + 1
        if count == 1:
            seen["first"], seen["cpu_first"] = clock(), cpu()
        if count == n:
            seen["last"], seen["cpu_last"] = clock(), cpu()
        elif not n:
            mark(clock())
        if count == rss_at:
            seen["rss_at"] = rss_kb()
        if variant == "status":
            job.send_status(1, 2)
            job.send_data(b"half way")
        return job.workload[::-1]

    extra: dict[str, int | bool] = {} if opts.pipeline is None else {"pipeline": opts.pipeline}
    if opts.prefetch:
        extra["prefetch"] = True
    if opts.capture_workload:
        extra["capture_workload"] = True
    worker = Worker(servers=[opts.address], store=opts.store, concurrency=1, **extra)
    worker.register(opts.function, job_fn)
    try:
        worker.work(handle_signals=True, max_jobs=n or None)
    finally:
        worker.close()
    if not n and starts:  # the CPU of every job, up to the last one's end
        seen["first"], seen["last"], seen["cpu_last"] = starts[0], starts[-1], cpu()
    out = {
        "starts": starts,
        "jobs": seen["count"],
        "seconds": seen["last"] - seen["first"],
        "first": seen["first"],
        "last": seen["last"],
        "cpu_seconds": seen["cpu_last"] - seen["cpu_first"],
        "rss_start_kb": seen["rss_at"],
        "rss_end_kb": rss_kb(),
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
