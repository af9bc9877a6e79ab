"""Instructions per job, counted by callgrind (stable on a noisy shared machine, unlike time).

    .venv/bin/python bench/instructions.py [--small 500] [--large 2500] [--cases php,redis]

For every case of bench/run.py picked (default: the PHP workers, gearstash plain and the Redis
capture cases), the worker process runs under ``valgrind --tool=callgrind`` twice: draining
``small`` jobs, then ``large`` jobs. Instructions per job = (Ir(large) - Ir(small)) / (large -
small), so start-up and imports cancel out. Only the worker process is counted (not gearmand,
not Redis); a thread of the worker (the committer) is. Prints one line per case.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import subprocess
import tempfile
from pathlib import Path

import run
import servers

from gearstash.testing.gearmand import Gearmand

DEFAULT = (
    "php status+data",
    run.PHP_REDIS,
    "gearstash status+data",
    "gearstash redis status+data",
    "gearstash redis status+data pipeline=16",
    "gearstash redis status+data pipeline=16 prefetch",
)


def instructions(argv: list[str], out: Path) -> int:
    """Total instructions (Ir) of ``argv`` under callgrind, every thread together."""
    subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *argv],
        check=True,
        capture_output=True,
        timeout=1800,
    )
    text = out.read_text(errors="replace")
    found = re.search(r"^summary:\s+(\d+)", text, re.MULTILINE) or re.search(
        r"^totals:\s+(\d+)", text, re.MULTILINE
    )
    if found is None:
        raise RuntimeError(f"no summary in {out}")
    return int(found.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--small", type=int, default=500)
    ap.add_argument("--large", type=int, default=2500)
    ap.add_argument("--cases", default="", help="comma-separated substrings of case names")
    opts = ap.parse_args()
    wanted = [w.strip() for w in opts.cases.split(",") if w.strip()]
    cases = [
        c
        for c in run.CASES
        if not c.procs and (any(w in c.name for w in wanted) if wanted else c.name in DEFAULT)
    ]
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gearstash-ir-")))
        g = stack.enter_context(Gearmand())
        port = stack.enter_context(servers.redis_server()).port
        redis_url = f"redis://127.0.0.1:{port}/0"
        for i, case in enumerate(cases):
            counts = []
            for n in (opts.small, opts.large):
                function = f"ir{i}_{n}"
                run.fill(g.port, function, n)
                url = {"null": "null://", "redis": redis_url}.get(
                    case.store, f"sqlite:///{tmp / (function + '.db')}"
                )
                argv = run.worker_argv(case, g, function, n, url)
                counts.append(instructions(argv, tmp / f"{function}.out"))
                run.wait_drained(g, function, timeout=30)
            per_job = (counts[1] - counts[0]) / (opts.large - opts.small)
            print(f"{case.name:<50} {per_job:>12,.0f} instructions/job", flush=True)


if __name__ == "__main__":
    main()
