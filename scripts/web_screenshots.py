"""Screenshots of the web face for the README: overview, jobs list and a running job, light and
dark, into docs/. Needs gearmand, Debian's chromium + chromium-driver and the web extra.

    .venv/bin/python scripts/web_screenshots.py

A private gearmand and a worker in this process run a few jobs (complete, failed, one slow one
with progress) into a temporary SQLite store; uvicorn serves the app on a free loopback port.
"""

from __future__ import annotations

import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.browser import chrome, serving, wait_for  # noqa: E402

from gearstash import JobFailed, Worker  # noqa: E402
from gearstash.client.client import Client  # noqa: E402
from gearstash.testing.gearmand import Gearmand  # noqa: E402
from gearstash.web.app import create_app  # noqa: E402
from gearstash.worker.job import Job  # noqa: E402

DOCS = ROOT / "docs"


def resize(job: Job) -> bytes:
    steps = 8
    for i in range(steps):
        job.send_status(i + 1, steps)
        job.send_data(b"resized tile %d of %d" % (i + 1, steps))
        time.sleep(0.05)
    return b"thumbnail.jpg (48 KB)"


def report(job: Job) -> bytes:
    job.send_data(b"rows 0-5000")
    job.send_warning(b"3 rows without a date were skipped")
    if random.random() < 0.3:
        raise JobFailed("upstream refused the export")
    return b"report.csv"


def crawl(job: Job) -> bytes:
    total = 40
    for i in range(total):
        job.send_status(i + 1, total)
        if i % 3 == 0:
            job.send_data(b"fetched https://example.invalid/page/%d (200)" % i)
        if i == 7:
            job.send_warning(b"robots.txt disallows /private: skipped")
        time.sleep(0.5)
    return b"40 pages"


def main() -> None:
    DOCS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        gearmand = Gearmand(workdir=tmp)
        gearmand.start()
        url = f"sqlite:///{tmp}/jobs.db"
        worker = Worker([gearmand.address], store=url)
        for name, fn in (("resize", resize), ("report", report)):
            worker.register(name, fn)
        crawler = Worker([gearmand.address], store=url)  # the slow job has a worker of its own
        crawler.register("crawl", crawl)
        threads = [
            threading.Thread(target=w.work, kwargs={"handle_signals": False})
            for w in (worker, crawler)
        ]
        for thread in threads:
            thread.start()
        try:
            with Client([gearmand.address], store=url) as client:
                for i in range(18):
                    client.submit_background("resize" if i % 3 else "report", b"%d" % i)
                crawl_ref = client.submit_background("crawl", b"https://example.invalid/")
                time.sleep(4)
                app = create_app(store=url, servers=[gearmand.address], token_secret="s" * 32)
                with serving(app) as base:
                    for dark in (False, True):
                        suffix = "dark" if dark else "light"
                        with chrome(dark=dark, width=1200, height=820) as driver:
                            driver.get(base + "/")
                            wait_for(lambda d=driver: d.find_elements("css selector", ".count"))
                            time.sleep(1)
                            driver.save_screenshot(str(DOCS / f"web-overview-{suffix}.png"))
                            driver.get(base + "/jobs")
                            wait_for(lambda d=driver: d.find_elements("css selector", "tr.job"))
                            time.sleep(0.5)
                            driver.save_screenshot(str(DOCS / f"web-jobs-{suffix}.png"))
                            driver.get(f"{base}/jobs/{quote(str(crawl_ref), safe='')}")
                            wait_for(
                                lambda d=driver: (
                                    len(d.find_elements("css selector", "#chunks li")) >= 3
                                )
                            )
                            time.sleep(1)
                            driver.save_screenshot(str(DOCS / f"web-job-{suffix}.png"))
        finally:
            for w, thread in zip((worker, crawler), threads, strict=True):
                w.stop()
                thread.join(30)
                w.close()
            gearmand.stop()
    for path in sorted(DOCS.glob("web-*.png")):
        print(path.relative_to(ROOT))


if __name__ == "__main__":
    main()
