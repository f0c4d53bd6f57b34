"""The encryption pass, without a database: what it allows, marks and refuses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pglast
import pytest

from proxy.policy.rules import parse_rules
from proxy.session.engine import Engine
from proxy.sql.engine import plan_statement
from proxy.sql.sealing import placeholders

RULES = parse_rules(f"""
version: 1
tables:
  patients: {{scope: tenant}}
  contacts: {{scope: tenant}}
  visits: {{scope: tenant}}
  countries: {{scope: shared}}
encryption:
  master_key: '{"ab" * 32}'
  columns:
    patients.ssn: {{mode: randomized, type: text}}
    patients.email: {{mode: deterministic, type: text, domain: email}}
    patients.born: {{mode: deterministic, type: date}}
    contacts.email: {{mode: deterministic, type: text, domain: email}}
    contacts.note: {{mode: randomized, type: text}}
""")


def plan(sql: str, extended: bool = True):  # type: ignore[no-untyped-def]
    return plan_statement(sql, RULES, extended=extended)


@pytest.mark.parametrize("sql, params, literals", [
    ("SELECT id, ssn, email FROM patients WHERE email = $1", {1: True}, []),
    ("SELECT * FROM patients WHERE email IN ($1, $2) AND ssn IS NULL", {1: True, 2: True}, []),
    ("SELECT * FROM patients WHERE email <> 'x'", {}, [True]),
    ("SELECT * FROM patients WHERE NOT email IN ('a', 'b')", {}, [True, True]),
    ("INSERT INTO patients (id, ssn, email) VALUES ($1, $2, $3)", {2: False, 3: False}, []),
    ("INSERT INTO patients (id, ssn, email) VALUES (1, 'a', NULL), (2, DEFAULT, 'b')", {},
     [False, False]),
    ("INSERT INTO patients (id, email) VALUES ($1, $2) ON CONFLICT (email) DO UPDATE "
     "SET email = EXCLUDED.email", {2: False}, []),
    ("UPDATE patients SET ssn = $1::varchar WHERE email = $2::text", {1: False, 2: True}, []),
    ("UPDATE patients SET ssn = NULL WHERE born = DATE '2000-01-01'", {}, [True]),
    ("DELETE FROM patients WHERE email = $1 RETURNING ssn", {1: True}, []),
    ("SELECT p.id FROM patients p JOIN contacts c ON p.email = c.email", {}, []),
    ("SELECT email, count(*), count(DISTINCT email) FROM patients GROUP BY email", {}, []),
    ("SELECT DISTINCT email FROM patients", {}, []),
    ("SELECT s.ssn FROM (SELECT ssn, id FROM patients) s WHERE s.id = 1", {}, []),
    ("WITH p AS (SELECT * FROM patients) SELECT ssn FROM p", {}, []),
    ("SELECT id FROM patients WHERE EXISTS (SELECT email FROM contacts)", {}, []),
    ("SELECT id FROM patients WHERE ssn IS NOT NULL ORDER BY id", {}, []),
])
def test_allowed(sql: str, params: dict[int, bool], literals: list[bool]) -> None:
    result = plan(sql)
    assert result.error is None, result.error.message
    sealing = result.sealing
    assert sealing is not None and sealing.tables
    assert {n: v.search for n, v in sealing.params.items()} == params
    assert [v.search for v, _ in sealing.literals.values()] == literals
    text = result.render("7")
    assert text is not None
    assert placeholders(text) == list(range(len(literals)))
    for number in params:
        searched = f"CAST(${number} AS BYTEA[])" in text
        assert searched == params[number], text
    # What goes upstream parses (placeholders stand where literals will be).
    pglast.parse_sql(text.replace("__tenant_proxy_sealed_", "x__"))


@pytest.mark.parametrize("sql, reason", [
    ("SELECT * FROM patients WHERE ssn = $1", "randomized"),
    ("SELECT * FROM patients WHERE ssn IN ('a')", "randomized"),
    ("SELECT * FROM patients WHERE email LIKE 'a%'", "LIKE"),
    ("SELECT * FROM patients WHERE born > $1", "range"),
    ("SELECT * FROM patients WHERE born BETWEEN '2000-01-01' AND '2001-01-01'", "range"),
    ("SELECT * FROM patients ORDER BY email", "ORDER BY"),
    ("SELECT email AS e FROM patients ORDER BY e", "ORDER BY"),
    ("SELECT ssn FROM patients ORDER BY 1", "ORDER BY"),
    ("SELECT id, email FROM patients ORDER BY $1", "ORDER BY"),  # a template's "ORDER BY 2"
    ("SELECT id, ssn FROM patients GROUP BY id, $1", "GROUP BY"),
    ("SELECT lower(email) FROM patients", "lower"),
    ("SELECT email::text FROM patients", "cast"),
    ("SELECT length(ssn) FROM patients", "length"),
    ("SELECT max(email) FROM patients", "max"),
    ("SELECT DISTINCT ssn FROM patients", "DISTINCT"),
    ("SELECT ssn, count(*) FROM patients GROUP BY ssn", "GROUP BY"),
    ("SELECT count(DISTINCT ssn) FROM patients", "DISTINCT"),
    ("SELECT email FROM patients UNION SELECT email FROM contacts", "UNION"),
    ("SELECT * FROM patients WHERE email = lower($1)", "only literals and parameters"),
    ("SELECT * FROM patients p JOIN contacts c ON p.ssn = c.note", "another key domain"),
    ("SELECT * FROM patients p JOIN contacts c ON p.email = c.note", "another key domain"),
    ("SELECT * FROM patients WHERE email IN (SELECT email FROM contacts)", "subquery"),
    ("SELECT (SELECT ssn FROM patients LIMIT 1)", "subquery"),
    ("INSERT INTO patients (id, ssn) VALUES (1, upper('x'))", "only literals"),
    ("INSERT INTO patients (id, ssn) SELECT id, note FROM contacts", "another column"),
    ("UPDATE patients SET ssn = email", "another column"),
    ("UPDATE patients SET email = email || 'x'", "only literals"),
    ("INSERT INTO patients (id, ssn) VALUES (1, 'a') ON CONFLICT (ssn) DO NOTHING",
     "randomized"),
    ("SELECT * FROM patients WHERE email = $1::int", "cast"),
    ("SELECT * FROM patients WHERE email IS DISTINCT FROM 'a'", "IS DISTINCT"),
    ("SELECT * FROM patients WHERE coalesce(email, 'x') = 'x'", "coalesce"),
    ("SELECT id FROM contacts WHERE EXISTS (SELECT 1 FROM visits WHERE email = 'x') "
     "AND id IN (SELECT id FROM patients)", "outer query"),
    ("COPY patients TO STDOUT", "COPY"),
    ("SELECT (p).ssn FROM patients p WHERE (p).ssn = 'x'", "field selection"),
    ("SELECT row_to_json(p) FROM patients p", "whole-row"),
    ("SELECT * FROM patients WHERE patients::text LIKE '%x%'", "whole-row"),
    ("SELECT 1 FROM patients; SELECT 2", "multi"),
])
def test_refused(sql: str, reason: str) -> None:
    result = plan_statement(sql, parse_rules(_MULTI), extended=False) \
        if reason == "multi" else plan(sql)
    assert result.error is not None, f"allowed: {result.render('7')}"
    assert result.error.sqlstate == "0A000"
    assert reason.lower() in (result.error.message + " " + (result.error.hint or "")).lower(), \
        result.error.message


_MULTI = f"""
version: 1
session: {{multi_statement: allow}}
tables:
  patients: {{scope: tenant}}
encryption:
  master_key: '{"ab" * 32}'
  columns:
    patients.ssn: {{mode: randomized, type: text}}
"""


def test_tables_without_encrypted_columns_are_untouched() -> None:
    result = plan("SELECT * FROM visits WHERE note = $1 ORDER BY note")
    assert result.error is None and result.sealing is None


def test_copy_from_marks_encrypted_fields() -> None:
    result = plan_statement("COPY patients (id, email, ssn) FROM STDIN", RULES)
    assert result.error is None and result.copy_in is not None
    assert [(i, c.column) for i, c in result.copy_in.sealed] == [(1, "email"), (2, "ssn")]
    refused = plan_statement("COPY patients (id, ssn) FROM STDIN WITH (NULL 'x')", RULES)
    assert refused.error is not None and "NULL" in refused.error.message


def test_explain_shows_what_is_encrypted(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(_EXPLAIN_RULES)

    def explain(sql: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "proxy.cli.main", "explain", "--rules",
                               str(rules), "--tenant", "7", sql], capture_output=True,
                              text=True, timeout=60, check=False)

    shown = explain("UPDATE patients SET ssn = $1 WHERE email = 'a@b.c'")
    assert shown.returncode == 0, shown.stderr
    assert "'a@b.c'" not in shown.stdout.splitlines()[0]  # the SQL carries ciphertext
    assert "encrypted literal 'a@b.c' -> public.patients.email (deterministic text, " \
           "searched for under every live key)" in shown.stdout
    assert "encrypted at Bind: $1 -> public.patients.ssn (randomized text, written)" \
        in shown.stdout
    refused = explain("SELECT * FROM patients ORDER BY ssn")
    assert refused.returncode == 1 and "REFUSED 0A000: ORDER BY on encrypted column" \
        in refused.stdout


_EXPLAIN_RULES = f"""
version: 1
tables:
  patients: {{scope: tenant}}
users:
  app: {{identity: token}}
encryption:
  master_key: '{"ab" * 32}'
  columns:
    patients.ssn: {{mode: randomized, type: text}}
    patients.email: {{mode: deterministic, type: text}}
"""


def test_positions_in_shared_templates_are_refused() -> None:
    """A simple-protocol statement is planned with its literals as parameters; a literal
    that is a column position must still be seen as one."""
    engine = Engine(RULES)
    for sql in ("SELECT id, email FROM patients ORDER BY 2",
                "SELECT ssn, count(*) FROM patients GROUP BY 1"):
        plan, _ = engine.plan_query(sql)
        assert plan.error is not None and plan.error.sqlstate == "0A000", sql
    plan, literals = engine.plan_query("SELECT email, count(*) FROM patients GROUP BY 1")
    assert plan.error is None and literals == ("1",)
