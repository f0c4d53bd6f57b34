"""Issue 12's bypass classes 1-11, each with the issue's example and the variants an
attacker tries next, through psycopg, asyncpg and raw protocol messages.

The proxy is set up as the issue's attacker found it: a role bound to tenant 1,
``multi_statement: allow``, ``reset_all: allow``, ``sql_prepare: rewrite``, and
the upstream role a superuser. Outcomes are compared with PostgreSQL's own
row-level security for tenant 1 (role rls_reader, ``rls.tenant = 1``) where RLS
defines the answer; writes are checked by a digest of every row that is not
tenant 1's. A refusal (42501/0A000) is always an acceptable outcome for an attack.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import asyncpg
import psycopg
import pytest

from proxy.wire import backend as be
from proxy.wire import frontend as fe
from tests.certs import CertFiles
from tests.corpus_harness import (
    CORPUS_DB,
    CORPUS_TABLE_RULES,
    RLS_ROLE,
    CorpusEnv,
    Outcome,
    collect,
    corpus_proxy,
    corpus_settings,
    digest,
    recreate_corpus_db,
    reset_sequences,
    rows_equal,
    send_statement,
)
from tests.harness import Database, admin_connect, proxy_settings, running_proxy
from tests.rawclient import RawClient

LOGIN, PASSWORD = "attacker", "attacker-pw"
RULES = CORPUS_TABLE_RULES + f"""
session: {{multi_statement: allow, reset_all: allow, sql_prepare: rewrite}}
users:
  {LOGIN}: {{identity: bound, tenant: 1}}
"""
#: Values only tenants 2 and 3 (or the denied table) hold.
SECRETS = ("@globex.test", "@initech.test", "222-22-", "333-33-", "g-key", "i-key", "Globex",
           "TPS report", "globex", "initech", "999.99", "1500.00", "SKU-X", "SKU-Z", "Dave",
           "Grace", '"tenant": 2', '"tenant": 3')
REFUSALS = ("42501", "0A000")


Env = CorpusEnv


@pytest.fixture(scope="module")
def env(db: Database, certs: CertFiles, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Env]:
    with corpus_proxy(db, certs, RULES, tmp_path_factory.mktemp("attack"),
                      {LOGIN: PASSWORD}) as corpus:
        yield corpus


# --- clients ------------------------------------------------------------------------


@contextmanager
def raw(env: Env) -> Iterator[RawClient]:
    client = RawClient.connect(env.proxy.port)
    seen = client.login(LOGIN, PASSWORD, CORPUS_DB)
    assert not any(isinstance(m, be.ErrorResponse) for m in seen), seen
    try:
        yield client
    finally:
        client.close()


@contextmanager
def rls(env: Env) -> Iterator[RawClient]:
    """PostgreSQL itself, as the RLS role for tenant 1."""
    client = RawClient.connect(env.db.port)
    client.login(env.db.superuser, env.db.superuser_password or "", CORPUS_DB)
    client.query(f"SET ROLE {RLS_ROLE}; SET rls.tenant = '1'")
    try:
        yield client
    finally:
        client.close()


def dsn(env: Env) -> str:
    return f"postgresql://{LOGIN}:{PASSWORD}@127.0.0.1:{env.proxy.port}/{CORPUS_DB}"


def exchange(client: RawClient, sql: str, params: list[Any] | None = None,
             copy_data: list[str] | None = None) -> list[be.BackendMessage]:
    """One statement, simple protocol (or extended with text parameters), every
    message up to ReadyForQuery; each CopyInResponse gets the next data item."""
    send_statement(client, sql, params)
    return drive(client, list(copy_data or []))


def drive(client: RawClient, copy_data: list[str]) -> list[be.BackendMessage]:
    messages: list[be.BackendMessage] = []
    while (msg := client.recv()) is not None:
        messages.append(msg)
        if isinstance(msg, be.CopyInResponse):
            chunk = copy_data.pop(0) if copy_data else ""
            client.send(fe.CopyData(chunk.encode()), fe.CopyDone())
        if isinstance(msg, be.ReadyForQuery):
            break
    return messages


def text_of(messages: list[be.BackendMessage]) -> str:
    """Everything a client could read: rows, COPY data, error and notice text."""
    parts = []
    for m in messages:
        if isinstance(m, be.DataRow):
            parts += [v.decode(errors="replace") for v in m.values if v is not None]
        elif isinstance(m, be.CopyData):
            parts.append(m.data.decode(errors="replace"))
        elif isinstance(m, be.ErrorResponse):
            parts.append(repr(m))
    return "\n".join(parts)


def assert_no_leak(text: str) -> None:
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"other tenants' data reached the client: {leaked}: {text[:400]}"


def in_transaction(client: RawClient, sql: str, params: list[Any] | None = None,
                   copy_data: list[str] | None = None) -> tuple[Outcome, str]:
    client.query("BEGIN")
    messages = exchange(client, sql, params, copy_data)
    client.query("ROLLBACK")
    return collect(messages), text_of(messages)


def assert_like_rls(env: Env, sql: str, params: list[Any] | None = None) -> None:
    """Refused, or exactly PostgreSQL RLS's outcome for tenant 1: command tag, columns,
    rows, SQLSTATE class; and nothing of another tenant either way."""
    with raw(env) as client:
        got, text = in_transaction(client, sql, params)
    assert_no_leak(text)
    with rls(env) as client:
        want, _ = in_transaction(client, sql, params)
    if got.error is not None and got.error.sqlstate in REFUSALS and (
            want.error is None or want.error.sqlstate[:2] != "42"):
        return  # refused where RLS would run it: safe
    if want.error is not None:
        assert got.error is not None, f"RLS fails ({want.summary()}), proxy: {got.summary()}"
        assert got.error.sqlstate[:2] == want.error.sqlstate[:2], \
            f"RLS {want.summary()} / proxy {got.summary()}"
        return
    assert got.error is None, f"RLS {want.summary()} / proxy {got.summary()}"
    assert (got.command, got.columns) == (want.command, want.columns), \
        f"RLS {want.command} {want.columns} / proxy {got.command} {got.columns}"
    assert rows_equal(got.rows, want.rows, ordered=False), \
        f"RLS {want.rows} / proxy {got.rows}"


def assert_refused(env: Env, sql: str, params: list[Any] | None = None) -> None:
    with raw(env) as client:
        got, text = in_transaction(client, sql, params)
    assert_no_leak(text)
    assert got.error is not None and got.error.sqlstate in REFUSALS, got.summary()


# --- the database ------------------------------------------------------------------------


async def _digests(db: Database) -> tuple[str, str]:
    conn = await admin_connect(db, CORPUS_DB)
    try:
        return await digest(conn, tenant=1), await digest(conn)
    finally:
        await conn.close()


@contextmanager
def others_unchanged(env: Env) -> Iterator[None]:
    """The block may change tenant 1's rows only; the database is rebuilt after any
    change so the next test starts from the seed."""
    others, everything = asyncio.run(_digests(env.db))
    try:
        yield
    finally:
        others_after, everything_after = asyncio.run(_digests(env.db))
        if everything_after != everything:
            asyncio.run(recreate_corpus_db(env.db))
        else:
            asyncio.run(_reset_sequences(env.db))
    assert others_after == others, "rows of other tenants, shared or denied tables changed"


async def _reset_sequences(db: Database) -> None:
    conn = await admin_connect(db, CORPUS_DB)
    try:
        await reset_sequences(conn)
    finally:
        await conn.close()


def committed(env: Env, sql: str, params: list[Any] | None = None,
              copy_data: list[str] | None = None) -> None:
    """Run in autocommit; nothing outside tenant 1 may change or be seen."""
    with others_unchanged(env), raw(env) as client:
        assert_no_leak(text_of(exchange(client, sql, params, copy_data)))


# --- class 1: SQL injection through rebuilt COPY ---------------------------------------------

CLASS1 = {
    "issue-option-name": ('COPY orders TO STDOUT WITH ("format csv); SELECT id, tenant_id, '
                          'email, ssn FROM users; --" true)', None),
    "force-quote-element": ('COPY orders TO STDOUT WITH (FORMAT csv, FORCE_QUOTE ("id"") TO '
                            'STDOUT; SELECT email, ssn FROM users; --"))', None),
    "copy-from-column-name": ('COPY orders ("total"") FROM STDIN; SELECT email, ssn FROM users;'
                              ' --") FROM STDIN', [""]),
    "copy-from-option-name": ('COPY orders (total) FROM STDIN WITH ("delimiter \',\'); SELECT '
                              'email, ssn FROM users; --" true)', [""]),
    "force-not-null-element": ('COPY orders (total) FROM STDIN WITH (FORMAT csv, FORCE_NOT_NULL'
                               ' ("total"") FROM STDIN; SELECT ssn FROM users; --"))', [""]),
    "option-value-quote": ("COPY orders TO STDOUT WITH (FORMAT csv, NULL 'x''); SELECT ssn "
                           "FROM users; --')", None),
    "copy-query-cte": ("COPY (WITH users AS (SELECT 1 AS one) SELECT * FROM users) TO STDOUT",
                       None),
}


@pytest.mark.parametrize("name", CLASS1)
def test_class1_copy_injection(env: Env, name: str) -> None:
    sql, data = CLASS1[name]
    committed(env, sql, copy_data=data)


def test_class1_copy_injection_extended_and_psycopg(env: Env) -> None:
    sql = CLASS1["issue-option-name"][0]
    committed(env, sql, params=[])
    with others_unchanged(env), psycopg.connect(dsn(env), autocommit=True) as conn:
        out = b""
        try:
            with conn.cursor().copy(sql) as copy:
                out = b"".join(bytes(chunk) for chunk in copy)
        except psycopg.Error as exc:
            out = str(exc).encode()
        assert_no_leak(out.decode())


# --- class 2: a CTE named like a DML target ------------------------------------------------

CLASS2_REFUSED = {
    "issue": "WITH audit_events AS (SELECT 1) UPDATE audit_events SET actor = actor RETURNING *",
    "pg-authid": "WITH pg_authid AS (SELECT 1) UPDATE pg_authid SET rolname = rolname "
                 "RETURNING rolname, rolpassword",
    "delete-read-only": "WITH countries AS (SELECT 1) DELETE FROM countries RETURNING *",
    "insert-read-only": "WITH countries AS (SELECT 1) INSERT INTO countries VALUES ('XX', 'x') "
                        "RETURNING *",
    "quoted": 'WITH "audit_events" AS (SELECT 1) UPDATE "audit_events" SET actor = actor '
              "RETURNING detail",
    "recursive": "WITH RECURSIVE audit_events AS (SELECT 1 UNION ALL SELECT 1 FROM audit_events"
                 " WHERE false) DELETE FROM audit_events RETURNING *",
    "inside-cte": "WITH x AS (WITH audit_events AS (SELECT 1) UPDATE audit_events SET actor = "
                  "actor RETURNING actor, detail) SELECT * FROM x",
    "pg-class": "WITH pg_class AS (SELECT 1) UPDATE pg_class SET relname = relname "
                "RETURNING reltuples",
}


@pytest.mark.parametrize("name", CLASS2_REFUSED)
def test_class2_cte_named_like_target(env: Env, name: str) -> None:
    with others_unchanged(env):
        assert_refused(env, CLASS2_REFUSED[name])


def test_class2_extended_protocol(env: Env) -> None:
    assert_refused(env, "WITH audit_events AS (SELECT $1::int) UPDATE audit_events SET "
                        "actor = actor RETURNING *", [1])


def test_class2_tenant_table_target(env: Env) -> None:
    assert_like_rls(env, "WITH users AS (SELECT 1) UPDATE users SET name = name RETURNING email")


# --- class 3: subqueries in the WHERE of UPDATE, DELETE, ON CONFLICT ----------------------------

CLASS3 = {
    "issue": ("UPDATE users u SET name = name WHERE id = 1 AND EXISTS (SELECT 1 FROM users u2 "
              "WHERE u2.tenant_id = 2)", None),
    "delete-scalar-count": ("DELETE FROM orders WHERE id = 1 AND (SELECT count(*) FROM users) > 3",
                            None),
    "on-conflict-where": ("INSERT INTO users (id, tenant_id, email) VALUES (1, 1, "
                          "'alice@acme.test') ON CONFLICT (id) DO UPDATE SET name = excluded.name"
                          " WHERE EXISTS (SELECT 1 FROM users WHERE tenant_id = 2)", None),
    "in-set-operation": ("UPDATE orders SET total = total WHERE id = 1 AND 4 IN (SELECT id FROM "
                         "users UNION SELECT -1)", None),
    "nested-cte": ("UPDATE users SET name = name WHERE id = 1 AND EXISTS (WITH x AS (SELECT * "
                   "FROM users WHERE ssn LIKE '222%') SELECT 1 FROM x)", None),
    "lateral": ("DELETE FROM orders WHERE id = 2 AND EXISTS (SELECT 1 FROM countries c, LATERAL "
                "(SELECT 1 FROM users u WHERE u.tenant_id = 3 AND c.code = 'US') s)", None),
    "writable-cte": ("WITH w AS (UPDATE users SET name = name WHERE id = 1 AND EXISTS (SELECT 1 "
                     "FROM users u2 WHERE u2.tenant_id = 2) RETURNING 1) SELECT count(*) FROM w",
                     None),
    "correlated": ("UPDATE users u SET name = name WHERE id = 1 AND EXISTS (SELECT 1 FROM orders o"
                   " WHERE o.user_id = 4)", None),
    "delete-using": ("DELETE FROM orders o USING countries c WHERE c.code = 'US' AND o.id = 1 AND "
                     "EXISTS (SELECT 1 FROM documents d WHERE d.body ? 'secret')", None),
    "extended": ("UPDATE users SET name = name WHERE id = $1 AND EXISTS (SELECT 1 FROM users "
                 "WHERE ssn = $2)", [1, "222-22-1111"]),
    "select-control": ("SELECT id FROM users WHERE EXISTS (SELECT 1 FROM users u2 WHERE "
                       "u2.tenant_id = 2)", None),
    "returning-control": ("UPDATE users SET name = name WHERE id = 1 RETURNING (SELECT count(*) "
                          "FROM users)", None),
}


@pytest.mark.parametrize("name", CLASS3)
def test_class3_dml_where_subqueries(env: Env, name: str) -> None:
    sql, params = CLASS3[name]
    assert_like_rls(env, sql, params)


def test_class3_asyncpg(env: Env) -> None:
    async def go() -> str:
        conn = await asyncpg.connect(dsn(env))
        try:
            async with conn.transaction():
                status = await conn.execute(
                    "UPDATE users SET name = name WHERE id = 1 AND EXISTS (SELECT 1 FROM users "
                    "WHERE tenant_id = $1)", 2)
                raise _Rollback(status)
        except _Rollback as done:
            return str(done)
        finally:
            await conn.close()

    assert asyncio.run(go()) == "UPDATE 0"


class _Rollback(Exception):
    pass


# --- class 4: data-modifying CTEs on read-only and denied tables ------------------------------

CLASS4 = {
    "issue": "WITH w AS (UPDATE countries SET name = 'x' WHERE code = 'US' RETURNING 1) "
             "SELECT count(*) FROM w",
    "delete": "WITH w AS (DELETE FROM countries WHERE code = 'FR' RETURNING 1) "
              "SELECT count(*) FROM w",
    "insert": "WITH w AS (INSERT INTO countries VALUES ('XX', 'Nowhere') RETURNING 1) "
              "SELECT count(*) FROM w",
    "denied-table": "WITH w AS (DELETE FROM audit_events RETURNING *) SELECT * FROM w",
    "tenant-read-only": "WITH w AS (UPDATE tenants SET name = 'pwned' RETURNING id) "
                        "SELECT * FROM w",
    "under-update": "WITH w AS (UPDATE countries SET name = 'x' WHERE code = 'US' RETURNING 1) "
                    "UPDATE orders SET total = total WHERE id = 1",
    "under-insert": "WITH w AS (DELETE FROM countries WHERE code = 'JP' RETURNING code) "
                    "INSERT INTO orders (total) SELECT 1 FROM w",
    "qualified": 'WITH w AS (UPDATE "public"."countries" SET name = \'x\' RETURNING 1) SELECT 1',
    "second-statement": "SELECT 1; WITH w AS (UPDATE countries SET name = 'x' RETURNING 1) "
                        "SELECT count(*) FROM w",
}


@pytest.mark.parametrize("name", CLASS4)
def test_class4_writable_cte_on_read_only(env: Env, name: str) -> None:
    with others_unchanged(env), raw(env) as client:
        messages = exchange(client, CLASS4[name])
        assert_no_leak(text_of(messages))
        out = collect(messages)
        assert out.error is not None and out.error.sqlstate in REFUSALS, out.summary()


def test_class4_extended_and_psycopg(env: Env) -> None:
    committed(env, "WITH w AS (UPDATE countries SET name = $1 WHERE code = 'US' RETURNING 1) "
                   "SELECT count(*) FROM w", params=["x"])
    with others_unchanged(env), psycopg.connect(dsn(env), autocommit=True) as conn, \
            pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("WITH w AS (DELETE FROM countries RETURNING 1) SELECT count(*) FROM w")


# --- class 5: COPY FROM rows ended by a bare \r ------------------------------------------------

CLASS5 = {
    "issue-text-cr": ("COPY orders (tenant_id, total) FROM STDIN", ["1\t11.11\r2\t22.22\r"]),
    "csv-cr": ("COPY orders (tenant_id, total) FROM STDIN WITH (FORMAT csv)",
               ["1,11.11\r2,22.22\r"]),
    "cr-split-across-messages": ("COPY orders (tenant_id, total) FROM STDIN",
                                 ["1\t11.11\r", "2\t22.22\r"]),
    "crlf": ("COPY orders (tenant_id, total) FROM STDIN", ["1\t11.11\r\n2\t22.22\r\n"]),
    "tenant-last": ("COPY orders (total, tenant_id) FROM STDIN", ["11.11\t1\r22.22\t2\r"]),
    "csv-header-cr": ("COPY orders (tenant_id, total) FROM STDIN WITH (FORMAT csv, HEADER)",
                      ["tenant_id,total\r2,22.22\r"]),
}
def _copy_chunks(client: RawClient, sql: str, chunks: list[str]) -> list[be.BackendMessage]:
    client.send(fe.Query(sql))
    messages: list[be.BackendMessage] = []
    while (msg := client.recv()) is not None:
        messages.append(msg)
        if isinstance(msg, be.CopyInResponse):
            client.send(*(fe.CopyData(c.encode()) for c in chunks), fe.CopyDone())
        if isinstance(msg, be.ReadyForQuery):
            break
    return messages


@pytest.mark.parametrize("name", CLASS5)
def test_class5_copy_rows_ended_by_cr(env: Env, name: str) -> None:
    sql, chunks = CLASS5[name]
    with others_unchanged(env), raw(env) as client:
        _copy_chunks(client, sql, chunks)


def test_class5_psycopg_copy_write(env: Env) -> None:
    with others_unchanged(env), psycopg.connect(dsn(env), autocommit=True) as conn, \
            pytest.raises(psycopg.Error), \
            conn.cursor().copy("COPY orders (tenant_id, total) FROM STDIN") as copy:
        copy.write("1\t11.11\r\n2\t22.22\r\n")


# --- class 6: COPY rows unchecked in some flows -------------------------------------------------

COPY_SQL = "COPY orders (tenant_id, total) FROM STDIN"


def _extended_copy(client: RawClient, statement: str, data: str) -> list[be.BackendMessage]:
    client.send(fe.Bind("", statement), fe.Execute("", 0), fe.Flush())
    messages: list[be.BackendMessage] = []
    while (msg := client.recv()) is not None:
        messages.append(msg)
        if isinstance(msg, be.CopyInResponse):
            client.send(fe.CopyData(data.encode()), fe.CopyDone(), fe.Sync())
        elif isinstance(msg, be.ErrorResponse):
            client.send(fe.Sync())
        if isinstance(msg, be.ReadyForQuery):
            break
    return messages


def test_class6_two_copies_in_one_query(env: Env) -> None:
    committed(env, f"{COPY_SQL}; {COPY_SQL}", copy_data=["1\t1.00\n", "2\t2.00\n"])


def test_class6_copy_after_a_select_in_one_query(env: Env) -> None:
    committed(env, f"SELECT 1; {COPY_SQL}", copy_data=["2\t2.00\n"])


def test_class6_parse_copy_parse_other_execute_copy(env: Env) -> None:
    with others_unchanged(env), raw(env) as client:
        client.send(fe.Parse("c", COPY_SQL), fe.Parse("s", "SELECT 1"), fe.Sync())
        client.recv_until_ready()
        assert_no_leak(text_of(_extended_copy(client, "c", "2\t2.00\n")))


def test_class6_second_execution_of_a_prepared_copy(env: Env) -> None:
    with others_unchanged(env), raw(env) as client:
        client.send(fe.Parse("c", COPY_SQL), fe.Sync())
        client.recv_until_ready()
        _extended_copy(client, "c", "1\t1.00\n")
        _extended_copy(client, "c", "2\t2.00\n")


def test_class6_psycopg_copy_twice(env: Env) -> None:
    with others_unchanged(env), psycopg.connect(dsn(env), autocommit=True) as conn:
        with conn.cursor().copy(COPY_SQL) as copy:
            copy.write_row((1, "1.00"))
        with pytest.raises(psycopg.Error), conn.cursor().copy(COPY_SQL) as copy:
            copy.write_row((2, "2.00"))


# --- class 7: SQL PREPARE and protocol Parse share one namespace -----------------------------

INSERT_SQL = "INSERT INTO orders (tenant_id, total) VALUES ($1, $2)"


def test_class7_sql_prepare_then_protocol_bind(env: Env) -> None:
    with others_unchanged(env), raw(env) as client:
        client.query(f"PREPARE p (int, numeric) AS {INSERT_SQL}")
        client.send(fe.Bind("", "p", (), (b"2", b"9.99")), fe.Execute("", 0), fe.Sync())
        client.recv_until_ready()


def test_class7_protocol_parse_then_sql_execute(env: Env) -> None:
    with others_unchanged(env), raw(env) as client:
        client.send(fe.Parse("s", INSERT_SQL), fe.Sync())
        client.recv_until_ready()
        client.query("EXECUTE s(2, 9.99)")


def test_class7_deallocate_and_prepare_over_a_protocol_name(env: Env) -> None:
    with others_unchanged(env), raw(env) as client:
        client.send(fe.Parse("s", "SELECT $1::int, $2::numeric"), fe.Sync())
        client.recv_until_ready()
        client.query("DEALLOCATE s")
        client.query(f"PREPARE s (int, numeric) AS {INSERT_SQL}")
        client.send(fe.Bind("", "s", (), (b"2", b"9.99")), fe.Execute("", 0), fe.Sync())
        client.recv_until_ready()


def test_class7_asyncpg_statement_executed_by_name(env: Env) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(dsn(env))
        try:
            stmt = await conn.prepare(INSERT_SQL)
            with pytest.raises(asyncpg.PostgresError):
                await conn.execute(f"EXECUTE {stmt.get_name()}(2, 9.99)")
        finally:
            await conn.close()

    with others_unchanged(env):
        asyncio.run(go())


def test_class7_psycopg_prepared_statement_executed_by_name(env: Env) -> None:
    with others_unchanged(env), psycopg.connect(dsn(env), autocommit=True) as conn:
        conn.execute(INSERT_SQL.replace("$1", "%s").replace("$2", "%s"), (1, 1), prepare=True)
        with pytest.raises(psycopg.Error):
            conn.execute("EXECUTE _pg3_0(2, 9.99)")


def test_class7_sql_prepare_and_execute_checks_the_tenant(env: Env) -> None:
    with others_unchanged(env), raw(env) as client:
        client.query(f"PREPARE p (int, numeric) AS {INSERT_SQL}")
        out = collect(client.query("EXECUTE p(2, 9.99)"))
        assert out.error is not None and out.error.sqlstate in REFUSALS, out.summary()


def test_class7_sql_cursor_fetched_by_protocol_execute(env: Env) -> None:
    with raw(env) as client:
        client.query("BEGIN")
        client.query("DECLARE c CURSOR FOR SELECT email, ssn FROM users")
        client.send(fe.Execute("c", 0), fe.Sync())
        assert_no_leak(text_of(client.recv_until_ready()))
        client.query("ROLLBACK")


# --- class 8: error oracles -------------------------------------------------------------------

CLASS8 = {
    "issue": ("SELECT 1 FROM users WHERE tenant_id <> 1 AND has_schema_privilege(ssn, 'USAGE')",
              None),
    "cast": ("SELECT 1 FROM users WHERE tenant_id <> 1 AND ssn::int = 0", None),
    "jsonpath-datetime": ("SELECT 1 FROM users WHERE tenant_id <> 1 AND "
                          "jsonb_path_exists(to_jsonb(ssn), '$.datetime()')", None),
    "make-date-bit": ("SELECT 1 FROM users WHERE tenant_id = 2 AND make_date(2000, CASE WHEN "
                      "ssn LIKE '222-22-1%' THEN 13 ELSE 1 END, 1) IS NOT NULL", None),
    "division-bit": ("SELECT 1 FROM orders WHERE tenant_id = 2 AND 1 / (CASE WHEN total > 900 "
                     "THEN 0 ELSE 1 END) = 1", None),
    "update-where": ("UPDATE users SET name = name WHERE tenant_id <> 1 AND ssn::int = 0", None),
    "join-on": ("SELECT 1 FROM users u JOIN countries c ON u.tenant_id <> 1 AND u.ssn::int = 0",
                None),
    "scalar-subquery": ("SELECT (SELECT count(*) FROM users WHERE tenant_id <> 1 AND "
                        "ssn::int = 0)", None),
    "extended": ("SELECT 1 FROM users WHERE tenant_id <> $1 AND ssn::int = 0", [1]),
    "no-index-scan": ("SET enable_indexscan = off; SELECT 1 FROM orders WHERE tenant_id <> 1 "
                      "AND total::text::int = 0", None),
}


@pytest.mark.parametrize("name", CLASS8)
def test_class8_error_oracle(env: Env, name: str) -> None:
    sql, params = CLASS8[name]
    assert_like_rls(env, sql, params)


FLOOR_ROLE, FLOOR_PASSWORD = "attack_floor", "attack-floor-pw"


@pytest.fixture(scope="module")
def floor_env(env: Env, certs: CertFiles, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[Env]:
    """The same proxy standing on the floor `tenant-proxy install` derives from the
    rules: a non-superuser upstream role under FORCE row-level security."""
    from proxy.floor.install import install
    from proxy.floor.spec import FloorSpec
    from proxy.policy.rules import parse_rules

    async def setup() -> None:
        conn = await admin_connect(env.db, CORPUS_DB)
        try:
            await conn.execute(f"DROP ROLE IF EXISTS {FLOOR_ROLE}")
            await conn.execute(f"CREATE ROLE {FLOOR_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS "
                               f"PASSWORD '{FLOOR_PASSWORD}'")
            spec = FloorSpec.from_rules(parse_rules(RULES), [FLOOR_ROLE])
            result = await install(conn, spec, say=lambda _: None)
            assert not result.remaining, [f.problem for f in result.remaining]
        finally:
            await conn.close()

    asyncio.run(setup())
    rules = tmp_path_factory.mktemp("attack-floor") / "rules.yaml"
    rules.write_text(RULES)
    base = corpus_settings(proxy_settings(env.db, certs), rules, {LOGIN: PASSWORD})
    settings = replace(base, floor="required", upstream=replace(
        base.upstream, roles={LOGIN: FLOOR_ROLE},
        passwords={**base.upstream.passwords, FLOOR_ROLE: FLOOR_PASSWORD}))
    with running_proxy(settings) as proxy:
        yield Env(proxy, env.db)


@pytest.mark.parametrize("name", CLASS8)
def test_class8_error_oracle_with_the_floor(floor_env: Env, name: str) -> None:
    """With the floor on, RLS quals are security barriers under the proxy's own
    scoping: every error oracle gives what RLS alone gives."""
    sql, params = CLASS8[name]
    assert_like_rls(floor_env, sql, params)


# --- class 9: advisory locks and other per-row counters ---------------------------------------

CLASS9 = {
    "issue": ("SELECT count(*) FROM orders WHERE total > 50 AND pg_try_advisory_lock(77)", None),
    "two-keys": ("SELECT pg_advisory_lock(1, 2)", None),
    "qualified-shared-xact": ("SELECT pg_catalog.pg_advisory_xact_lock_shared(5)", None),
    "quoted": ('SELECT "pg_try_advisory_lock"(77)', None),
    "lateral": ("SELECT o.id FROM orders o JOIN LATERAL (SELECT pg_try_advisory_lock(o.id) AS l)"
                " l ON l.l", None),
    "update-where": ("UPDATE orders SET total = total WHERE pg_try_advisory_xact_lock(id) "
                     "RETURNING id", None),
    "unlock-all": ("SELECT pg_advisory_unlock_all()", None),
    "in-cte": ("WITH l AS (SELECT pg_try_advisory_lock(77)) SELECT * FROM l", None),
    "from-function": ("SELECT * FROM pg_advisory_lock(7) AS l", None),
    "extended": ("SELECT pg_try_advisory_lock($1)", [77]),
    "pg-locks": ("SELECT objid FROM pg_locks WHERE locktype = 'advisory'", None),
}


@pytest.mark.parametrize("name", CLASS9)
def test_class9_advisory_locks_refused(env: Env, name: str) -> None:
    sql, params = CLASS9[name]
    assert_refused(env, sql, params)


def test_class9_asyncpg_advisory_lock(env: Env) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(dsn(env))
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="advisory"):
                await conn.fetchval("SELECT pg_advisory_xact_lock($1)", 1)
        finally:
            await conn.close()

    asyncio.run(go())


async def _sequence_value(db: Database) -> int:
    conn = await admin_connect(db, CORPUS_DB)
    try:
        return await conn.fetchval("SELECT last_value FROM orders_id_seq")
    finally:
        await conn.close()


def _nextval_calls(env: Env, client: RawClient, sql: str) -> int | None:
    """How often ``sql`` ran nextval('orders_id_seq'), or None if it was refused."""
    before = asyncio.run(_sequence_value(env.db))
    out, _ = in_transaction(client, sql)
    used = asyncio.run(_sequence_value(env.db)) - before
    asyncio.run(_reset_sequences(env.db))
    if out.error is not None:
        assert out.error.sqlstate in REFUSALS, out.summary()
        return None
    return used + 1  # the first nextval() after setval(..., false) leaves last_value


#: Statements advancing a sequence in a predicate, with how often that predicate may
#: run on tenant 1's rows (3 orders; 3 orders x 4 countries for the join).
NEXTVAL_PREDICATES = {
    "SELECT count(*) FROM orders WHERE total > 50 AND nextval('orders_id_seq') > 0": 3,
    "SELECT count(*) FROM orders o JOIN countries c ON nextval('orders_id_seq') > 0 "
    "AND o.total > 50": 12,
    "UPDATE orders SET total = total WHERE total > 50 AND nextval('orders_id_seq') > 0": 3,
    "SELECT 1 FROM users u WHERE EXISTS (SELECT 1 FROM orders o WHERE o.total > 50 AND "
    "nextval('orders_id_seq') > 0)": 3,
}


@pytest.mark.parametrize("sql", NEXTVAL_PREDICATES)
def test_class9_nextval_counts_only_the_tenants_rows(env: Env, sql: str) -> None:
    """A sequence advanced in a predicate counts the rows the predicate ran on."""
    with raw(env) as client:
        calls = _nextval_calls(env, client, sql)
    assert calls is None or calls <= NEXTVAL_PREDICATES[sql], \
        f"nextval() ran {calls} times: it counted other tenants' rows"


def test_class9_rls_alone_does_not_close_counting(env: Env) -> None:
    """Why the proxy refuses advisory locks and predicate nextval() even with the
    PostgreSQL floor: a volatile predicate that reads no column runs before the
    policy's qual, on every tenant's rows (all 8 orders here)."""
    with rls(env) as client:
        calls = _nextval_calls(env, client, next(iter(NEXTVAL_PREDICATES)))
    assert calls == 8


# --- class 10: catalog and server leaks --------------------------------------------------------

CLASS10 = {
    "select-star-pg-class": "SELECT * FROM pg_class",
    "pg-settings": "SELECT setting FROM pg_settings WHERE name = 'data_directory'",
    "pg-stat-view": "SELECT n_live_tup FROM pg_stat_user_tables",
    "pg-stat-function": "SELECT pg_stat_get_live_tuples('users'::regclass)",
    "relation-size": "SELECT pg_relation_size('users')",
    "reltuples-column": "SELECT reltuples::int FROM pg_class WHERE relname = 'users'",
    "file-settings": "SELECT * FROM pg_file_settings",
    "sequence-relation": "SELECT last_value FROM orders_id_seq",
    "issue-row-to-json": "SELECT row_to_json(c) FROM pg_class c WHERE relname = 'users'",
    "issue-pg-sequences": "SELECT last_value FROM pg_sequences",
    "issue-show-data-directory": "SHOW data_directory",
    "issue-current-setting": "SELECT current_setting('hba_file')",
    "show-all": "SHOW ALL",
    "current-setting-missing-ok": "SELECT current_setting('data_directory', true)",
    "attribute-notation": "SELECT c.to_jsonb FROM pg_class c WHERE relname = 'users'",
    "attribute-aggregate": "SELECT c.array_agg FROM pg_class c",
    "field-selection": "SELECT (c).reltuples FROM pg_class c WHERE relname = 'users'",
    "column-alias-list": "SELECT r FROM pg_class AS c(o, n, ns, t, ot, ow, am, fn, ts, p, r) "
                         "WHERE n = 'users'",
    "join-using": "SELECT count(*) FROM pg_class JOIN (VALUES (8::real)) v(reltuples) "
                  "USING (reltuples)",
    "whole-row-text": "SELECT c::text FROM pg_class c WHERE relname = 'users'",
    "pg-sequences-whole-row": "SELECT s FROM pg_sequences s",
}


@pytest.mark.parametrize("name", CLASS10)
def test_class10_catalog_and_settings(env: Env, name: str) -> None:
    assert_refused(env, CLASS10[name])


def test_class10_setting_name_as_parameter(env: Env) -> None:
    assert_refused(env, "SELECT current_setting($1)", ["data_directory"])


def test_class10_psycopg_show(env: Env) -> None:
    with psycopg.connect(dsn(env)) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SHOW config_file")


def test_class10_readable_settings_still_work(env: Env) -> None:
    with psycopg.connect(dsn(env)) as conn:
        assert conn.execute("SHOW TimeZone").fetchone()
        assert conn.execute("SELECT current_setting('server_version_num')").fetchone()
        assert conn.execute("SHOW tenant_proxy.tenant").fetchone() == ("1",)


# --- class 11: fidelity --------------------------------------------------------------------------

CLASS11 = {
    "issue-substr": "SELECT substr(name, 1, 2) FROM users",
    "trim": "SELECT trim(name) FROM users",
    "extract": "SELECT extract(year FROM created_at) FROM orders",
    "position": "SELECT position('a' IN email) FROM users",
    "concat-operator": "SELECT email || '' FROM users",
    "coalesce": "SELECT coalesce(name, '') FROM users",
    "cast": "SELECT CAST(id AS text), id::text FROM users",
    "join-count": "SELECT count(*) FROM users u JOIN orders o ON o.user_id = u.id",
    "issue-on-conflict-other-tenant": "INSERT INTO users (id, tenant_id, email) VALUES (4, 1, "
                                      "'x@acme.test') ON CONFLICT (id) DO UPDATE SET name = 'x'",
    "on-conflict-do-nothing-other-tenant": "INSERT INTO users (id, tenant_id, email) VALUES "
                                           "(4, 1, 'x@acme.test') ON CONFLICT (id) DO NOTHING",
    "on-conflict-same-email-other-tenant": "INSERT INTO users (tenant_id, email) VALUES (1, "
                                           "'dave@globex.test') ON CONFLICT (tenant_id, email) "
                                           "DO UPDATE SET name = 'x' RETURNING name",
}
@pytest.mark.parametrize("name", list(CLASS11))
def test_class11_fidelity(env: Env, name: str) -> None:
    assert_like_rls(env, CLASS11[name])


def test_class11_drivers_see_the_column_names(env: Env) -> None:
    sql = "SELECT substr(name, 1, 2), trim(email) FROM users"

    async def go() -> list[str]:
        conn = await asyncpg.connect(dsn(env))
        try:
            return list((await conn.fetch(sql))[0].keys())
        finally:
            await conn.close()

    with psycopg.connect(dsn(env)) as conn:
        cur = conn.execute(sql)
        assert [d.name for d in cur.description or ()] == ["substr", "btrim"]
    assert asyncio.run(go()) == ["substr", "btrim"]


# --- found while writing these (not in the list) ------------------------------------------


def test_nextval_on_a_denied_tables_sequence(env: Env) -> None:
    """Found while writing these (not in issue 12): the sequence of a denied table
    tells and moves its insert count."""
    assert_refused(env, "SELECT nextval('audit_events_id_seq')")
    assert_refused(env, "SELECT setval('public.audit_events_id_seq'::regclass, 1)")
    asyncio.run(_reset_sequences(env.db))


@pytest.mark.parametrize("lock", ["FOR UPDATE", "FOR NO KEY UPDATE", "FOR SHARE"])
def test_row_locks_on_read_only_shared_tables(env: Env, lock: str) -> None:
    """Locking rows every tenant shares needs the table writable (RLS with grants
    asks for UPDATE privilege); locks on writable tables and OF others still work."""
    assert_refused(env, f"SELECT code FROM countries WHERE code = 'US' {lock}")
    assert_refused(env, f"SELECT o.id FROM orders o JOIN countries c ON true {lock}")
