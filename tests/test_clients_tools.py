"""psql, pgbench and node-postgres through the proxy."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.certs import CertFiles
from tests.harness import Database, RunningProxy

NODE_DIR = Path(__file__).parent / "node"


def _tool(name: str, install: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: {install}", pytrace=False)
    return path


def _psql(dsn: str, script: str, *extra: str) -> subprocess.CompletedProcess[str]:
    psql = _tool("psql", "apt-get install postgresql-client")
    return subprocess.run([psql, "-X", "-q", *extra, dsn], input=script, capture_output=True,
                          text=True, timeout=60, check=False)


def test_psql_session(proxy: RunningProxy, db: Database, tmp_path: Path) -> None:
    data = tmp_path / "rows.csv"
    data.write_text("1,one\n2,two\n3,three\n")
    out = tmp_path / "out.csv"
    script = f"""
DROP TABLE IF EXISTS psql_items;
CREATE TABLE psql_items (id int PRIMARY KEY, word text);
\\copy psql_items FROM '{data}' WITH (FORMAT csv)
BEGIN;
DELETE FROM psql_items;
ROLLBACK;
SELECT 'count=' || count(*) FROM psql_items;
SELECT * FROM nonexistent_psql_table;
PREPARE by_id(int) AS SELECT word FROM psql_items WHERE id = $1;
EXECUTE by_id(2);
LISTEN psql_chan;
NOTIFY psql_chan, 'psql payload';
\\copy (SELECT word FROM psql_items ORDER BY id) TO '{out}' WITH (FORMAT csv)
SELECT 'still usable';
"""
    proc = _psql(proxy.dsn(db), script, "-At")
    assert "count=3" in proc.stdout
    assert 'relation "nonexistent_psql_table" does not exist' in proc.stderr
    assert "two" in proc.stdout.split()
    assert 'Asynchronous notification "psql_chan" with payload "psql payload"' in proc.stdout
    assert "still usable" in proc.stdout
    assert out.read_text().split() == ["one", "two", "three"]


def test_psql_tls_and_wrong_password(proxy: RunningProxy, db: Database,
                                     certs: CertFiles) -> None:
    dsn = proxy.dsn(db, sslmode="verify-full", sslrootcert=str(certs.ca))
    proc = _psql(dsn.replace("127.0.0.1", "localhost"),
                 "SELECT 'ssl=' || ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid();\n"
                 "\\conninfo\n", "-At")
    assert proc.returncode == 0, proc.stderr
    # The proxy terminates TLS; the upstream hop here is plaintext (sslmode=disable).
    assert "ssl=f" in proc.stdout
    assert "SSL connection (protocol: TLSv1.3" in proc.stdout
    bad = _psql(db.dsn("app", password="wrong", port=proxy.port), "SELECT 1;")
    assert bad.returncode != 0
    assert 'password authentication failed for user "app"' in bad.stderr


def _pgbench(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    pgbench = _tool("pgbench", "apt-get install postgresql-contrib (Debian: postgresql)")
    return subprocess.run([pgbench, *args, dsn], capture_output=True, text=True, timeout=120,
                          check=False)


def test_pgbench_through_proxy(proxy: RunningProxy, db: Database) -> None:
    dsn = proxy.dsn(db)
    init = _pgbench(dsn, "-i", "-s", "1", "-q")
    assert init.returncode == 0, init.stderr
    assert "done" in init.stderr
    for mode in ("simple", "extended", "prepared"):
        run = _pgbench(dsn, "-M", mode, "-c", "4", "-j", "2", "-T", "2", "-n")
        assert run.returncode == 0, run.stderr
        processed = int(re.search(r"number of transactions actually processed: (\d+)",
                                  run.stdout).group(1))
        failed = re.search(r"number of failed transactions: (\d+)", run.stdout)
        assert processed > 100, run.stdout
        assert failed is None or failed.group(1) == "0", run.stdout


def test_node_postgres(proxy: RunningProxy, db: Database, certs: CertFiles) -> None:
    node = _tool("node", "install Node.js (apt-get install nodejs npm)")
    if not (NODE_DIR / "node_modules" / "pg").exists():
        npm = _tool("npm", "install npm (apt-get install npm)")
        install = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR,
                                 capture_output=True, text=True, timeout=300, check=False)
        if install.returncode != 0:
            pytest.fail(f"`npm ci` in tests/node failed: {install.stderr[-500:]}", pytrace=False)
    proc = subprocess.run([node, "client.js", proxy.dsn(db), str(certs.ca)], cwd=NODE_DIR,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["named"] == ["label 3", "label 4"]
    assert report["afterRollback"] == 10
    assert report["errorCode"] == "42P01"
    assert report["usableAfterError"] == 42
    assert report["copyOut"] == "100\n101\n"
    assert report["notification"] == "node says hi"
    assert report["cancelCode"] == "57014"
    assert report["cancelMillis"] < 1300
    assert report["tls"] is True
    assert report["wrongPassword"] == "28P01"


def test_psql_cancel_with_ctrl_c(proxy: RunningProxy, db: Database) -> None:
    import signal
    import time

    psql = _tool("psql", "apt-get install postgresql-client")
    proc = subprocess.Popen([psql, "-X", "-c", "SELECT pg_sleep(30)", proxy.dsn(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.8)
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)  # psql sends a CancelRequest
    _, err = proc.communicate(timeout=10)
    assert time.monotonic() - start < 1.0
    assert "canceling statement due to user request" in err
