"""Tenant identity and isolation through the running proxy with real clients:
tokens, bound, trusted and bypass roles, SET LOCAL, RESET, tenant switches,
LISTEN/NOTIFY, asyncpg and SQLAlchemy ORM CRUD for two tenants."""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest
from sqlalchemy import ForeignKey, String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from proxy.policy.tokens import mint_hs256
from proxy.wire import backend as be
from proxy.wire import frontend as fe
from tests.certs import CertFiles
from tests.corpus_harness import CORPUS_DB, corpus_settings, create_corpus_db
from tests.harness import Database, RunningProxy, proxy_settings, running_proxy
from tests.rawclient import RawClient, errors

KEY = secrets.token_bytes(32)
LOGINS = {"tok": "tok-pw", "acme": "acme-pw", "globex": "globex-pw", "dev": "dev-pw",
          "migrator": "migrator-pw"}
RULES = f"""
version: 1
tenant: {{column: tenant_id, type: integer}}
tables:
  public.users: {{scope: tenant}}
  public.orders: {{scope: tenant}}
  public.order_items: {{scope: tenant}}
  public.documents: {{scope: tenant}}
  public.tenants: {{scope: tenant, column: id, writable: false}}
  public.countries: {{scope: shared}}
  public.audit_events: {{scope: deny}}
users:
  tok: {{identity: token}}
  acme: {{identity: bound, tenant: 1}}
  globex: {{identity: bound, tenant: 2}}
  dev: {{identity: trusted}}
  migrator: {{identity: bypass}}
tokens:
  hmac_keys: ["base64:{base64.b64encode(KEY).decode()}"]
"""


def token(tenant: str, ttl: int = 600, role: str | None = "tok") -> str:
    return mint_hs256(KEY, tenant, ttl, role=role)


@pytest.fixture(scope="module")
def iso(db: Database, certs: CertFiles, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[RunningProxy]:
    create_corpus_db(db)
    rules = tmp_path_factory.mktemp("rules") / "rules.yaml"
    rules.write_text(RULES)
    with running_proxy(corpus_settings(proxy_settings(db, certs), rules, LOGINS)) as proxy:
        yield proxy


def dsn(proxy: RunningProxy, login: str, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return (f"postgresql://{login}:{LOGINS[login]}@127.0.0.1:{proxy.port}/{CORPUS_DB}"
            + (f"?{query}" if query else ""))


def emails(conn: psycopg.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT email FROM users ORDER BY id").fetchall()]


def test_bound_roles_see_only_their_tenant(iso: RunningProxy) -> None:
    with psycopg.connect(dsn(iso, "acme")) as acme, psycopg.connect(dsn(iso, "globex")) as gx:
        a, g = emails(acme), emails(gx)
        assert a and g and not set(a) & set(g)
        assert all(e.endswith("@acme.test") for e in a)
        assert acme.execute("SHOW tenant_proxy.tenant").fetchone() == ("1",)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="bound to tenant 1"):
            acme.execute(f"SET tenant_proxy.tenant = '{token('2')}'")
        acme.rollback()
        assert emails(acme) == a


def test_token_switching_set_local_and_reset(iso: RunningProxy) -> None:
    with psycopg.connect(dsn(iso, "tok"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="no tenant is set"):
            conn.execute("SELECT * FROM users")
        assert conn.execute("SELECT name FROM countries WHERE code = 'US'").fetchone() \
            == ("United States",)  # shared tables need no tenant
        conn.execute(f"SET tenant_proxy.tenant = '{token('1')}'")
        one = emails(conn)
        assert conn.execute("SHOW tenant_proxy.tenant").fetchone() == ("1",)
        with conn.transaction():
            conn.execute(f"SET LOCAL tenant_proxy.tenant = '{token('2')}'")
            two = emails(conn)
            assert conn.execute("SHOW tenant_proxy.tenant").fetchone() == ("2",)
        assert emails(conn) == one != two  # SET LOCAL ended with its transaction
        conn.execute("RESET tenant_proxy.tenant")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="no tenant is set"):
            conn.execute("SELECT * FROM users")


def test_invalid_and_expired_tokens(iso: RunningProxy) -> None:
    with psycopg.connect(dsn(iso, "tok"), autocommit=True) as conn:
        conn.execute(f"SET tenant_proxy.tenant = '{token('1')}'")
        assert emails(conn)
        expired = mint_hs256(KEY, "2", 1, now=time.time() - 100, role="tok")
        for bad in (expired, token("2")[:-2] + "xx", mint_hs256(secrets.token_bytes(32), "2",
                                                                60, role="tok"),
                    token("2", role="someone-else"), "2"):
            with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification) as info:
                conn.execute(f"SET tenant_proxy.tenant = '{bad}'")
            assert info.value.sqlstate == "28000"
            # ... and the session keeps no tenant, not the previous one.
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="no tenant"):
                conn.execute("SELECT * FROM users")


def test_startup_option_tenant_and_forbidden_options(iso: RunningProxy) -> None:
    opts = f"-c tenant_proxy.tenant={token('2')}"
    with psycopg.connect(dsn(iso, "tok"), options=opts) as conn:
        assert all(e.endswith("@globex.test") for e in emails(conn))
    with pytest.raises(psycopg.OperationalError, match="search_path"):
        psycopg.connect(dsn(iso, "tok"), options="-c search_path=pg_temp,public")
    with pytest.raises(psycopg.OperationalError, match="not configured in the rules"):
        # "app" can log in to the proxy, but the rules give it no identity.
        psycopg.connect(f"postgresql://app:app-secret@127.0.0.1:{iso.port}/{CORPUS_DB}")


def test_trusted_role_takes_bare_ids(iso: RunningProxy) -> None:
    with psycopg.connect(dsn(iso, "dev"), autocommit=True) as conn:
        conn.execute("SET tenant_proxy.tenant = '2'")
        assert all(e.endswith("@globex.test") for e in emails(conn))
        with pytest.raises(psycopg.errors.InvalidAuthorizationSpecification):
            conn.execute("SET tenant_proxy.tenant = 'two'")


def test_bypass_role_runs_a_migration(iso: RunningProxy) -> None:
    with psycopg.connect(dsn(iso, "migrator"), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS migration_marker (v int)")
        conn.execute("ALTER TABLE users ADD COLUMN IF NOT EXISTS nickname text")
        total = conn.execute("SELECT count(*) FROM users").fetchone()[0]
        conn.execute("ALTER TABLE users DROP COLUMN nickname")
        conn.execute("DROP TABLE migration_marker")
    with psycopg.connect(dsn(iso, "acme")) as acme:
        assert len(emails(acme)) < total  # the tenant sees a subset of what bypass sees
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="not allowed"):
            acme.execute("CREATE TABLE evil (x int)")


def test_prepared_statement_is_prepared_again_after_a_tenant_switch(
        iso: RunningProxy) -> None:
    """A statement prepared for tenant 1 and bound after a switch to tenant 2 runs
    for tenant 2: the proxy prepares it again, invisibly to the client."""
    client = RawClient.connect(iso.port)
    client.login("tok", LOGINS["tok"], CORPUS_DB)
    assert not errors(client.query(f"SET tenant_proxy.tenant = '{token('1')}'"))
    client.send(fe.Parse("by_id", "SELECT email FROM users WHERE id = $1"), fe.Sync())
    assert [type(m) for m in client.recv_until_ready()] == [be.ParseComplete,
                                                            be.ReadyForQuery]

    def run(user_id: bytes) -> list[object]:
        client.send(fe.Bind("", "by_id", (), (user_id,)), fe.Execute("", 0), fe.Sync())
        return client.recv_until_ready()

    assert run(b"1")[:2] == [be.BindComplete(), be.DataRow((b"alice@acme.test",))]
    assert not errors(client.query(f"SET tenant_proxy.tenant = '{token('2')}'"))
    again = run(b"1")  # tenant 1's row: invisible to tenant 2
    assert [type(m) for m in again] == [be.BindComplete, be.CommandComplete, be.ReadyForQuery]
    globex = run(b"4")
    assert globex[0] == be.BindComplete() and isinstance(globex[1], be.DataRow)
    assert globex[1].values[0].endswith(b"@globex.test")
    # Back to tenant 1, pipelined behind the client's own Parse: the client sees
    # exactly the answers to its own messages, in order.
    assert not errors(client.query(f"SET tenant_proxy.tenant = '{token('1')}'"))
    client.send(fe.Parse("other", "SELECT 1"), fe.Bind("", "by_id", (), (b"1",)),
                fe.Execute("", 0), fe.Sync())
    assert client.recv_until_ready() == [
        be.ParseComplete(), be.BindComplete(), be.DataRow((b"alice@acme.test",)),
        be.CommandComplete("SELECT 1"), be.ReadyForQuery(b"I")]
    client.close()


def test_psycopg_prepared_statements_across_tenant_switches(iso: RunningProxy) -> None:
    """psycopg prepares a statement after five executions, behind the application's
    back; switching tenant between requests must keep working."""
    with psycopg.connect(dsn(iso, "tok"), autocommit=True) as conn:
        for round_ in range(4):
            for tenant, domain in (("1", "@acme.test"), ("2", "@globex.test")):
                conn.execute(f"SET tenant_proxy.tenant = '{token(tenant)}'")
                for _ in range(4):
                    rows = conn.execute("SELECT email FROM users WHERE id > %s ORDER BY id",
                                        (0,)).fetchall()
                    assert rows and all(r[0].endswith(domain) for r in rows), (round_, rows)


def test_bind_parameter_for_another_tenant_is_refused(iso: RunningProxy) -> None:
    with psycopg.connect(dsn(iso, "acme")) as conn:
        sql = "INSERT INTO documents (tenant_id, body) VALUES (%s, '{}') RETURNING tenant_id"
        assert conn.execute(sql, (1,)).fetchone() == (1,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="parameter \\$1"):
            conn.execute(sql, (2,))
        conn.rollback()


def test_notifications_follow_the_tenant(iso: RunningProxy) -> None:
    with psycopg.connect(dsn(iso, "tok"), autocommit=True) as listener, \
            psycopg.connect(dsn(iso, "migrator"), autocommit=True) as sender:
        listener.execute(f"SET tenant_proxy.tenant = '{token('1')}'")
        listener.execute("LISTEN tenant_1_events")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="does not belong"):
            listener.execute("LISTEN tenant_2_events")
        sender.execute("NOTIFY tenant_1_events, 'first'")
        got = [n.payload for n in listener.notifies(timeout=3, stop_after=1)]
        assert got == ["first"]
        listener.execute(f"SET tenant_proxy.tenant = '{token('2')}'")
        sender.execute("NOTIFY tenant_1_events, 'after the switch'")
        assert [n.payload for n in listener.notifies(timeout=1)] == []


def test_asyncpg_crud_for_two_tenants(iso: RunningProxy) -> None:
    async def crud(tenant: str) -> list[str]:
        conn = await asyncpg.connect(dsn(iso, "tok"))
        try:
            await conn.execute(f"SET tenant_proxy.tenant = '{token(tenant)}'")
            async with conn.transaction():
                new_id = await conn.fetchval(
                    "INSERT INTO documents (body, tags) VALUES ($1::jsonb, $2) RETURNING id",
                    '{"k": 1}', ["a"])
                await conn.execute("UPDATE documents SET tags = $1 WHERE id = $2", ["b"], new_id)
                owner = await conn.fetchval("SELECT tenant_id FROM documents WHERE id = $1",
                                            new_id)
                assert owner == int(tenant)
                await conn.execute("DELETE FROM documents WHERE id = $1", new_id)
            rows = await conn.fetch("SELECT u.email FROM users u JOIN orders o "
                                    "ON o.user_id = u.id ORDER BY o.id")
            return [r["email"] for r in rows]
        finally:
            await conn.close()

    one, two = asyncio.run(crud("1")), asyncio.run(crud("2"))
    assert one and two and not set(one) & set(two)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int]
    email: Mapped[str] = mapped_column(String)
    name: Mapped[str | None]


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int]
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    total: Mapped[float]


def test_sqlalchemy_orm_two_tenants(iso: RunningProxy) -> None:
    engine = create_engine(dsn(iso, "tok").replace("postgresql://", "postgresql+psycopg://"))
    seen = {}
    for tenant in ("1", "2"):
        with Session(engine) as session:
            session.connection().exec_driver_sql(
                f"SET tenant_proxy.tenant = '{token(tenant)}'")
            user = User(tenant_id=int(tenant), email=f"orm{tenant}@x.test", name="ORM")
            session.add(user)
            session.flush()
            user.name = "ORM renamed"
            session.flush()
            found = session.scalars(select(User).where(User.email.like("orm%"))).all()
            assert [u.email for u in found] == [f"orm{tenant}@x.test"]
            seen[tenant] = {u.email for u in session.scalars(select(User))}
            session.rollback()
    assert not seen["1"] & seen["2"]
    with Session(engine) as session:
        session.connection().exec_driver_sql(f"SET tenant_proxy.tenant = '{token('1')}'")
        session.add(User(tenant_id=2, email="sneaky@x.test"))
        with pytest.raises(Exception, match="not this session's tenant"):
            session.flush()
    engine.dispose()


def test_hot_reload_keeps_connections(db: Database, certs: CertFiles, tmp_path: Path) -> None:
    create_corpus_db(db)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    with running_proxy(corpus_settings(proxy_settings(db, certs), rules, LOGINS)) as proxy:
        watcher = proxy.server.watcher
        assert watcher is not None
        watcher.interval = 0.1
        with psycopg.connect(dsn(proxy, "acme"), autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM countries").fetchone()[0] > 0
            rules.write_text(RULES.replace("public.countries: {scope: shared}",
                                           "public.countries: {scope: deny}"))
            deadline = time.monotonic() + 5
            while watcher.reloads == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="denied"):
                conn.execute("SELECT count(*) FROM countries")
            rules.write_text(RULES.replace("tables:", "tables:\n  bad name!: {}"))
            deadline = time.monotonic() + 5
            while watcher.failures == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert watcher.last_error and "rules.yaml:" in watcher.last_error
            # The old rules stay in force and the connection still works.
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="denied"):
                conn.execute("SELECT count(*) FROM countries")
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_copy_in_and_out_are_scoped(iso: RunningProxy) -> None:
    with psycopg.connect(dsn(iso, "acme")) as conn:
        with conn.cursor() as cur:
            with cur.copy("COPY users (email, name) FROM STDIN") as copy:
                copy.write_row(("copied1@acme.test", "Copy One"))
                copy.write_row(("copied2@acme.test", None))
            with cur.copy("COPY users (email, tenant_id) FROM STDIN WITH (FORMAT csv)") as copy:
                copy.write(b"copied3@acme.test,1\n")
            rows = conn.execute("SELECT tenant_id, name FROM users WHERE email LIKE "
                                "'copied%' ORDER BY email").fetchall()
            assert rows == [(1, "Copy One"), (1, None), (1, None)]
            out = bytearray()
            with cur.copy("COPY users (email) TO STDOUT") as copy:
                for chunk in copy:
                    out += chunk
            assert b"@globex.test" not in out and b"copied1@acme.test" in out
        conn.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege,
                           match="COPY row 2: tenant value '2'"), conn.cursor() as cur, \
                cur.copy("COPY users (tenant_id, email) FROM STDIN") as copy:
            copy.write(b"1\tok@acme.test\n2\tevil@globex.test\n")
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM users WHERE email IN "
                            "('ok@acme.test', 'evil@globex.test')").fetchone() == (0,)
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="binary COPY"), \
                conn.cursor() as cur, cur.copy("COPY users (email) FROM STDIN (FORMAT binary)"):
            pass


PREPARE_RULES = RULES.replace("users:\n  tok:", "session: {sql_prepare: rewrite}\nusers:\n  tok:")


def test_sql_prepare_and_cursors_are_scoped_and_tied_to_the_tenant(
        db: Database, certs: CertFiles, tmp_path: Path) -> None:
    create_corpus_db(db)
    rules = tmp_path / "rules.yaml"
    rules.write_text(PREPARE_RULES)
    with running_proxy(corpus_settings(proxy_settings(db, certs), rules, LOGINS)) as proxy, \
            psycopg.connect(dsn(proxy, "tok"), autocommit=True) as conn:
        conn.execute(f"SET tenant_proxy.tenant = '{token('1')}'")
        conn.execute("PREPARE by_tenant AS SELECT email FROM users ORDER BY id")
        one = [r[0] for r in conn.execute("EXECUTE by_tenant").fetchall()]
        assert one and all(e.endswith("@acme.test") for e in one)
        conn.execute("PREPARE add_doc(int) AS INSERT INTO documents (tenant_id, body) "
                     "VALUES ($1, '{}')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="parameter \\$1"):
            conn.execute("EXECUTE add_doc(2)")
        with conn.transaction():
            conn.execute("DECLARE c CURSOR FOR SELECT email FROM users ORDER BY id")
            assert [r[0] for r in conn.execute("FETCH ALL FROM c").fetchall()] == one
        conn.execute(f"SET tenant_proxy.tenant = '{token('2')}'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="another tenant"):
            conn.execute("EXECUTE by_tenant")
        # psycopg's server-side (named) cursors use DECLARE/FETCH.
        with conn.transaction(), conn.cursor(name="named") as cur:
            cur.execute("SELECT email FROM users ORDER BY id")
            two = [r[0] for r in cur.fetchall()]
        assert two and all(e.endswith("@globex.test") for e in two)


def test_sessions_need_standard_conforming_strings(iso: RunningProxy, db: Database) -> None:
    """With it off the server would read 'a\\' OR ...' differently from the proxy."""
    with psycopg.connect(db.dsn(db.superuser, CORPUS_DB), autocommit=True) as admin:
        admin.execute("ALTER ROLE postgres IN DATABASE corpus SET standard_conforming_strings "
                      "= off")
        try:
            with pytest.raises(psycopg.OperationalError, match="standard_conforming_strings"):
                psycopg.connect(dsn(iso, "acme"))
            with psycopg.connect(dsn(iso, "migrator")) as bypass:  # forwarded as is
                assert bypass.execute("SELECT 1").fetchone() == (1,)
        finally:
            admin.execute("ALTER ROLE postgres IN DATABASE corpus RESET "
                          "standard_conforming_strings")


def test_upsert_onto_another_tenants_row_fails_and_holds_no_lock(iso: RunningProxy) -> None:
    """ON CONFLICT DO UPDATE locks the conflicting row before any WHERE runs; a
    silently skipped update would leave tenant 2's row locked by tenant 1. It fails
    instead, as under RLS, without naming the other tenant."""
    with psycopg.connect(dsn(iso, "acme")) as acme, \
            psycopg.connect(dsn(iso, "globex"), autocommit=True) as globex:
        with pytest.raises(psycopg.errors.InsufficientPrivilege,
                           match="row-level security") as info:
            acme.execute("INSERT INTO users (id, email) VALUES (4, 'x@acme.test') "
                         "ON CONFLICT (id) DO UPDATE SET name = 'pwned'")
        assert "2" not in str(info.value).split("tenant")[-1].split("\n")[0]
        globex.execute("SET lock_timeout = '1s'")
        globex.execute("UPDATE users SET name = name WHERE id = 4")  # not blocked
        acme.rollback()
        row = acme.execute("INSERT INTO users (id, email) VALUES (1, 'alice@acme.test') ON "
                           "CONFLICT (id) DO UPDATE SET name = 'Alice' RETURNING id").fetchone()
        assert row == (1,)  # the tenant's own row still upserts
        acme.rollback()


def test_a_database_default_encoding_cannot_split_statements(iso: RunningProxy,
                                                             db: Database) -> None:
    """With client_encoding GBK, E'\\xbf\\' would end a string for PostgreSQL but not
    for the proxy; tenant sessions always run in UTF8, whatever the defaults say."""
    with psycopg.connect(db.dsn(db.superuser, CORPUS_DB), autocommit=True) as admin:
        admin.execute("ALTER ROLE postgres IN DATABASE corpus SET client_encoding = 'GBK'")
        try:
            client = RawClient.connect(iso.port)
            seen = client.login("acme", LOGINS["acme"], CORPUS_DB, CLIENT_ENCODING="GBK")
            assert errors(seen) and "client_encoding" in errors(seen)[0].message
            with psycopg.connect(dsn(iso, "acme")) as conn:
                assert conn.info.parameter_status("client_encoding") == "UTF8"
                assert all(e.endswith("@acme.test") for e in emails(conn))
        finally:
            admin.execute("ALTER ROLE postgres IN DATABASE corpus RESET client_encoding")
