"""One pygearman 0.2.6 worker process for bench/run.py: drain N jobs, print timings as JSON.

usage: pygearman_worker.py HOST:PORT FUNCTION N plain|status

pygearman crashes on str task names (shared GEARMAN.md), so the task is registered as bytes.
It has no "max jobs" option: ``after_job`` returning False ends ``work()``.
"""

from __future__ import annotations

import json
import sys
import time

import gearman  # pygearman installs the module "gearman"


def main() -> None:
    address, function, n_text, variant = sys.argv[1:5]
    n = int(n_text)
    clock, cpu = time.perf_counter, time.process_time
    seen = {"count": 0, "first": 0.0, "last": 0.0, "cpu_first": 0.0, "cpu_last": 0.0}

    class CountingWorker(gearman.GearmanWorker):  # type: ignore[misc]
        def after_job(self) -> bool:
            return seen["count"] < n

    def job_fn(worker, job):  # type: ignore[no-untyped-def]
        count = seen["count"] = seen["count"] + 1
        if count == 1:
            seen["first"], seen["cpu_first"] = clock(), cpu()
        if count == n:
            seen["last"], seen["cpu_last"] = clock(), cpu()
        if variant == "status":
            worker.send_job_status(job, 1, 2)
            worker.send_job_data(job, b"half way")
        return job.data[::-1]

    worker = CountingWorker([address])
    worker.register_task(function.encode(), job_fn)
    worker.work(poll_timeout=1.0)
    worker.shutdown()
    seconds, cpu_seconds = seen["last"] - seen["first"], seen["cpu_last"] - seen["cpu_first"]
    print(json.dumps({"jobs": seen["count"], "seconds": seconds, "cpu_seconds": cpu_seconds}))


if __name__ == "__main__":
    main()
