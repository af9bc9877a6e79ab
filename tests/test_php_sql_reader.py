"""PHP reads a finished job straight from the SQL tables (the README's recipe) and gets the same
data, result and status as ``gearstash fetch``."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from support.need import need
from workers import running_worker

from gearstash import Client, State

pytestmark = [pytest.mark.php, pytest.mark.gearmand]

PHP_READER = r"""<?php
// The README's SQL recipe: the newest job with a handle, then its chunks in order.
[$_, $dsn, $user, $handle] = $argv;
$db = new PDO($dsn, $user, '', [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION]);
function bytes($v) { return is_resource($v) ? stream_get_contents($v) : $v; }
$q = $db->prepare('SELECT id, server, unique_key, function, state, attempt, result, error_kind,
                          error_message, expires_at
                   FROM gearstash_jobs WHERE handle = ? ORDER BY id DESC LIMIT 1');
$q->bindValue(1, $handle, PDO::PARAM_LOB);
$q->execute();
$job = $q->fetch(PDO::FETCH_ASSOC);
$c = $db->prepare('SELECT kind, payload, numerator, denominator, at
                   FROM gearstash_chunks WHERE job_id = ? ORDER BY seq');
$c->execute([$job['id']]);
$data = []; $warnings = []; $status = [];
foreach ($c->fetchAll(PDO::FETCH_ASSOC) as $row) {
    if ($row['kind'] === 'data') $data[] = bytes($row['payload']);
    elseif ($row['kind'] === 'warning') $warnings[] = bytes($row['payload']);
    else $status[] = [(int)$row['numerator'], (int)$row['denominator']];
}
echo json_encode([
    'server' => $job['server'], 'unique' => bytes($job['unique_key']),
    'function' => bytes($job['function']), 'state' => $job['state'],
    'attempt' => (int)$job['attempt'], 'result' => bytes($job['result']),
    'data' => $data, 'warnings' => $warnings, 'status' => $status,
]);
"""


def _php_with(extension: str) -> str:
    php = shutil.which("php")
    out = subprocess.run([php, "-m"], capture_output=True, text=True).stdout if php else ""
    need(
        php is not None and extension in out.split(),
        f"php-cli with {extension} is not installed (scripts/setup.sh installs it)",
    )
    assert php is not None
    return php


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
def sql_store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str, str, str]:
    """(store URL, PDO DSN, PDO user, PDO driver) for each SQL database (the session's own)."""
    if request.param == "sqlite":
        path = tmp_path / "php.db"
        return f"sqlite:///{path}", f"sqlite:{path}", "", "pdo_sqlite"
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
        port = request.getfixturevalue("postgres_server").port
        return url, f"pgsql:host=127.0.0.1;port={port};dbname=test", "postgres", "pdo_pgsql"
    url = request.getfixturevalue("mysql_url")
    port = request.getfixturevalue("mariadb_server").port
    return url, f"mysql:host=127.0.0.1;port={port};dbname=test", "root", "pdo_mysql"


def test_php_reads_what_gearstash_fetch_shows(gearmand, sql_store, tmp_path: Path) -> None:
    url, dsn, user, driver = sql_store
    php = _php_with(driver)
    with running_worker([gearmand.address], url), Client([gearmand.address], store=url) as c:
        ref = c.submit_background("reverse", b"PHP reads this")
        view = c.wait(ref, timeout=20)
        assert view.state is State.COMPLETE
        fetched = view.to_json()
        script = tmp_path / "reader.php"
        script.write_text(PHP_READER)
        out = subprocess.run(
            [php, str(script), dsn, user, ref.handle.decode()],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        got = json.loads(out)
    assert got == {
        "server": fetched["server"],
        "unique": fetched["unique"],
        "function": fetched["function"],
        "state": fetched["state"],
        "attempt": fetched["attempt"],
        "result": fetched["result"],
        "data": fetched["data"],
        "warnings": fetched["warnings"],
        "status": [[p["numerator"], p["denominator"]] for p in fetched["status"]],
    }
    assert got["result"] == "siht sdaer PHP" and got["data"] == ["chunk-0", "chunk-1", "chunk-2"]
    with Client([gearmand.address], store=url) as c:
        assert c.forget(ref) == 1
