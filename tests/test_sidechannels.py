"""The side-channel checks (proxy.sql.sidechannels) on parsed statements, and
their lists against a real PostgreSQL's catalog."""

from __future__ import annotations

import asyncio

import pglast
import pytest
from pglast import ast

from proxy.errors import Refused
from proxy.sql import sidechannels
from proxy.sql.builtins import (
    ATTRIBUTE_FUNCTIONS,
    DENIED_FUNCTIONS,
    READABLE_SETTINGS,
    SAFE_CATALOG,
    SAFE_FUNCTIONS,
    SENSITIVE_CATALOG,
)
from proxy.sql.statements import walk
from tests.harness import Database, admin_connect


def check(sql: str, readable: frozenset[str] = frozenset()) -> None:
    root = pglast.parse_sql(sql)[0].stmt
    if isinstance(root, ast.VariableShowStmt):
        sidechannels.check_show(root, readable)
    else:
        sidechannels.check_statement(root, walk(root), readable)


REFUSED = {
    # advisory locks, every form and spelling
    "SELECT pg_try_advisory_lock(77)": "advisory",
    "SELECT pg_catalog.pg_advisory_xact_lock_shared(1, 2)": "advisory",
    'SELECT "pg_advisory_unlock_all"()': "advisory",
    "SELECT 1 FROM orders WHERE total > 50 AND pg_try_advisory_lock(77)": "advisory",
    "SELECT * FROM pg_advisory_lock(1) AS l": "advisory",
    "UPDATE orders SET total = total WHERE pg_try_advisory_xact_lock(id)": "advisory",
    # statistics
    "SELECT pg_stat_get_live_tuples('users'::regclass)": "statistics",
    "SELECT n_live_tup FROM pg_stat_user_tables": "statistics",
    "SELECT * FROM pg_catalog.pg_statio_all_tables": "statistics",
    "SELECT * FROM pg_stats_ext": "statistics",
    # sequences as row counters
    "SELECT count(*) FROM orders WHERE total > 50 AND nextval('orders_id_seq') > 0": "WHERE",
    "SELECT 1 FROM users u JOIN orders o ON nextval('s') > 0": "WHERE",
    "SELECT 1 FROM orders GROUP BY tenant_id HAVING max(nextval('s')) > 0": "WHERE",
    "DELETE FROM orders WHERE id = 0 AND EXISTS (SELECT 1 FROM orders o WHERE "
    "setval('s', 1) > 0)": "WHERE",
    "INSERT INTO users (id, email) VALUES (1, 'a') ON CONFLICT (id) DO UPDATE SET name = 'x' "
    "WHERE nextval('s') > 0": "WHERE",
    "SELECT nextval(relname) FROM pg_class": "constant",
    "SELECT nextval(('s' || id)::regclass) FROM orders": "constant",
    # catalog whole rows, hidden columns
    "SELECT row_to_json(c) FROM pg_class c WHERE relname = 'users'": "whole-row",
    "SELECT c.* FROM pg_class c": "whole-row",
    "SELECT * FROM pg_class": "whole-row",
    "TABLE pg_class": "whole-row",
    "SELECT pg_catalog.pg_class.* FROM pg_catalog.pg_class": "whole-row",
    "SELECT c::text FROM pg_class c": "whole-row",
    "SELECT c.to_jsonb FROM pg_class c": "whole-row",
    "SELECT c.array_agg FROM pg_class c": "whole-row",
    "SELECT x FROM (SELECT * FROM pg_class) x": "whole-row",
    "SELECT * FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace": "whole-row",
    "SELECT row_to_json(s) FROM pg_sequences s": "whole-row",
    "SELECT reltuples::int FROM pg_class WHERE relname = 'users'": "reltuples",
    'SELECT "relpages" FROM pg_class': "relpages",
    "SELECT (c).reltuples FROM pg_class c": "reltuples",
    "SELECT last_value FROM pg_sequences": "last_value",
    "SELECT 1 FROM pg_class WHERE relpages > 10": "relpages",
    "SELECT count(*) FROM pg_class JOIN (VALUES (5::real)) v(reltuples) USING (reltuples)":
        "reltuples",
    "SELECT 1 FROM pg_class NATURAL JOIN (VALUES (5::real)) v(reltuples)": "NATURAL",
    "SELECT r FROM pg_class AS c(o, n, ns, t, ot, ow, am, fn, ts, p, r)": "column aliases",
    "SELECT age(datfrozenxid) FROM pg_database": "datfrozenxid",
    "WITH x AS (SELECT 1) SELECT * FROM pg_catalog.pg_class": "whole-row",
    # settings
    "SHOW data_directory": "data_directory",
    "SHOW ALL": "SHOW ALL",
    "SHOW hba_file": "hba_file",
    "SELECT current_setting('hba_file')": "hba_file",
    "SELECT pg_catalog.current_setting('data_directory', true)": "data_directory",
    "SELECT current_setting(setting_name => 'config_file')": "config_file",
    "SELECT current_setting(name) FROM (VALUES ('port')) v(name)": "constant",
    "SELECT current_setting('Server_' || 'version')": "constant",
    "SELECT 1 WHERE current_setting('listen_addresses') <> ''": "listen_addresses",
}

ALLOWED = [
    "SELECT relname, relkind FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace",
    "SELECT * FROM pg_type",
    "SELECT t.* FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace",
    "SELECT sequencename, increment_by FROM pg_sequences",
    "SELECT datname FROM pg_database",
    "WITH pg_class AS (SELECT 1 AS n) SELECT * FROM pg_class",
    "SELECT * FROM (SELECT relname FROM pg_class) s",
    "SELECT nextval('orders_id_seq')",
    "SELECT pg_get_serial_sequence('orders', 'id'), nextval('orders_id_seq'::regclass)",
    "INSERT INTO orders (id, total) VALUES (nextval('orders_id_seq'), 1)",
    "SELECT nextval('s'), id FROM orders WHERE total > 5",
    "SELECT currval('orders_id_seq'), lastval()",
    "SELECT current_setting('TimeZone'), current_setting('server_version_num', true)",
    "SELECT current_setting('tenant_proxy.tenant')",
    "SHOW TimeZone",
    "SHOW TRANSACTION ISOLATION LEVEL",
    "SHOW standard_conforming_strings",
    "SHOW search_path",
    "SHOW tenant_proxy.tenant",
    "SELECT u.* FROM users u",
    "SELECT row_to_json(u) FROM users u",
]


@pytest.mark.parametrize("sql", REFUSED)
def test_refused(sql: str) -> None:
    with pytest.raises(Refused) as info:
        check(sql)
    assert REFUSED[sql] in info.value.message
    assert info.value.sqlstate == "42501"
    assert info.value.fields().get("H")


@pytest.mark.parametrize("sql", ALLOWED)
def test_allowed(sql: str) -> None:
    check(sql)


def test_rules_can_add_readable_settings() -> None:
    with pytest.raises(Refused) as info:
        check("SHOW data_directory")
    assert "settings.readable" in (info.value.hint or "")
    check("SHOW data_directory", frozenset({"data_directory"}))
    check("SELECT current_setting('Port')", frozenset({"port"}))


def test_catalog_aliases_follow_cte_scope() -> None:
    root = pglast.parse_sql("WITH pg_type AS (SELECT 1) SELECT 1 FROM pg_class c, pg_type, "
                            "information_schema.tables t, users u")[0].stmt
    assert sidechannels.catalog_aliases(root) == {"c": "pg_catalog.pg_class",
                                                  "t": "information_schema.tables"}


def test_builtins_lists_agree() -> None:
    assert not {f for f in SAFE_FUNCTIONS if f.startswith(("pg_advisory", "pg_try_advisory"))}
    assert all(f in DENIED_FUNCTIONS for f in ("pg_advisory_xact_lock", "pg_relation_size",
                                               "txid_status", "pg_current_snapshot"))
    assert not set(SENSITIVE_CATALOG) & SAFE_CATALOG
    assert "pg_catalog.pg_settings" in SENSITIVE_CATALOG


def test_lists_match_the_server_catalog(db: Database) -> None:
    """Every function callable in attribute notation on a row is listed, and every
    readable setting exists (a typo would silently refuse it)."""

    async def go() -> tuple[set[str], set[str]]:
        conn = await admin_connect(db)
        try:
            functions = await conn.fetch(
                "SELECT DISTINCT proname FROM pg_proc WHERE pronamespace = "
                "'pg_catalog'::regnamespace AND pronargs - pronargdefaults <= 1 AND "
                "pronargs >= 1 AND proargtypes[0] = ANY(ARRAY['record', 'anyelement', "
                "'\"any\"', 'anynonarray', 'anycompatible', 'anycompatiblenonarray']"
                "::regtype[]) AND prokind IN ('f', 'a')")
            settings = await conn.fetch("SELECT lower(name) FROM pg_settings")
        finally:
            await conn.close()
        return {r[0] for r in functions}, {r[0] for r in settings}

    functions, settings = asyncio.run(go())
    assert functions <= ATTRIBUTE_FUNCTIONS, functions - ATTRIBUTE_FUNCTIONS
    assert READABLE_SETTINGS - {"tenant_proxy.tenant"} <= settings
