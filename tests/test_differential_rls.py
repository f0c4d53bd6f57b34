"""Differential test: for generated statements over the corpus schema, the
proxy's result for tenant 1 equals PostgreSQL's own result for the original
statement under real row-level-security policies for tenant 1.

Reads compare rows and command tags; writes get ``RETURNING *`` so the rows
they changed (and how) are compared too. Both sides erroring counts as
agreement; the proxy succeeding where RLS errors is a failure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.certs import CertFiles
from tests.corpus_harness import (
    CORPUS,
    CORPUS_DB,
    RLS_ROLE,
    SEQUENCES,
    corpus_settings,
    create_corpus_db,
    rows_equal,
    run_statement,
)
from tests.harness import Database, RunningProxy, proxy_password, proxy_settings, running_proxy
from tests.rawclient import RawClient

pytestmark = pytest.mark.live

TENANT = 1
COLUMNS = {
    "users": ["id", "tenant_id", "email", "name", "ssn"],
    "orders": ["id", "tenant_id", "user_id", "total", "created_at"],
    "order_items": ["id", "tenant_id", "order_id", "sku", "qty"],
    "documents": ["id", "tenant_id"],
    "tenants": ["id", "name"],
    "countries": ["code", "name"],
}
INT_COLUMNS = {"id", "tenant_id", "user_id", "order_id", "qty"}
JOINS = [("users", "orders", "{b}.user_id = {a}.id"), ("orders", "order_items",
                                                       "{b}.order_id = {a}.id"),
         ("users", "documents", "{b}.tenant_id = {a}.tenant_id"),
         ("orders", "users", "{b}.id = {a}.user_id"), ("users", "tenants",
                                                        "{b}.id = {a}.tenant_id")]
STATS: Counter[str] = Counter()


def _pred(alias: str, table: str) -> st.SearchStrategy[str]:
    ints = [c for c in COLUMNS[table] if c in INT_COLUMNS]
    options = [st.just("true"), st.just("1 = 1"),
               st.builds(lambda c: f"{alias}.{c} IS NOT NULL", st.sampled_from(COLUMNS[table]))]
    if ints:
        options += [
            st.builds(lambda c, op, v: f"{alias}.{c} {op} {v}", st.sampled_from(ints),
                      st.sampled_from(["=", "<>", "<", ">=", "<="]), st.integers(0, 9)),
            st.builds(lambda c, vs: f"{alias}.{c} IN ({', '.join(map(str, vs))})",
                      st.sampled_from(ints),
                      st.lists(st.integers(0, 9), min_size=1, max_size=3))]
    simple = st.one_of(*options)
    return st.one_of(simple, st.builds(lambda a, op, b: f"({a} {op} {b})", simple,
                                       st.sampled_from(["AND", "OR"]), simple))


@st.composite
def _from(draw: st.DrawFn) -> tuple[str, list[tuple[str, str]]]:
    """A FROM clause and its (alias, table) items."""
    if draw(st.booleans()):
        a, b, on = draw(st.sampled_from(JOINS))
        kind = draw(st.sampled_from(["JOIN", "LEFT JOIN", "RIGHT JOIN", "FULL JOIN"]))
        return (f"{a} t1 {kind} {b} t2 ON {on.format(a='t1', b='t2')}",
                [("t1", a), ("t2", b)])
    table = draw(st.sampled_from(list(COLUMNS)))
    return f"{table} t1", [("t1", table)]


@st.composite
def selects(draw: st.DrawFn, depth: int = 0) -> str:
    from_sql, items = draw(_from())
    alias, table = draw(st.sampled_from(items))
    shape = draw(st.sampled_from(["rows", "count", "group"]))
    col = draw(st.sampled_from(COLUMNS[table]))
    if shape == "rows":
        select = f"{alias}.{col}"
    elif shape == "count":
        select = "count(*)"
    else:
        select = f"{alias}.{col}, count(*)"
    sql = f"SELECT {select} FROM {from_sql}"
    preds = [draw(_pred(a, t)) for a, t in items if draw(st.booleans())]
    if depth < 1 and draw(st.integers(0, 3)) == 0:
        sub_table = draw(st.sampled_from(["users", "orders", "order_items"]))
        sub_alias, sub_col = "s", "tenant_id" if draw(st.booleans()) else "id"
        kind = draw(st.sampled_from(["IN", "EXISTS", "NOT EXISTS"]))
        inner = f"SELECT {sub_alias}.{sub_col} FROM {sub_table} {sub_alias}"
        if kind == "IN":
            target = "tenant_id" if "tenant_id" in COLUMNS[table] else "id"
            preds.append(f"{alias}.{target} IN ({inner})")
        else:
            preds.append(f"{kind} ({inner} WHERE {sub_alias}.id = {alias}.id)")
    if preds:
        sql += " WHERE " + " AND ".join(preds)
    if shape == "group":
        sql += f" GROUP BY {alias}.{col}"
    if depth < 1:
        wrap = draw(st.integers(0, 5))
        if wrap == 0:
            op = draw(st.sampled_from(["UNION", "UNION ALL", "EXCEPT", "INTERSECT"]))
            sql = f"SELECT count(*) FROM (({sql}) {op} ({sql.replace('t1', 'u1')})) x"
        elif wrap == 1:
            name = draw(st.sampled_from(["c", "users", "orders"]))
            sql = f"WITH {name} AS ({sql}) SELECT * FROM {name}"
        elif wrap == 2:
            sql = f"SELECT count(*) FROM ({sql}) AS d"
    return sql


@st.composite
def writes(draw: st.DrawFn) -> str:
    table = draw(st.sampled_from(["users", "orders", "order_items", "documents"]))
    kind = draw(st.sampled_from(["update", "delete", "insert"]))
    if kind == "update":
        col = {"users": "name", "orders": "total", "order_items": "qty",
               "documents": "body"}[table]
        value = {"users": "'x'", "orders": "0", "order_items": "7",
                 "documents": "'{}'"}[table]
        return f"UPDATE {table} t1 SET {col} = {value} WHERE {draw(_pred('t1', table))} " \
               "RETURNING *"
    if kind == "delete":
        if table in ("users", "orders"):
            table = "order_items"  # avoid FK failures that say nothing about isolation
        return f"DELETE FROM {table} t1 WHERE {draw(_pred('t1', table))} RETURNING *"
    tenant = draw(st.sampled_from([TENANT, TENANT, 2]))
    if table == "users":
        return (f"INSERT INTO users (tenant_id, email, name) VALUES ({tenant}, "
                f"'gen{draw(st.integers(0, 999))}@x.test', 'gen') RETURNING *")
    if table == "documents":
        return f"INSERT INTO documents (tenant_id, body) VALUES ({tenant}, '{{}}') RETURNING *"
    if table == "orders":
        return (f"INSERT INTO orders (tenant_id, user_id, total, created_at) VALUES "
                f"({tenant}, NULL, 5, '2024-01-01') RETURNING *")
    return ("INSERT INTO order_items (tenant_id, order_id, sku, qty) SELECT tenant_id, id, "
            f"'gen', 1 FROM orders WHERE {draw(_pred('orders', 'orders'))} RETURNING *")


@pytest.fixture(scope="module")
def diff_env(db: Database, certs: CertFiles) -> Iterator[tuple[RunningProxy, RawClient,
                                                                 psycopg.Connection]]:
    create_corpus_db(db)
    settings = corpus_settings(proxy_settings(db, certs), CORPUS / "rules.yaml",
                               {"corpus_app": proxy_password("corpus_app")})
    with running_proxy(settings) as proxy, \
            psycopg.connect(db.dsn(db.superuser, CORPUS_DB), autocommit=True) as direct:
        client = RawClient.connect(proxy.port)
        client.login("corpus_app", proxy_password("corpus_app"), CORPUS_DB,
                     options=f"-c tenant_proxy.tenant={TENANT} -c TimeZone=UTC")
        direct.execute("SET TimeZone = 'UTC'")
        yield proxy, client, direct
        client.close()
    print(f"\ndifferential RLS test: {dict(STATS)}")


def _rls(direct: psycopg.Connection, sql: str) -> tuple[str | None, list, str | None]:
    """(error sqlstate, rows, command tag) of ``sql`` under RLS for the tenant."""
    pg = direct.pgconn
    pg.exec_(b"BEGIN")
    pg.exec_(f"SET LOCAL ROLE {RLS_ROLE}; SET LOCAL rls.tenant = '{TENANT}'".encode())
    result = pg.exec_(sql.encode())
    pg.exec_(b"ROLLBACK")
    error = result.error_field(psycopg.pq.DiagnosticField.SQLSTATE)
    if error:
        return error.decode(), [], None
    rows = [[None if result.get_value(r, c) is None else result.get_value(r, c).decode()
             for c in range(result.nfields)] for r in range(result.ntuples)]
    return None, rows, (result.command_status or b"").decode()


def _check(env: tuple[RunningProxy, RawClient, psycopg.Connection], sql: str) -> None:
    _, client, direct = env
    direct.execute("SELECT " + ", ".join(f"setval('{s}', 100, false)" for s in SEQUENCES))
    error, rows, command = _rls(direct, sql)
    direct.execute("SELECT " + ", ".join(f"setval('{s}', 100, false)" for s in SEQUENCES))
    assert run_statement(client, "BEGIN").error is None
    out = run_statement(client, sql)
    run_statement(client, "ROLLBACK")
    if error is not None:
        STATS["both errored" if out.refused else "proxy ran, RLS errored"] += 1
        assert out.refused, f"RLS raised {error} but the proxy ran it: {out.summary()}"
        return
    if out.refused:
        assert out.error is not None
        assert out.error.sqlstate in ("42501", "0A000"), out.summary()
        STATS[f"refused {out.error.sqlstate}"] += 1
        return
    STATS["same result"] += 1
    assert out.command == command, sql
    assert rows_equal(out.rows, rows, ordered=False), sql


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(selects())
def test_reads_match_rls(diff_env: tuple[RunningProxy, RawClient, psycopg.Connection],
                         sql: str) -> None:
    _check(diff_env, sql)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(writes())
def test_writes_match_rls(diff_env: tuple[RunningProxy, RawClient, psycopg.Connection],
                          sql: str) -> None:
    _check(diff_env, sql)


def test_refusals_are_rare() -> None:
    """The generator stays inside what the engine supports; refusals there are bugs."""
    total = sum(STATS.values())
    refused = sum(v for k, v in STATS.items() if k.startswith("refused"))
    assert total >= 200 and refused <= total * 0.02, dict(STATS)
