"""One gearstash worker process for bench/run.py: drain N jobs, print timings as JSON.

usage: gs_worker.py ADDRESS FUNCTION N plain|status STORE_URL [RSS_AT]

Timing uses this process's own clock: from the start of the first job to the start of the
last one, so the rate covers N-1 complete job cycles and no start-up; ``cpu_seconds`` is the
process's CPU time (user + system) over the same span. With RSS_AT, VmRSS is
read from /proc/self/status when job RSS_AT starts and again after the last job is stored.
"""

from __future__ import annotations

import json
import sys
import time

from gearstash import Worker


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> None:
    address, function, n_text, variant, store = sys.argv[1:6]
    n = int(n_text)
    rss_at = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    clock, cpu = time.perf_counter, time.process_time
    seen = {"count": 0, "first": 0.0, "last": 0.0, "cpu_first": 0.0, "cpu_last": 0.0, "rss_at": 0}

    def job_fn(job):  # type: ignore[no-untyped-def]
        count = seen["count"] = seen["count"] + 1
        if count == 1:
            seen["first"], seen["cpu_first"] = clock(), cpu()
        if count == n:
            seen["last"], seen["cpu_last"] = clock(), cpu()
        if count == rss_at:
            seen["rss_at"] = rss_kb()
        if variant == "status":
            job.send_status(1, 2)
            job.send_data(b"half way")
        return job.workload[::-1]

    worker = Worker(servers=[address], store=store, concurrency=1)
    worker.register(function, job_fn)
    try:
        worker.work(handle_signals=True, max_jobs=n)
    finally:
        worker.close()
    out = {
        "jobs": seen["count"],
        "seconds": seen["last"] - seen["first"],
        "cpu_seconds": seen["cpu_last"] - seen["cpu_first"],
        "rss_start_kb": seen["rss_at"],
        "rss_end_kb": rss_kb(),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
