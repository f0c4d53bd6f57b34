"""The rules file: validation with file, line and key; and the operator commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.config.yamlsource import ConfigError
from proxy.policy.rules import load_rules, parse_rules
from proxy.policy.tokens import TokenVerifier, load_hmac_key
from tests.harness import Database

ROOT = Path(__file__).resolve().parents[1]


def test_example_and_demo_files_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENANT_PROXY_TOKEN_KEY", "k" * 32)
    example = load_rules(ROOT / "rules" / "example.yaml")
    assert example.table("public.invoices").column == "account_id"
    assert example.table("public.countries").writable is False
    assert example.table("public.feature_flags").writable is True
    assert example.users["acme_ro"].tenant == "42"
    assert load_rules(ROOT / "rules" / "demo.yaml").users["migrate"].identity == "bypass"


@pytest.mark.parametrize("text,expected", [
    ("version: 2\n", r"<t>:1: version: version must be 1"),
    ("version: 1\ntables:\n  orders: {scope: tenants}\n",
     r"<t>:3: tables.orders.scope: 'tenants' is not one of tenant, shared, deny"),
    ("version: 1\ntables:\n  orders: {scope: shared, column: x}\n",
     r"<t>:3: tables.orders.column: only tenant-scoped tables have a column"),
    ("version: 1\ntables:\n  orders:\n    scope: tenant\n    writeable: true\n",
     r"<t>:5: tables.orders.writeable: unknown key"),
    ("version: 1\ntenant: {type: int8}\n", r"<t>:2: tenant.type: 'int8' is not one of"),
    ("version: 1\nusers:\n  acme: {identity: bound}\n",
     r"<t>:3: users.acme: identity bound needs a tenant"),
    ("version: 1\nusers:\n  acme: {identity: bound, tenant: abc}\n",
     r"<t>:3: users.acme.tenant: tenant id 'abc' is not an integer"),
    ("version: 1\nusers:\n  app: {identity: token, tenant: 1}\n",
     r"<t>:3: users.app.tenant: only bound roles have a fixed tenant"),
    ("version: 1\ntokens:\n  hmac_keys: [short]\n",
     r"<t>:3: tokens.hmac_keys.0: HMAC key must be at least 32 bytes"),
    ("version: 1\nnotify: {channel_prefix: fixed}\n",
     r"<t>:2: notify.channel_prefix: must contain \{tenant\}"),
    ("version: 1\nsession: {multi_statement: maybe}\n",
     r"<t>:2: session.multi_statement: 'maybe' is not one of refuse, allow"),
    ("version: 1\ntables:\n  public.users: {scope: tenant}\n  users: {scope: shared}\n",
     r"<t>:4: tables.users: public.users is listed twice"),
])
def test_errors_name_file_line_and_key(text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        parse_rules(text, "<t>")


def test_defaults() -> None:
    rules = parse_rules("version: 1\ntables:\n  orders: {scope: tenant}\n")
    assert rules.table("public.orders").column == "tenant_id"
    assert rules.table("public.orders").writable is True
    assert not rules.multi_statement and not rules.reset_all and not rules.sql_prepare
    assert rules.tenant_literal("42") == "42"
    text_rules = parse_rules("version: 1\ntenant: {type: text}\n")
    assert text_rules.tenant_literal("o'brien") == "'o''brien'"
    assert parse_rules("version: 1\n").version != text_rules.version


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy.cli.main", *args], capture_output=True,
                          text=True, timeout=60, check=False, env={**os.environ, **(env or {})})


def test_explain_command() -> None:
    rules = str(ROOT / "tests" / "corpus" / "rules.yaml")
    ok = _cli("explain", "--rules", rules, "--tenant", "7", "SELECT id FROM orders")
    assert ok.returncode == 0
    assert '"public"."orders" AS "_tp" WHERE "_tp"."tenant_id" = 7' in ok.stdout
    refused = _cli("explain", "--rules", rules, "--tenant", "7", "DELETE FROM audit_events")
    assert refused.returncode == 1
    assert "REFUSED 42501" in refused.stdout and "audit_events" in refused.stdout
    missing = _cli("explain", "--rules", rules, "SELECT id FROM orders")
    assert "no tenant is set" in missing.stdout


def test_token_command_mints_verifiable_tokens() -> None:
    key = "base64:" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVpBQkNERUY="
    proc = _cli("token", "--tenant", "42", "--role", "app", "--ttl", "60",
                env={"TENANT_PROXY_TOKEN_KEY": key})
    assert proc.returncode == 0, proc.stderr
    claims = TokenVerifier([load_hmac_key(key)]).verify(proc.stdout.strip(), role="app")
    assert claims.tenant == "42"


def test_check_command_against_a_live_database(db: Database, tmp_path: Path) -> None:
    from tests.corpus_harness import CORPUS_DB, create_corpus_db

    create_corpus_db(db)
    good = _cli("check", str(ROOT / "tests" / "corpus" / "rules.yaml"), "--dsn",
                db.dsn(db.superuser, CORPUS_DB))
    assert good.returncode == 0, good.stdout + good.stderr
    assert "the database matches the rules" in good.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ntenant: {type: uuid}\ntables:\n  orders: {scope: tenant}\n"
                   "  missing_table: {scope: shared}\n  countries: {scope: tenant}\n")
    out = _cli("check", str(bad), "--dsn", db.dsn(db.superuser, CORPUS_DB))
    assert out.returncode == 1
    assert "tables.public.orders: column tenant_id is integer, but tenant.type is uuid" \
        in out.stdout
    assert "tables.public.missing_table: no such table" in out.stdout
    assert "tables.public.countries: has no column tenant_id" in out.stdout
    invalid = _cli("check", str(ROOT / "README.md"))
    assert invalid.returncode == 2 and "README.md" in invalid.stderr


def test_sighup_reloads_rules_in_a_running_proxy(db: Database, tmp_path: Path) -> None:
    """`tenant-proxy run` with the file watch off: SIGHUP alone applies an edit."""
    import signal
    import time

    import psycopg

    from proxy.auth.scram import make_verifier
    from proxy.localpg.cluster import free_port
    from tests.corpus_harness import CORPUS_DB, create_corpus_db

    create_corpus_db(db)
    rules = tmp_path / "rules.yaml"
    rules.write_text((ROOT / "tests" / "corpus" / "rules.yaml").read_text())
    port = free_port()
    config = tmp_path / "proxy.yaml"
    config.write_text(f"""
listen: 127.0.0.1:{port}
upstream: {{host: 127.0.0.1, port: {db.port}, sslmode: disable, database: {CORPUS_DB},
            roles: {{corpus_app: postgres}}, password: "{db.superuser_password}"}}
auth: {{users: {{corpus_app: "{make_verifier('pw')}"}}}}
rules: {rules}
rules_reload_interval: 0
""")
    proc = subprocess.Popen([sys.executable, "-m", "proxy.cli.main", "run", "--config",
                             str(config), "--log-format", "text"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and "listening" in proc.stdout.readline()
        url = f"postgresql://corpus_app:pw@127.0.0.1:{port}/{CORPUS_DB}"
        with psycopg.connect(url, options="-c tenant_proxy.tenant=1",
                             autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM countries").fetchone()[0] > 0
            rules.write_text(rules.read_text().replace(
                "public.countries: {scope: shared, writable: false}",
                "public.countries: {scope: deny}"))
            time.sleep(0.3)
            assert conn.execute("SELECT count(*) FROM countries").fetchone()[0] > 0
            proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    conn.execute("SELECT count(*) FROM countries")
                except psycopg.errors.InsufficientPrivilege:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("SIGHUP did not reload the rules")
    finally:
        proc.terminate()
        proc.wait(10)


def test_anomaly_section() -> None:
    assert parse_rules("version: 1\nanomaly: {mode: off}\n").anomaly.mode == "off"
    rules = parse_rules("version: 1\nanomaly: {mode: monitor, threshold: 0.8}\n")
    assert (rules.anomaly.mode, rules.anomaly.threshold) == ("monitor", 0.8)
    with pytest.raises(ConfigError, match=r"<t>:2: anomaly.mode: learn mode needs"):
        parse_rules("version: 1\nanomaly: {mode: learn}\n", "<t>")
    with pytest.raises(ConfigError, match=r"<t>:2: anomaly.threshold: expected a number"):
        parse_rules("version: 1\nanomaly: {threshold: 3}\n", "<t>")
