"""Run corpus entries through the proxy (and directly) on the corpus schema."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import asyncpg
import yaml

from proxy.config.settings import Settings
from proxy.wire import backend as be
from proxy.wire import frontend as fe
from tests.certs import CertFiles
from tests.harness import (
    Database,
    RunningProxy,
    admin_connect,
    proxy_settings,
    recreate_database,
    running_proxy,
)
from tests.rawclient import RawClient

CORPUS = Path(__file__).parent / "corpus"
CORPUS_DB = "corpus"
CORPUS_TEMPLATE = "corpus_tpl"
RLS_ROLE = "rls_reader"
#: The corpus rules' tenant and table sections, for rules files that add their own users.
CORPUS_TABLE_RULES = (CORPUS / "rules.yaml").read_text().split("\nusers:")[0]
SCOPED = {"users": "tenant_id", "orders": "tenant_id", "order_items": "tenant_id",
          "documents": "tenant_id", "tenants": "id"}
SEQUENCES = ("users_id_seq", "orders_id_seq", "order_items_id_seq", "documents_id_seq",
             "audit_events_id_seq")
#: Tables whose contents decide whether anything escaped.
DIGEST_TABLES = ("tenants", "users", "orders", "order_items", "documents", "countries",
                 "audit_events")


def load_entries(name: str) -> list[dict[str, Any]]:
    return yaml.safe_load((CORPUS / name).read_text())["entries"]


def create_corpus_db(db: Database) -> None:
    """corpus_tpl from schema.sql plus RLS policies for the differential tests;
    corpus is cloned from it (and re-cloned if a test ever changes it)."""

    async def go() -> None:
        await recreate_database(db, CORPUS_DB, drop_only=True)
        await recreate_database(db, CORPUS_TEMPLATE)
        tpl = await admin_connect(db, CORPUS_TEMPLATE)
        try:
            await tpl.execute((CORPUS / "schema.sql").read_text())
            exists = await tpl.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", RLS_ROLE)
            if not exists:
                await tpl.execute(f"CREATE ROLE {RLS_ROLE} NOLOGIN NOBYPASSRLS")
            for table, column in SCOPED.items():
                await tpl.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
                await tpl.execute(
                    f"CREATE POLICY tenant_isolation ON {table} TO {RLS_ROLE} "
                    f"USING ({column} = current_setting('rls.tenant')::int) "
                    f"WITH CHECK ({column} = current_setting('rls.tenant')::int)")
            await tpl.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "
                              f"public TO {RLS_ROLE}")
            await tpl.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {RLS_ROLE}")
            await tpl.execute("ANALYZE")
        finally:
            await tpl.close()
        await recreate_corpus_db(db)

    asyncio.run(go())


async def recreate_corpus_db(db: Database) -> None:
    await recreate_database(db, CORPUS_DB, CORPUS_TEMPLATE)


async def digest(conn: asyncpg.Connection, *, tenant: int | None = None) -> str:
    """A hash of every row, or with ``tenant`` of every row that is not that tenant's."""
    h = hashlib.md5()
    for table in DIGEST_TABLES:
        where = f"WHERE {SCOPED[table]} <> {tenant}" if tenant and table in SCOPED else ""
        rows = await conn.fetch(f"SELECT t::text FROM {table} t {where} ORDER BY 1")
        h.update(repr([r[0] for r in rows]).encode())
    return h.hexdigest()


async def reset_sequences(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT " + ", ".join(f"setval('{s}', 100, false)" for s in SEQUENCES))


def corpus_settings(base: Settings, rules: Path, logins: dict[str, str]) -> Settings:
    """Settings for a proxy in front of the corpus database with ``rules``.

    Every login (name -> password) maps to the upstream superuser: the proxy
    must not rely on database privileges, as in the corpus's own runs.
    """
    from proxy.auth.scram import make_verifier

    upstream = replace(base.upstream, database=CORPUS_DB,
                       roles={login: "postgres" for login in logins},
                       passwords={**base.upstream.passwords, "postgres": "postgres"})
    auth = replace(base.auth, users={**base.auth.users,
                                     **{u: make_verifier(p) for u, p in logins.items()}})
    return replace(base, upstream=upstream, auth=auth, rules=str(rules))


@dataclass
class Outcome:
    """What a client saw for one statement."""

    error: be.ErrorResponse | None = None
    columns: list[str] = field(default_factory=list)
    rows: list[list[str | None]] = field(default_factory=list)
    command: str | None = None
    copy_out: bytes = b""
    results: int = 0

    @property
    def refused(self) -> bool:
        return self.error is not None

    def summary(self) -> str:
        if self.error:
            return f"error {self.error.sqlstate}: {self.error.message}"
        return f"{self.command}: {self.rows[:5]}"


def collect(messages: list[be.BackendMessage]) -> Outcome:
    out = Outcome()
    for m in messages:
        if isinstance(m, be.ErrorResponse) and out.error is None:
            out.error = m
        elif isinstance(m, be.RowDescription):
            out.columns = [c.name for c in m.columns]
            out.rows = []
        elif isinstance(m, be.DataRow):
            out.rows.append([None if v is None else v.decode() for v in m.values])
        elif isinstance(m, be.CommandComplete):
            out.command = m.tag
            out.results += 1
        elif isinstance(m, be.CopyData):
            out.copy_out += m.data
    return out


def send_statement(client: RawClient, sql: str, params: list[Any] | None = None) -> None:
    """``sql`` as a simple Query, or with ``params`` as text parameters through
    Parse/Bind/Describe/Execute/Sync of the unnamed statement."""
    if params is None:
        client.send(fe.Query(sql))
    else:
        values = tuple(None if p is None else str(p).encode() for p in params)
        client.send(fe.Parse("", sql), fe.Bind("", "", (), values), fe.Describe("P", ""),
                    fe.Execute("", 0), fe.Sync())


def run_statement(client: RawClient, sql: str, params: list[Any] | None = None,
                  copy_data: str | None = None) -> Outcome:
    """Send ``sql`` (see ``send_statement``) and collect everything up to
    ReadyForQuery."""
    send_statement(client, sql, params)
    messages: list[be.BackendMessage] = []
    while True:
        msg = client.recv()
        if msg is None:
            break
        messages.append(msg)
        if isinstance(msg, be.CopyInResponse):
            if copy_data is not None:
                client.send(fe.CopyData(copy_data.encode()))
            client.send(fe.CopyDone())
        if isinstance(msg, be.ReadyForQuery):
            break
    return collect(messages)


def rows_equal(got: list[list[str | None]], expected: list[list[Any]], ordered: bool) -> bool:
    want = [[None if v is None else str(v) for v in row] for row in expected]
    if ordered:
        return got == want
    key = repr
    return sorted(got, key=key) == sorted(want, key=key)


@dataclass
class CorpusEnv:
    """A proxy in front of the corpus database, and the database."""

    proxy: RunningProxy
    db: Database


@contextmanager
def corpus_proxy(db: Database, certs: CertFiles, rules_text: str, workdir: Path,
                 logins: dict[str, str]) -> Iterator[CorpusEnv]:
    """A fresh corpus database and a proxy in front of it with ``rules_text``."""
    create_corpus_db(db)
    rules = workdir / "rules.yaml"
    rules.write_text(rules_text)
    with running_proxy(corpus_settings(proxy_settings(db, certs), rules, logins)) as proxy:
        yield CorpusEnv(proxy, db)
