"""Every attack in the corpus through the proxy on real PostgreSQL: refused, or
rewritten to exactly the tenant-1 result, and nothing of tenants 2 and 3 (or
shared and forbidden tables) changed."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.certs import CertFiles
from tests.corpus_harness import (
    CORPUS,
    CORPUS_DB,
    Outcome,
    corpus_settings,
    create_corpus_db,
    digest,
    load_entries,
    recreate_corpus_db,
    reset_sequences,
    rows_equal,
    run_statement,
)
from tests.harness import Database, RunningProxy, proxy_password, proxy_settings, running_proxy
from tests.rawclient import RawClient

ENTRIES = load_entries("attacks.yaml")
REPORT: Counter[str] = Counter()


@pytest.fixture(scope="module")
def corpus_proxy(db: Database, certs: CertFiles) -> Iterator[RunningProxy]:
    create_corpus_db(db)
    settings = corpus_settings(proxy_settings(db, certs), CORPUS / "rules.yaml",
                               {"corpus_app": proxy_password("corpus_app")})
    with running_proxy(settings) as proxy:
        yield proxy
    print(f"\nattack corpus: {dict(REPORT)}")


def _client(proxy: RunningProxy) -> RawClient:
    client = RawClient.connect(proxy.port)
    seen = client.login("corpus_app", proxy_password("corpus_app"), CORPUS_DB,
                        options="-c tenant_proxy.tenant=1 -c TimeZone=UTC -c DateStyle=ISO")
    assert not any(getattr(m, "sqlstate", None) for m in seen), seen
    return client


async def _digest(db: Database, *, reset: bool, tenant: int | None) -> str:
    conn = await asyncpg.connect(db.dsn(db.superuser, CORPUS_DB))
    try:
        if reset:
            await reset_sequences(conn)
        return await digest(conn, tenant=tenant)
    finally:
        await conn.close()


def _ordered(sql: str) -> bool:
    return re.search(r"ORDER\s+BY[^()]*$", sql, re.IGNORECASE | re.DOTALL) is not None


def _matches(entry: dict[str, Any], out: Outcome, db: Database) -> bool:
    expected = entry["expected_result"]
    if "sqlstate" in expected:
        return out.error is not None and out.error.sqlstate == expected["sqlstate"]
    if out.refused:
        return False
    if "command" in expected and out.command != expected["command"]:
        return False
    if "columns" in expected and out.columns != expected["columns"]:
        return False
    if "rows" in expected and not rows_equal(out.rows, expected["rows"] or [],
                                             _ordered(entry["sql"])):
        return False
    if "copy_out" in expected and out.copy_out.decode() != expected["copy_out"]:
        return False
    if "check_rows" in expected:
        rows = _fetch_direct(db, entry["check_sql"])
        if not rows_equal(rows, expected["check_rows"] or [], _ordered(entry["check_sql"])):
            return False
    return True


def _fetch_direct(db: Database, sql: str) -> list[list[str | None]]:
    """Run a check as the superuser outside the proxy (it sees every tenant), in
    PostgreSQL's text format like the recorded results."""
    with psycopg.connect(db.dsn(db.superuser, CORPUS_DB)) as conn:
        result = conn.pgconn.exec_(sql.encode())
        return [[None if result.get_value(r, c) is None else result.get_value(r, c).decode()
                 for c in range(result.nfields)] for r in range(result.ntuples)]


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["id"] for e in ENTRIES])
def test_attack(corpus_proxy: RunningProxy, db: Database, entry: dict[str, Any]) -> None:
    # DML whose effect is checked afterwards runs in autocommit; the database is
    # rebuilt after it. Everything else runs in a transaction that is rolled back.
    checked = "check_sql" in entry
    before = asyncio.run(_digest(db, reset=True, tenant=1 if checked else None))
    client = _client(corpus_proxy)
    try:
        wrap = "none" if checked else entry.get("wrap")
        if wrap != "none":
            assert run_statement(client, "BEGIN").error is None
        for setup in entry.get("setup") or []:
            run_statement(client, setup)
        out = run_statement(client, entry["sql"], entry.get("params"), entry.get("copy_data"))
        safe_rewrite = entry["expected"] == "rewrite" or entry.get("safe_alternative") == \
            "rewrite"
        if out.refused:
            assert out.error is not None
            outcome = "refused"
            assert not entry.get("control"), f"control entry refused: {out.summary()}"
        else:
            assert safe_rewrite, f"must be refused, but ran: {out.summary()}"
            assert _matches(entry, out, db), \
                f"rewritten result differs from the tenant-1 result: {out.summary()}"
            outcome = "rewritten"
        if wrap != "none":
            run_statement(client, "ROLLBACK")
        REPORT[f"{entry['expected']}->{outcome}"] += 1
    finally:
        client.close()

    changed = asyncio.run(_digest(db, reset=False, tenant=1 if checked else None)) != before
    if changed or checked:
        asyncio.run(recreate_corpus_db(db))
    assert not changed, "the statement changed rows it must not touch"
