"""Issue 9: what a new user hit. One test (or a few) per numbered point of the issue, each written
to reproduce what the issue describes before the fix, against real servers where one is involved.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from gearstash.cli.main import main
from gearstash.errors import ConfigError
from gearstash.spine.manager import open_store
from gearstash.store.urls import scrub

# ---------------------------------------------------------------- 1. a password leaks

PASSWORD = "Sup3rS3cret"
BAD_USERINFO = (f":{PASSWORD}/x@", f"user:{PASSWORD}/x@", f":{PASSWORD}?x@", f":{PASSWORD}#x@")
SCHEMES = (
    "redis",
    "rediss",
    "unix",
    "postgresql",
    "mysql",
    "mariadb",
    "memcache",
    "sqlite",
    "memory",
)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("userinfo", BAD_USERINFO)
def test_1_unparseable_store_url_is_refused_before_any_driver(scheme, userinfo, monkeypatch):
    url = f"{scheme}://{userinfo}127.0.0.1:47302/0"
    with pytest.raises(ConfigError) as caught:
        open_store(url)
    assert PASSWORD not in str(caught.value)
    assert "percent-encode" in str(caught.value)
    monkeypatch.setenv("GEARSTASH_STORE", url)
    result = CliRunner().invoke(main, ["fetch", "-s", "127.0.0.1:1", "H:vm:1"])
    assert result.exit_code == 1, result.output
    assert PASSWORD not in result.output
    assert result.output.startswith("gearstash: error: cannot parse the store URL")


@pytest.mark.parametrize("userinfo", BAD_USERINFO)
def test_1_scrub_finds_a_password_the_parser_cannot(userinfo):
    url = f"redis://{userinfo}127.0.0.1:47302/0"
    text = f"Port could not be cast to integer value as '{PASSWORD}' in {url}"
    assert PASSWORD not in scrub(text, url)


def test_1_at_sign_in_a_sqlite_path_is_fine(tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/a@b.db")
    store.close()
    assert (tmp_path / "a@b.db").exists()
