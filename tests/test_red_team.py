"""Red-team findings against the rewritten planner, one test per finding.

Each test asserts the secure behaviour (PostgreSQL RLS's answer for tenant 1, or a
refusal, and nothing of another tenant read or changed).

The setup is ``tests/test_attack_classes.py``'s: a proxy in front of the corpus
database with a login bound to tenant 1, ``multi_statement: allow``,
``reset_all: allow``, ``sql_prepare: rewrite``, and a superuser upstream (the floor
off), so the proxy's own enforcement is what is tested.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

import tests.test_attack_classes as attack
from tests.certs import CertFiles
from tests.corpus_harness import CORPUS_DB, CorpusEnv, corpus_proxy
from tests.harness import Database, admin_connect

Env = CorpusEnv


@pytest.fixture(scope="module")
def env(db: Database, certs: CertFiles, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Env]:
    with corpus_proxy(db, certs, attack.RULES, tmp_path_factory.mktemp("red-team"),
                      {attack.LOGIN: attack.PASSWORD}) as corpus:
        yield corpus


def _refused_or_rls(env: Env, sql: str, params: list[Any] | None = None) -> None:
    """A refusal, or RLS's answer; never another tenant's data."""
    attack.assert_like_rls(env, sql, params)


# --- finding 1: functions called in attribute notation skip the function allow-list ---------
#
# ``(x).f`` (and ``t.f`` for a whole-row ``t``) is a call of ``f(x)`` in PostgreSQL, but
# the parser gives an A_Indirection / ColumnRef, not a FuncCall, so
# statements.check_functions and sidechannels never see it: unlisted user functions
# (find_users reads users unscoped), ts_stat (runs SQL from a string), pg_read_file,
# advisory locks and nextval on any sequence all run.

ATTRIBUTE_CALLS = {
    "user-function-reads-all-tenants": "SELECT (('%'::text).find_users).email",
    "ts-stat-runs-sql-from-a-string": (
        "SELECT ((('SELECT to_tsvector(''simple'', email) FROM users')::text).ts_stat).word"),
    "ts-stat-counts-other-tenants": (
        "SELECT count(*) FROM (SELECT (('SELECT to_tsvector(''simple'', email) FROM users')"
        "::text).ts_stat) AS s"),
}


@pytest.mark.parametrize("name", ATTRIBUTE_CALLS)
def test_attribute_notation_function_reads_other_tenants(env: Env, name: str) -> None:
    _refused_or_rls(env, ATTRIBUTE_CALLS[name])


DENIED_IN_ATTRIBUTE_NOTATION = {
    "pg-read-file": "SELECT ('PG_VERSION'::text).pg_read_file",
    "advisory-lock": "SELECT (42::bigint).pg_try_advisory_xact_lock",
    "denied-tables-sequence": "SELECT ('audit_events_id_seq'::regclass).nextval",
}


@pytest.mark.parametrize("name", DENIED_IN_ATTRIBUTE_NOTATION)
def test_attribute_notation_denied_functions_are_refused(env: Env, name: str) -> None:
    try:
        attack.assert_refused(env, DENIED_IN_ATTRIBUTE_NOTATION[name])
    finally:
        asyncio.run(attack._reset_sequences(env.db))


# --- finding 2: composite star expansion shifts the tenant column's value ------------------
#
# splice._check_source (and check_assignments for SET (a, b, ...) = (...)) find the
# tenant column's value by its index in the parse tree's list, but ``(x).*`` in a
# VALUES row, SELECT list or multi-assignment row expands to as many values as x has
# columns (``(ROW()).*`` to none), so the literal checked as the tenant is not the value
# PostgreSQL stores in the tenant column. verify._checked_value accepts the same index.

STAR_SHIFT: dict[str, tuple[str, list[Any] | None]] = {
    "insert-values": ("INSERT INTO orders (total, tenant_id, user_id) "
                      "VALUES ((ROW(5.0, 2)).*, 1, (ROW()).*)", None),
    "insert-values-extended": ("INSERT INTO orders (total, tenant_id, user_id) "
                               "VALUES ((ROW($1::numeric, 2)).*, $2, (ROW()).*)", [5, 1]),
    "insert-select": ("INSERT INTO users (email, tenant_id, name) SELECT (e2).*, 1, (e0).* "
                      "FROM (SELECT 'mallory@globex.test' AS a, 2 AS b) e2, (SELECT) e0", None),
    "update-multi-assign": ("UPDATE orders SET (user_id, tenant_id, total) = "
                            "((ROW(4, 2)).*, 1, (ROW()).*) WHERE orders.id = 1", None),
}


@pytest.mark.parametrize("name", STAR_SHIFT)
def test_star_expansion_cannot_write_another_tenant(env: Env, name: str) -> None:
    sql, params = STAR_SHIFT[name]
    attack.committed(env, sql, params)


# --- finding 3: check_sequences matches sequence names textually ----------------------------
#
# relations.check_sequences compares the raw string with the rules' table names, but
# PostgreSQL reads nextval's argument as a (case-folded, quotable) name or an OID:
# '"audit_events_id_seq"', 'AUDIT_EVENTS_ID_SEQ' and the sequence's OID reach the denied
# table's sequence, which test_attack_classes.test_nextval_on_a_denied_tables_sequence
# means to refuse.


async def _sequence_oid(db: Database) -> int:
    conn = await admin_connect(db, CORPUS_DB)
    try:
        return int(await conn.fetchval("SELECT 'audit_events_id_seq'::regclass::oid::int"))
    finally:
        await conn.close()


@pytest.mark.parametrize("spelling", ["quoted", "upper-case", "oid"])
def test_denied_sequence_under_another_spelling(env: Env, spelling: str) -> None:
    arg = {"quoted": "'\"audit_events_id_seq\"'", "upper-case": "'AUDIT_EVENTS_ID_SEQ'",
           "oid": str(asyncio.run(_sequence_oid(env.db)))}[spelling]
    try:
        attack.assert_refused(env, f"SELECT nextval({arg})")
    finally:
        asyncio.run(attack._reset_sequences(env.db))


# --- finding 4 (fidelity): system columns change whole-row values ------------------------------
#
# When a statement names a system column, splice.Splicer.wrapper adds it to every scoping
# subquery's select list, so the whole-row value of the table (``u``, row_to_json(u),
# ``(u).*``) gains a field RLS never shows.


@pytest.mark.parametrize("sql", [
    "SELECT u FROM users u WHERE u.ctid IS NOT NULL",
    "SELECT row_to_json(o), o.xmin IS NOT NULL FROM orders o",
])
def test_system_column_keeps_whole_rows(env: Env, sql: str) -> None:
    attack.assert_like_rls(env, sql)
