"""Operations: Prometheus metrics over HTTP, health and readiness, graceful drain."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.config.settings import Limits
from proxy.observability.metrics import Metrics
from proxy.wire import backend as be
from tests.certs import CertFiles
from tests.corpus_harness import CORPUS, CORPUS_DB, corpus_settings, create_corpus_db
from tests.harness import Database, RunningProxy, proxy_settings, running_proxy
from tests.rawclient import RawClient, errors

LOGINS = {"corpus_app": "corpus-pw"}


def _settings(db: Database, certs: CertFiles, **changes: object):  # type: ignore[no-untyped-def]
    base = corpus_settings(proxy_settings(db, certs), CORPUS / "rules.yaml", LOGINS)
    return replace(base, http_listen="127.0.0.1:0", **changes)


def _get(proxy: RunningProxy, path: str) -> tuple[int, str]:
    assert proxy.server.ops is not None
    url = f"http://127.0.0.1:{proxy.server.ops.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _samples(proxy: RunningProxy) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = _get(proxy, "/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _value(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _dsn(proxy: RunningProxy) -> str:
    return f"postgresql://corpus_app:corpus-pw@127.0.0.1:{proxy.port}/{CORPUS_DB}"


@pytest.fixture(scope="module")
def ops(db: Database, certs: CertFiles):  # type: ignore[no-untyped-def]
    create_corpus_db(db)
    with running_proxy(_settings(db, certs), Metrics()) as proxy:
        yield proxy


def test_metrics_move_as_statements_run(ops: RunningProxy) -> None:
    before = _samples(ops)
    with psycopg.connect(_dsn(ops), options="-c tenant_proxy.tenant=1",
                         autocommit=True) as conn:
        for _ in range(3):
            conn.execute("SELECT email FROM users WHERE id = %s", (1,)).fetchall()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM audit_events")
        during = _samples(ops)
    deadline = time.monotonic() + 3
    while True:  # the session ends asynchronously after the client leaves
        after = _samples(ops)
        if _value(after, "tenant_proxy_client_connections") == 0 or \
                time.monotonic() > deadline:
            break
        time.sleep(0.05)
    stmt = "tenant_proxy_statements_total"
    rewritten = dict(kind="select", tenant="1", role="corpus_app", outcome="rewritten")
    assert _value(after, stmt, **rewritten) - _value(before, stmt, **rewritten) == 3
    refused = dict(kind="select", tenant="1", role="corpus_app", outcome="refused")
    assert _value(after, stmt, **refused) - _value(before, stmt, **refused) == 1
    assert _value(after, "tenant_proxy_refusals_total", reason="denied_relation") >= 1
    assert _value(after, "tenant_proxy_plan_cache_lookups_total", result="hit") >= 2
    assert _value(during, "tenant_proxy_client_connections") >= 1
    assert _value(after, "tenant_proxy_client_connections") == 0
    assert _value(after, "tenant_proxy_bytes_total", direction="server_to_client") > \
        _value(before, "tenant_proxy_bytes_total", direction="server_to_client")
    assert _value(after, "tenant_proxy_statement_seconds_count") > \
        _value(before, "tenant_proxy_statement_seconds_count")
    versions = [labels for (name, labels), v in after.items()
                if name == "tenant_proxy_rules_version_info" and v == 1]
    assert len(versions) == 1


def test_tenant_label_cardinality_is_capped() -> None:
    metrics = Metrics(tenant_label_limit=2)
    labels = [metrics.tenant_label(str(t)) for t in range(5)]
    assert labels == ["0", "1", "other", "other", "other"]
    assert metrics.tenant_label("1") == "1" and metrics.tenant_label(None) == "none"


def test_health_and_readiness(ops: RunningProxy, db: Database, certs: CertFiles) -> None:
    assert _get(ops, "/healthz") == (200, "ok\n")
    assert _get(ops, "/readyz") == (200, "ready\n")
    assert _get(ops, "/nope")[0] == 404
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    settings = _settings(db, certs)
    settings = replace(settings, upstream=replace(settings.upstream, port=dead))
    with running_proxy(settings, Metrics()) as proxy:
        status, body = _get(proxy, "/readyz")
        assert status == 503 and "unreachable" in body
        assert _get(proxy, "/healthz")[0] == 200


def test_drain_lets_open_transactions_commit(db: Database, certs: CertFiles,
                                             tmp_path: Path) -> None:
    settings = _settings(db, certs, limits=Limits(drain_timeout=10))
    with running_proxy(settings, Metrics()) as proxy:
        busy = RawClient.connect(proxy.port)
        busy.login("corpus_app", "corpus-pw", CORPUS_DB, options="-c tenant_proxy.tenant=1")
        idle = RawClient.connect(proxy.port)
        idle.login("corpus_app", "corpus-pw", CORPUS_DB, options="-c tenant_proxy.tenant=1")
        assert not errors(busy.query("BEGIN"))
        assert not errors(busy.query("INSERT INTO documents (body) VALUES ('{}')"))
        drained = threading.Event()
        threading.Thread(target=lambda: (proxy.call(proxy.server.drain()), drained.set()),
                         daemon=True).start()
        time.sleep(0.3)
        assert _get(proxy, "/readyz")[0] == 503  # readiness turns false first
        with pytest.raises(OSError):  # new connections are refused
            socket.create_connection(("127.0.0.1", proxy.port), timeout=1).recv(1)
        idle_end = idle.recv()  # the idle session was closed at once
        assert isinstance(idle_end, be.ErrorResponse) and idle_end.sqlstate == "57P01"
        done = busy.query("COMMIT")  # the open transaction still commits
        assert not errors(done) and isinstance(done[-1], be.ReadyForQuery)
        end = busy.recv()
        assert isinstance(end, be.ErrorResponse) and end.sqlstate == "57P01"
        assert drained.wait(5)
    with psycopg.connect(db.dsn(db.superuser, CORPUS_DB)) as admin:
        assert admin.execute("SELECT count(*) FROM documents WHERE body = '{}' "
                             "AND tenant_id = 1").fetchone()[0] >= 1


def test_audit_trail_of_decisions(db: Database, certs: CertFiles, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from proxy.config.settings import AuditSettings

    create_corpus_db(db)
    key = b"k" * 40
    trail = tmp_path / "audit.log"
    logins = {**LOGINS, "corpus_admin": "admin-pw"}
    rules = tmp_path / "rules.yaml"
    rules.write_text((CORPUS / "rules.yaml").read_text() +
                     "  corpus_admin: {identity: bypass}\n")
    settings = replace(corpus_settings(proxy_settings(db, certs), rules, logins),
                       audit=AuditSettings(str(trail), key))
    with running_proxy(settings, Metrics()) as proxy:
        with psycopg.connect(_dsn(proxy), options="-c tenant_proxy.tenant=1",
                             autocommit=True) as conn:
            conn.execute("SELECT email FROM users WHERE email = 'secret-literal@x.test'")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("SELECT detail FROM audit_events WHERE actor = 'hidden-value'")
        admin = f"postgresql://corpus_admin:admin-pw@127.0.0.1:{proxy.port}/{CORPUS_DB}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("SELECT 'bypass-literal'")
    text = trail.read_text()
    assert "secret-literal" not in text and "hidden-value" not in text
    assert "bypass-literal" not in text
    import json

    events = [json.loads(line)["event"] for line in text.splitlines()]
    assert {"role": "corpus_app", "tenant": "1", "outcome": "rewritten"}.items() <= \
        next(e for e in events if e["relations"] == ["public.users"]).items()
    refused = next(e for e in events if e["outcome"] == "refused")
    assert refused["reason"] == "denied_relation" and refused["sqlstate"] == "42501"
    assert any(e["role"] == "corpus_admin" and e["kind"] == "bypass" for e in events)
    env = {**os.environ, "TENANT_PROXY_AUDIT_KEY": key.decode()}
    ok = subprocess.run([sys.executable, "-m", "proxy.cli.main", "audit", "verify",
                         str(trail)], capture_output=True, text=True, env=env, check=False)
    assert ok.returncode == 0 and "OK:" in ok.stdout
    lines = text.splitlines()
    trail.write_text("\n".join([lines[0], lines[0].replace("corpus_app", "corpus_apq"),
                                *lines[2:]]) + "\n")
    bad = subprocess.run([sys.executable, "-m", "proxy.cli.main", "audit", "verify",
                          str(trail)], capture_output=True, text=True, env=env, check=False)
    assert bad.returncode == 1 and "BAD at" in bad.stdout and ":2:" in bad.stdout


def test_logs_are_json_lines_without_secrets(db: Database, certs: CertFiles,
                                             tmp_path: Path) -> None:
    """`tenant-proxy run` logs one JSON event per line; a failed login names the
    user, never the password it tried."""
    import json
    import subprocess
    import sys

    from proxy.auth.scram import make_verifier
    from proxy.localpg.cluster import free_port

    port = free_port()
    config = tmp_path / "proxy.yaml"
    config.write_text(f"""
listen: 127.0.0.1:{port}
upstream: {{host: 127.0.0.1, port: {db.port}, sslmode: disable, password: "upstream-secret"}}
auth: {{users: {{app: "{make_verifier('right-password')}"}}}}
""")
    proc = subprocess.Popen([sys.executable, "-m", "proxy.cli.main", "run", "--config",
                             str(config), "--log-format", "json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and "listening" in proc.stdout.readline()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(f"postgresql://app:wrong-password-xyz@127.0.0.1:{port}/postgres")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    events = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert events and all({"ts", "level", "logger", "msg"} <= e.keys() for e in events)
    assert any(e["level"] == "warning" and "authentication failed" in e["msg"]
               for e in events)
    assert "wrong-password-xyz" not in err and "upstream-secret" not in err
