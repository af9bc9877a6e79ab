"""What one Redis store write costs, and where: the client's round trip against the server's time.

    .venv/bin/python bench/redis_write.py [--writes 2000]

On a private redis-server (no persistence), the Redis store's ``write()`` of a proxied job's
events — started, status 1/2, one chunk, completed — measured from the client (p50 of
``--writes`` writes) and on the server (EVALSHA microseconds per call, from ``INFO
commandstats``), for batches of 1 and 4 jobs and for the final event alone (the job started in an
earlier write, as when a proxy flushed the job's first events before its end). A plain PING round
trip (redis-py) is the floor. Writes nothing to bench/results.
"""

from __future__ import annotations

import argparse
import statistics
import time

import redis
from servers import redis_server

from gearstash.model.records import Event, EventKind, JobKey
from gearstash.spine.manager import open_store


def job_events(n: int) -> list[Event]:
    """A proxied job's events, as the bench's PHP worker makes them."""
    key, now = JobKey("bench", b"H:%d" % n, b"u-%d" % n), time.time()
    return [
        Event(EventKind.STARTED, key, now, b"x" * 20),
        Event(EventKind.STATUS, key, now, numerator=1, denominator=2),
        Event(EventKind.DATA, key, now, b"half way"),
        Event(EventKind.COMPLETED, key, now, b"result"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=2000)
    args = parser.parse_args()
    with redis_server() as server:
        store = open_store(f"{server.url}?prefix=wcost")
        host, port = server.address.rsplit(":", 1)
        plain = redis.Redis(host=host, port=int(port))

        def evalsha() -> tuple[int, int]:
            stats = plain.info("commandstats").get("cmdstat_evalsha", {})
            return int(stats.get("calls", 0)), int(stats.get("usec", 0))

        def measure(name: str, batches: list[list[Event]]) -> None:
            times: list[float] = []
            calls0, usec0 = evalsha()
            for events in batches:
                start = time.perf_counter()
                store.write(events)
                times.append(time.perf_counter() - start)
            calls, usec = evalsha()
            print(
                f"{name:18s} client p50 {statistics.median(times) * 1e3:.3f} ms, "
                f"server {(usec - usec0) / (calls - calls0):.1f} us per EVALSHA"
            )

        pings: list[float] = []
        for _ in range(args.writes):
            start = time.perf_counter()
            plain.ping()
            pings.append(time.perf_counter() - start)
        print(f"{'ping (floor)':18s} client p50 {statistics.median(pings) * 1e3:.3f} ms")
        serial = iter(range(10**9))
        measure("1 job per write", [job_events(next(serial)) for _ in range(args.writes)])
        measure(
            "4 jobs per write",
            [[e for _ in range(4) for e in job_events(next(serial))] for _ in range(args.writes)],
        )
        jobs = [job_events(next(serial)) for _ in range(args.writes)]
        for events in jobs:
            store.write(events[:3])
        measure("final event alone", [events[3:] for events in jobs])
        store.close()
        plain.close()


if __name__ == "__main__":
    main()
