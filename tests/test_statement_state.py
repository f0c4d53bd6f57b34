"""COPY and prepared statements as state machines (issue 12, classes 6, 7 and 11b).

COPY rows are checked by the statement or portal the server runs, from its
CopyInResponse on, whatever order the client sends Parse, Bind and Execute in;
SQL PREPARE and protocol Parse share one namespace, DECLARE and protocol Bind
another, as in PostgreSQL; and a tenant guard failing inside a rewritten
statement comes back as row-level security's 42501. Every attack is checked by a
digest of the rows that are not tenant 1's, through raw protocol messages and
real drivers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg
import psycopg
import pytest

from proxy.wire import backend as be
from proxy.wire import frontend as fe
from proxy.wire.backend import guard_error
from tests.certs import CertFiles
from tests.corpus_harness import (
    CORPUS_DB,
    CORPUS_TABLE_RULES,
    CorpusEnv,
    corpus_proxy,
    digest,
)
from tests.harness import Database, admin_connect
from tests.rawclient import RawClient, errors

LOGIN, PASSWORD = "stateful", "stateful-pw"
RULES = CORPUS_TABLE_RULES + f"""
session: {{multi_statement: allow, sql_prepare: rewrite}}
users:
  {LOGIN}: {{identity: bound, tenant: 1}}
"""
COPY_SQL = "COPY orders (tenant_id, total) FROM STDIN"
INSERT_SQL = "INSERT INTO orders (tenant_id, total) VALUES ($1, $2)"


Env = CorpusEnv


@pytest.fixture(scope="module")
def env(db: Database, certs: CertFiles, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Env]:
    with corpus_proxy(db, certs, RULES, tmp_path_factory.mktemp("state"),
                      {LOGIN: PASSWORD}) as corpus:
        yield corpus


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def _digest(db: Database) -> str:
    conn = await admin_connect(db, CORPUS_DB)
    try:
        return await digest(conn, tenant=1)
    finally:
        await conn.close()


async def _tenant_totals(db: Database) -> list[str]:
    conn = await admin_connect(db, CORPUS_DB)
    try:
        rows = await conn.fetch("SELECT total::text FROM orders WHERE tenant_id = 1 AND "
                                "total < 1 ORDER BY total")
        await conn.execute("DELETE FROM orders WHERE tenant_id = 1 AND total < 1")
        return [r[0] for r in rows]
    finally:
        await conn.close()


@contextmanager
def others_unchanged(env: Env) -> Iterator[None]:
    """Other tenants' rows are the same after the block (tenant 1's test rows, all with
    totals below 1, are removed afterwards)."""
    before = _run(_digest(env.db))
    try:
        yield
    finally:
        _run(_tenant_totals(env.db))
    assert _run(_digest(env.db)) == before, "rows of other tenants changed"


@contextmanager
def raw(env: Env) -> Iterator[RawClient]:
    client = RawClient.connect(env.proxy.port)
    assert not errors(client.login(LOGIN, PASSWORD, CORPUS_DB))
    try:
        yield client
    finally:
        client.close()


def dsn(env: Env) -> str:
    return f"postgresql://{LOGIN}:{PASSWORD}@127.0.0.1:{env.proxy.port}/{CORPUS_DB}"


def copy_through(client: RawClient, data: list[bytes], then: tuple[object, ...] = ()
                 ) -> list[be.BackendMessage]:
    """Answer every CopyInResponse with the next data item and CopyDone (plus ``then``)."""
    out: list[be.BackendMessage] = []
    while (msg := client.recv()) is not None:
        out.append(msg)
        if isinstance(msg, be.CopyInResponse):
            client.send(fe.CopyData(data.pop(0) if data else b""), fe.CopyDone(), *then)
        elif isinstance(msg, be.ReadyForQuery):
            return out
    return out


def tags(messages: list[be.BackendMessage]) -> list[str]:
    return [m.tag for m in messages if isinstance(m, be.CommandComplete)]


# --- class 6: every execution of every COPY is checked ------------------------------------


def test_two_copies_in_one_query_are_refused_or_both_checked(env: Env) -> None:
    with others_unchanged(env), raw(env) as client:
        client.send(fe.Query(f"{COPY_SQL}; {COPY_SQL}"))
        out = copy_through(client, [b"1\t0.11\n", b"2\t0.12\n"])
        assert errors(out) and errors(out)[0].sqlstate == "42501"
        assert _run(_tenant_totals(env.db)) == []


def test_copy_parsed_then_other_statement_then_copy_executed(env: Env) -> None:
    with others_unchanged(env), raw(env) as client:
        client.send(fe.Parse("c", COPY_SQL), fe.Parse("s", "SELECT 1"), fe.Sync())
        assert not errors(client.recv_until_ready())
        client.send(fe.Bind("", "c"), fe.Execute("", 0), fe.Flush())
        out = copy_through(client, [b"1\t0.21\n2\t0.22\n"], (fe.Sync(),))
        assert [e.sqlstate for e in errors(out)] == ["42501"]
        assert "tenant value '2'" in errors(out)[0].message
        assert _run(_tenant_totals(env.db)) == []


def test_every_execution_of_a_prepared_copy_is_checked(env: Env) -> None:
    with others_unchanged(env), raw(env) as client:
        client.send(fe.Parse("c", COPY_SQL), fe.Sync())
        client.recv_until_ready()
        for data in (b"1\t0.31\n", b"1\t0.32\n2\t0.33\n", b"1\t0.34\r2\t0.35\r"):
            client.send(fe.Bind("", "c"), fe.Execute("", 0), fe.Flush())
            copy_through(client, [data], (fe.Sync(),))
        assert _run(_tenant_totals(env.db)) == ["0.31"]


def test_copy_data_sent_ahead_of_copy_in_response_is_checked(env: Env) -> None:
    """CopyData pipelined behind the COPY waits for the server's CopyInResponse."""
    with others_unchanged(env), raw(env) as client:
        client.send(fe.Query(COPY_SQL), fe.CopyData(b"1\t0.41\n2\t0.42\n"), fe.CopyDone(),
                    fe.Query("SELECT 1"))
        out = client.recv_until_ready() + client.recv_until_ready()
        assert [e.sqlstate for e in errors(out)] == ["42501"]
        assert tags(out) == ["SELECT 1"]
        client.send(fe.Parse("", COPY_SQL), fe.Bind("", ""), fe.Execute("", 0),
                    fe.CopyData(b"1\t0.43\n"), fe.CopyDone(), fe.Sync())
        assert tags(client.recv_until_ready()) == ["COPY 1"]
        assert _run(_tenant_totals(env.db)) == ["0.43"]


def test_sql_execute_of_a_protocol_prepared_copy_is_checked(env: Env) -> None:
    with others_unchanged(env), raw(env) as client:
        client.send(fe.Parse("c", COPY_SQL), fe.Sync())
        client.recv_until_ready()
        client.send(fe.Query("EXECUTE c"))
        out = copy_through(client, [b"1\t0.44\n2\t0.45\n"])
        assert [e.sqlstate for e in errors(out)] == ["42501"]
        assert _run(_tenant_totals(env.db)) == []


def test_psycopg_copies_checked_every_time(env: Env) -> None:
    with others_unchanged(env), psycopg.connect(dsn(env), autocommit=True) as conn:
        for total in ("0.51", "0.52"):
            with conn.cursor().copy(COPY_SQL) as copy:
                copy.write_row((1, total))
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="tenant value"), \
                conn.cursor().copy(COPY_SQL) as copy:
            copy.write(b"1\t0.53\r2\t0.54\r")
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert _run(_tenant_totals(env.db)) == ["0.51", "0.52"]


# --- class 7: one namespace of prepared statements, one of portals ---------------------------


def test_sql_prepare_then_protocol_bind_checks_the_parameters(env: Env) -> None:
    with others_unchanged(env), raw(env) as client:
        assert not errors(client.query(f"PREPARE p (int, numeric) AS {INSERT_SQL}"))
        client.send(fe.Bind("", "p", (), (b"2", b"0.61")), fe.Execute("", 0), fe.Sync())
        assert [e.sqlstate for e in errors(client.recv_until_ready())] == ["42501"]
        client.send(fe.Bind("", "p", (), (b"1", b"0.62")), fe.Execute("", 0), fe.Sync())
        assert tags(client.recv_until_ready()) == ["INSERT 0 1"]
        assert _run(_tenant_totals(env.db)) == ["0.62"]


def test_protocol_parse_then_sql_execute_checks_the_arguments(env: Env) -> None:
    with others_unchanged(env), raw(env) as client:
        client.send(fe.Parse("s", INSERT_SQL), fe.Sync())
        client.recv_until_ready()
        assert [e.sqlstate for e in errors(client.query("EXECUTE s(2, 0.71)"))] == ["42501"]
        assert tags(client.query("EXECUTE s(1, 0.72)")) == ["INSERT 0 1"]
        assert _run(_tenant_totals(env.db)) == ["0.72"]


def test_a_name_keeps_its_checks_until_the_server_replaces_it(env: Env) -> None:
    """PREPARE over a protocol name fails in PostgreSQL; DEALLOCATE in an aborted
    transaction does nothing: neither may swap the checks of the statement that runs."""
    with others_unchanged(env), raw(env) as client:
        client.send(fe.Parse("s", INSERT_SQL), fe.Sync())
        client.recv_until_ready()
        assert errors(client.query("PREPARE s (int, numeric) AS SELECT $1, $2"))
        client.query("BEGIN")
        client.query("SELECT 1/0")
        assert errors(client.query("DEALLOCATE s"))
        client.query("ROLLBACK")
        client.send(fe.Parse("s", "SELECT $1::int, $2::numeric"), fe.Sync())
        assert errors(client.recv_until_ready())  # already exists
        client.send(fe.Bind("", "s", (), (b"2", b"0.81")), fe.Execute("", 0), fe.Sync())
        assert [e.sqlstate for e in errors(client.recv_until_ready())] == ["42501"]
        # Replaced for real: the new statement's (absent) checks apply.
        client.query("DEALLOCATE s")
        client.query("PREPARE s (int, numeric) AS SELECT $1, $2")
        client.send(fe.Bind("", "s", (), (b"2", b"0.82")), fe.Execute("", 0), fe.Sync())
        assert not errors(client.recv_until_ready())


def test_a_skipped_parse_leaves_the_unnamed_statement_as_it_was(env: Env) -> None:
    with others_unchanged(env), raw(env) as client:
        client.send(fe.Parse("", INSERT_SQL), fe.Sync())
        client.recv_until_ready()
        client.send(fe.Parse("x", "SELEC 1"), fe.Parse("", "SELECT $1::int, $2::numeric"),
                    fe.Sync())
        assert len(errors(client.recv_until_ready())) == 1
        client.send(fe.Bind("", "", (), (b"2", b"0.91")), fe.Execute("", 0), fe.Sync())
        assert [e.sqlstate for e in errors(client.recv_until_ready())] == ["42501"]


def test_unknown_names_are_refused_as_postgresql_does(env: Env) -> None:
    with raw(env) as client:
        client.send(fe.Bind("", "nope"), fe.Sync())
        assert [e.sqlstate for e in errors(client.recv_until_ready())] == ["26000"]
        client.send(fe.Execute("nope", 0), fe.Sync())
        assert [e.sqlstate for e in errors(client.recv_until_ready())] == ["34000"]
        assert [e.sqlstate for e in errors(client.query("EXECUTE nope"))] == ["26000"]


def test_sql_cursor_and_protocol_portal_share_a_namespace(env: Env) -> None:
    with raw(env) as client:
        client.query("BEGIN")
        assert not errors(client.query("DECLARE c CURSOR FOR SELECT email FROM users "
                                       "ORDER BY id"))
        client.send(fe.Execute("c", 1), fe.Sync())
        out = client.recv_until_ready()
        rows = [m for m in out if isinstance(m, be.DataRow)]
        assert rows and all(r.values[0].endswith(b"@acme.test") for r in rows)  # type: ignore[union-attr]
        client.send(fe.Close("P", "c"), fe.Sync())
        client.recv_until_ready()
        assert [e.sqlstate for e in errors(client.query("FETCH c"))] == ["34000"]
        client.query("ROLLBACK")


def test_drivers_statements_executed_by_name(env: Env) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(dsn(env))
        try:
            stmt = await conn.prepare(INSERT_SQL)
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(f"EXECUTE {stmt.get_name()}(2, 0.95)")
            await conn.execute(f"EXECUTE {stmt.get_name()}(1, 0.96)")
        finally:
            await conn.close()

    with others_unchanged(env):
        _run(go())
        with psycopg.connect(dsn(env), autocommit=True) as conn:
            conn.execute(INSERT_SQL.replace("$1", "%s").replace("$2", "%s"), (1, "0.97"),
                         prepare=True)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("EXECUTE _pg3_0(2, 0.98)")
        assert _run(_tenant_totals(env.db)) == ["0.96", "0.97"]


# --- class 11b: error parity -------------------------------------------------------------------


def test_guard_errors_become_row_level_security_errors() -> None:
    guard = {"S": "ERROR", "V": "ERROR", "C": "22P02", "P": "12", "F": "numutils.c",
             "W": "SQL statement", "M": 'invalid input syntax for type integer: '
                                         '"tenant-proxy: the conflicting row belongs to '
                                         'another tenant"'}
    out = guard_error(guard)
    assert out is not None and out["C"] == "42501" and set(out) == {"S", "V", "C", "M", "H"}
    assert "conflicting row belongs to another tenant" in out["M"]
    odd = {**guard, "M": 'invalid input syntax for type integer: "tenant-proxy: 222-22-1111"'}
    assert "222" not in str(guard_error(odd))
    assert guard_error({**guard, "C": "22003"}) is None
    assert guard_error({**guard, "M": 'invalid input syntax for type integer: "x"'}) is None


def test_upsert_onto_another_tenants_row_fails_as_under_rls(env: Env) -> None:
    with others_unchanged(env), psycopg.connect(dsn(env)) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege,
                           match="row-level security") as info:
            conn.execute("INSERT INTO users (id, tenant_id, email) VALUES (4, 1, "
                         "'x@acme.test') ON CONFLICT (id) DO UPDATE SET name = 'pwned'")
        assert info.value.diag.context is None and info.value.diag.statement_position is None
        conn.rollback()
    with raw(env) as client:
        client.send(fe.Parse("", "INSERT INTO users (id, tenant_id, email) VALUES ($1, 1, "
                                 "'y@acme.test') ON CONFLICT (id) DO UPDATE SET name = 'x'"),
                    fe.Bind("", "", (), (b"4",)), fe.Execute("", 0), fe.Sync())
        assert [e.sqlstate for e in errors(client.recv_until_ready())] == ["42501"]
