"""A third-party store package, end to end: installed into a fresh virtual environment, listed by
``gearstash plugins``, selected by its URL scheme, and passing the shipped contract suite."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parent.parent / "examples" / "gearstash-jsondir"


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv that sees gearstash, pytest, pip and setuptools from this one (through a .pth
    file), with the example package installed into it."""
    root = tmp_path_factory.mktemp("thirdparty") / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120
    )
    python = root / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    ours = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    lines = "".join(f"import site; site.addsitedir({p!r})\n" for p in dict.fromkeys(ours))
    Path(purelib, "gearstash-parent-venv.pth").write_text(lines)
    source = root.parent / "src"
    shutil.copytree(EXAMPLE, source)
    subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            str(source),
        ],
        check=True,
        timeout=300,
    )
    return root


def run(venv: Path, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GEARSTASH_STORE"}
    return subprocess.run(
        [str(venv / "bin" / "python"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        **kwargs,
    )


def test_the_plugin_is_listed(venv: Path) -> None:
    result = run(venv, "-m", "gearstash", "plugins", "--json")
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    assert listing["stores"]["jsondir"]["plugin"] == "jsondir"
    assert any(p["name"] == "jsondir" and p["version"] == "1.0.0" for p in listing["plugins"])
    assert listing["failed"] == []
    # ... and it is absent where it is not installed
    here = subprocess.run(
        [sys.executable, "-m", "gearstash", "plugins", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "jsondir" not in json.loads(here.stdout)["stores"]


def test_the_contract_suite_passes(venv: Path, tmp_path: Path) -> None:
    tests = tmp_path / "tests"
    shutil.copytree(EXAMPLE / "tests", tests)
    result = run(venv, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout and "failed" not in result.stdout


@pytest.mark.gearmand
def test_selected_by_url_scheme_by_a_worker(venv: Path, gearmand, tmp_path: Path) -> None:
    (tmp_path / "tpjobs.py").write_text(
        "def shout(job):\n    job.send_data(b'hey')\n    return job.workload.upper()\n"
    )
    url = f"jsondir://{tmp_path}/jobs"
    worker = subprocess.Popen(
        [
            str(venv / "bin" / "python"),
            "-m",
            "gearstash",
            "worker",
            "-s",
            gearmand.address,
            "--store",
            url,
            "--max-jobs",
            "1",
            "tpjobs:shout",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        submitted = run(
            venv,
            "-m",
            "gearstash",
            "submit",
            "-s",
            gearmand.address,
            "shout",
            "quiet",
            "--background",
        )
        assert submitted.returncode == 0, submitted.stderr
        ref = submitted.stdout.strip()
        assert worker.wait(30) == 0
        fetched = run(
            venv, "-m", "gearstash", "fetch", "-s", gearmand.address, "--store", url, ref, "--json"
        )
        assert fetched.returncode == 0, fetched.stderr
        record = json.loads(fetched.stdout)
        assert (record["state"], record["result"], record["data"]) == ("complete", "QUIET", ["hey"])
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    files = list((tmp_path / "jobs").glob("*.json"))
    assert (
        len(files) == 1
        and json.loads(files[0].read_text())["record"]["format"] == "gearstash.job/1"
    )
