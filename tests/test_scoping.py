"""The planner's isolation passes without a server: name resolution, minimal
edits, and the verifier as the safety net under the rewriter."""

from __future__ import annotations

import re

import pglast
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.policy.rules import parse_rules
from proxy.sql.engine import plan_statement
from proxy.sql.scope import references
from proxy.sql.splice import TENANT_SENTINEL
from proxy.sql.tokens import Tokens
from proxy.sql.verify import VerificationFailed, verify

RULES = parse_rules("""
version: 1
tenant: {column: tenant_id, type: integer}
tables:
  public.users: {scope: tenant}
  public.orders: {scope: tenant}
  public.countries: {scope: shared, writable: false}
  public.flags: {scope: shared, writable: true}
  public.audit: {scope: deny}
session: {multi_statement: allow, sql_prepare: rewrite}
users:
  app: {identity: trusted}
""")


def roles(sql: str) -> list[tuple[str, str]]:
    return [r.key for r in references(pglast.parse_sql(sql)[0].stmt)]


def sent(sql: str) -> str:
    plan = plan_statement(sql, RULES)
    assert plan.error is None, plan.error.message
    return plan.render("7") or sql


def refused(sql: str) -> str:
    plan = plan_statement(sql, RULES)
    assert plan.error is not None, f"accepted: {plan.render('7')}"
    return plan.error.sqlstate


# --- name resolution ---------------------------------------------------------------

def test_dml_targets_are_never_ctes() -> None:
    assert roles("WITH audit AS (SELECT 1) UPDATE audit SET x = 1 RETURNING *") == [
        ("target", "public.audit")]
    assert roles("WITH users AS (SELECT 1) DELETE FROM users") == [("target", "public.users")]
    assert refused("WITH audit AS (SELECT 1) UPDATE audit SET x = 1 RETURNING *") == "42501"


def test_cte_visibility_follows_with_and_recursive() -> None:
    # Without RECURSIVE a CTE does not see itself or later CTEs: those names are tables.
    assert roles("WITH a AS (SELECT * FROM b), b AS (SELECT * FROM users) SELECT * FROM a")\
        == [("read", "public.b"), ("read", "public.users"), ("cte", "a")]
    assert roles("WITH RECURSIVE a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a")\
        == [("cte", "b"), ("cte", "a")]
    assert roles("WITH users AS (SELECT * FROM users) SELECT * FROM users") == [
        ("read", "public.users"), ("cte", "users")]


def test_inner_with_shadows_and_does_not_leak_out() -> None:
    assert roles("SELECT * FROM (WITH users AS (SELECT 1) SELECT * FROM users) s, users") == [
        ("cte", "users"), ("read", "public.users")]


def test_schema_resolution() -> None:
    assert roles("SELECT * FROM pg_class, public.users, information_schema.tables") == [
        ("read", "pg_catalog.pg_class"), ("read", "public.users"),
        ("read", "information_schema.tables")]


def test_writes_are_checked_wherever_the_dml_stands() -> None:
    assert refused("WITH w AS (UPDATE countries SET name = 'x' RETURNING 1) SELECT * FROM w")\
        == "42501"
    assert refused("WITH w AS (DELETE FROM countries RETURNING 1) SELECT count(*) FROM w")\
        == "42501"
    out = sent("WITH w AS (DELETE FROM orders WHERE id = 1 RETURNING id) SELECT * FROM w")
    assert '"orders"."tenant_id" = 7 AND (id = 1)' in out


# --- minimal edits -------------------------------------------------------------------

def test_output_columns_spellings_and_comments_stay_as_written() -> None:
    sql = "SELECT substr(name, 1, 2), NOW() /* c */ FROM users u -- trailing"
    out = sent(sql)
    assert out.startswith("SELECT substr(name, 1, 2), NOW() /* c */ FROM (SELECT * FROM")
    assert out.endswith(") u -- trailing")


def test_copy_options_are_never_rendered_again() -> None:
    evil = 'COPY orders TO STDOUT WITH ("format csv); SELECT * FROM users; --" true)'
    out = sent(evil)
    assert out.endswith('TO STDOUT WITH ("format csv); SELECT * FROM users; --" true)')
    assert len(pglast.parse_sql(out)) == 1


def _client_tokens(sql: str) -> list[str]:
    toks = Tokens(sql)
    return [sql[t.start:t.end + 1] for t in toks.items]


TABLES = ["users", "orders", "countries", "flags"]
ALIASES = ["t1", "t2", "x"]


@st.composite
def selects(draw: st.DrawFn, depth: int = 0) -> str:
    table = draw(st.sampled_from(TABLES))
    alias = draw(st.sampled_from(ALIASES))
    cond = draw(st.sampled_from([f"{alias}.id = 1", f"{alias}.id > $1", "true",
                                 f"{alias}.id IN (1, 2)", f"lower({alias}.name) = 'a'"]))
    if depth < 2 and draw(st.booleans()):
        inner = draw(selects(depth + 1))
        cond += draw(st.sampled_from([f" AND EXISTS ({inner})", f" OR {alias}.id IN "
                                      f"(SELECT id FROM ({inner}) s{depth})"]))
    source = f"{table} {alias}"
    if depth < 2 and draw(st.booleans()):
        other = draw(st.sampled_from(TABLES))
        kind = draw(st.sampled_from(["JOIN", "LEFT JOIN", "FULL JOIN"]))
        source += f" {kind} {other} o{depth} ON o{depth}.id = {alias}.id"
    sql = f"SELECT {alias}.id AS \"Id\", count(*) FROM {source} WHERE {cond} GROUP BY 1"
    if depth == 0 and draw(st.booleans()):
        sql = f"WITH c AS ({sql}) SELECT * FROM c UNION ALL {sql}"
    return sql


@st.composite
def statements(draw: st.DrawFn) -> str:
    select = draw(selects())
    table = draw(st.sampled_from(["users", "orders", "flags"]))
    return draw(st.sampled_from([
        select,
        f"UPDATE {table} SET name = 'n' WHERE id = 1 AND id IN ({select.split(' UNION')[0]})",
        f"DELETE FROM {table} WHERE EXISTS ({select.split(' UNION')[0]}) RETURNING id",
        f"INSERT INTO {table} (id, name) SELECT 1, 'x' FROM ({select}) s",
        f"WITH w AS (UPDATE {table} SET name = 'n' RETURNING id) SELECT * FROM w, "
        f"({select}) s",
    ]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(statements())
def test_edits_only_insert_and_every_tenant_reference_is_verified(sql: str) -> None:
    """The client's tokens all reach the server in order (only relation names of
    tenant tables move into the scoping subquery), and what is sent verifies."""
    plan = plan_statement(sql, RULES)
    assert plan.error is None, plan.error.message
    text = TENANT_SENTINEL.join(plan.parts) if plan.parts else sql
    verify([r.stmt for r in pglast.parse_sql(sql)], text, RULES)
    out = iter(_client_tokens(text))
    for token in _client_tokens(sql):
        if token in ("users", "orders"):
            continue
        assert any(token == o for o in out), f"{token!r} missing from {text}"


# --- the verifier as the safety net --------------------------------------------------

SAMPLES = [
    "SELECT u.id FROM users u JOIN orders o ON o.user_id = u.id WHERE u.id = 1",
    "UPDATE orders SET total = 1 WHERE id = 1 AND EXISTS (SELECT 1 FROM users)",
    "DELETE FROM orders USING users WHERE orders.user_id = users.id",
    "INSERT INTO orders (user_id, total) VALUES (1, 2) ON CONFLICT (id) DO UPDATE SET "
    "total = 3 WHERE orders.total > 1",
    "INSERT INTO orders (tenant_id, user_id) SELECT u.tenant_id, u.id FROM users u",
    "WITH w AS (UPDATE orders SET total = 0 RETURNING id) SELECT * FROM w, users",
    "COPY orders (id) TO STDOUT",
]

#: Ways a buggy rewriter could get it wrong; each must fail verification.
MUTATIONS = [
    (r'"_tp"\."tenant_id" = __tenant_proxy_tenant__', '"_tp"."tenant_id" = 2'),
    (r'"_tp"\."tenant_id" = __tenant_proxy_tenant__', '"_tp"."tenant_id" > 0'),
    (r'WHERE "_tp"\."tenant_id" = __tenant_proxy_tenant__', 'WHERE true'),
    (r'AS "_tp" WHERE', 'AS "_tq" WHERE'),
    (r'\(SELECT \* FROM "public"\."users" AS "_tp" WHERE [^)]*\)', '"public"."users"'),
    (r'\(SELECT \* FROM "public"\."orders" AS "_tp" WHERE [^)]*\)', '"public"."orders"'),
    (r'"orders"\."tenant_id" = __tenant_proxy_tenant__ AND', ''),
    (r'"orders"\."tenant_id" = __tenant_proxy_tenant__', '"orders"."tenant_id" <> 0'),
    (r'CASE WHEN "orders"\."tenant_id" = __tenant_proxy_tenant__ THEN true', 'CASE WHEN true'
                                                                            ' THEN true'),
    (r'CASE WHEN u\.tenant_id = __tenant_proxy_tenant__', 'CASE WHEN true'),
    (r'WITH w AS \(UPDATE orders', 'WITH w AS (UPDATE countries'),
    (r'AS "users"', 'AS "users" CROSS JOIN "public"."users"'),
    (r'TO STDOUT', "TO '/tmp/x'"),
    (r'$', '; SELECT * FROM "public"."users"'),
]


def test_every_sample_verifies_unmutated() -> None:
    for sql in SAMPLES:
        plan = plan_statement(sql, RULES)
        assert plan.error is None and plan.parts is not None, sql
        verify([r.stmt for r in pglast.parse_sql(sql)], TENANT_SENTINEL.join(plan.parts),
               RULES)


@pytest.mark.parametrize(("pattern", "replacement"), MUTATIONS)
def test_a_broken_rewrite_is_never_sent(pattern: str, replacement: str) -> None:
    mutated_any = False
    for sql in SAMPLES:
        plan = plan_statement(sql, RULES)
        assert plan.parts is not None
        good = TENANT_SENTINEL.join(plan.parts)
        bad = re.sub(pattern, replacement, good, count=1)
        if bad == good:
            continue
        mutated_any = True
        with pytest.raises(VerificationFailed):
            verify([r.stmt for r in pglast.parse_sql(sql)], bad, RULES)
    assert mutated_any, f"no sample contains {pattern!r}"


def test_reserved_names_are_refused_in_every_spelling() -> None:
    for sql in ("SELECT __TENANT_PROXY_TENANT__ FROM users",
                'SELECT U&"\\005f_tenant_proxy_tenant__" FROM users',
                "SELECT '__tenant_proxy_sealed_1__'"):
        assert refused(sql) == "42501"


def test_conditions_that_can_fail_fence_the_scoping_subquery() -> None:
    assert "OFFSET 0" not in sent("SELECT * FROM users WHERE id = $1")
    assert "OFFSET 0" in sent("SELECT 1 FROM users WHERE has_schema_privilege(ssn, 'USAGE')")
    assert "OFFSET 0" in sent("SELECT 1 FROM users u JOIN orders o ON 1 / (o.id - 2) = 0")
    out = sent("UPDATE users SET name = 'x' WHERE id = 1 AND ssn::int > 0")
    assert '"users"."tenant_id" = 7 AND CASE WHEN "users"."tenant_id" = 7 THEN (' in out


def test_copy_from_options_that_change_null_reach_the_row_check() -> None:
    plan = plan_statement("COPY orders (tenant_id, total) FROM STDIN WITH (NULL '7')", RULES)
    assert plan.copy_in is not None and plan.copy_in.null == "7"
    assert plan_statement("COPY orders (tenant_id, total) FROM STDIN", RULES).copy_in.null \
        is None
    for option in ("FORCE_NULL (tenant_id)", "FORCE_NOT_NULL (total)"):
        assert refused(f"COPY orders (tenant_id, total) FROM STDIN WITH (FORMAT csv, {option})")\
            == "0A000"


def test_writes_that_keep_the_tenant_are_accepted_as_rls_accepts_them() -> None:
    assert sent("UPDATE users SET tenant_id = tenant_id") == \
        'UPDATE users SET tenant_id = tenant_id WHERE "users"."tenant_id" = 7'
    assert sent("INSERT INTO orders DEFAULT VALUES RETURNING id") == \
        'INSERT INTO orders ("tenant_id") VALUES (7) RETURNING id'
    assert sent("INSERT INTO orders (tenant_id, total) VALUES (DEFAULT, 5), (7, DEFAULT)") == \
        "INSERT INTO orders (tenant_id, total) VALUES (7, 5), (7, DEFAULT)"
    assert "SET tenant_id = EXCLUDED.tenant_id WHERE CASE" in sent(
        "INSERT INTO orders (id, tenant_id) VALUES (1, 7) ON CONFLICT (id) DO UPDATE SET "
        "tenant_id = EXCLUDED.tenant_id")
    for sql in ("UPDATE users u SET tenant_id = x.tenant_id FROM users x",
                "UPDATE users SET tenant_id = id", "UPDATE users SET tenant_id = tenant_id + 1"):
        assert refused(sql) == "42501"


@pytest.mark.parametrize("sql", [
    "INSERT INTO orders (user_id) SELECT id FROM users UNION SELECT 1",
    "INSERT INTO orders (user_id, total) SELECT id, 1 FROM users UNION SELECT 1, 2",
    "INSERT INTO orders (user_id) TABLE users",
    "INSERT INTO orders (user_id) WITH u AS (SELECT id FROM users) SELECT id FROM u",
])
def test_inserts_whose_source_is_wrapped_fill_the_last_column(sql: str) -> None:
    """``SELECT *, <tenant> FROM (<source>)``: PostgreSQL needs one value per column,
    so the tenant is the appended last column whatever ``*`` expands to."""
    out = sent(sql)
    assert '"tenant_id") SELECT *, 7 FROM (' in out
    bad = out.replace("SELECT *, 7 FROM (", "SELECT 7, * FROM (")
    template = bad.replace("SELECT 7, *", f"SELECT {TENANT_SENTINEL}, *")
    with pytest.raises(VerificationFailed):
        verify([r.stmt for r in pglast.parse_sql(sql)], template.replace(
            "= 7", f"= {TENANT_SENTINEL}"), RULES)


def test_a_parenthesized_select_source_gets_the_tenant_in_place() -> None:
    """Not wrapped: a subquery would type the source's unknown literals as text."""
    assert sent("INSERT INTO orders (note) (SELECT 'x' FROM users)").startswith(
        """INSERT INTO orders (note, "tenant_id") (SELECT 'x', 7 FROM (SELECT * FROM""")
