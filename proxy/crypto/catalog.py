"""Where the encrypted columns live in the database: table OIDs and attribute numbers.

A RowDescription names each result column's origin (table OID, attribute
number) however the statement reached it (an alias, ``*``, a subquery or the
proxy's own tenant wrapper), so that is how the session finds the values to
decrypt. The catalog is read through the proxy's control-plane connection
(asyncpg), never through a client's session.
"""

from __future__ import annotations

import logging
from typing import Any

from proxy.policy.rules import EncryptedColumn, EncryptionRules

log = logging.getLogger("tenant_proxy.crypto")

_QUERY = """
SELECT n.nspname, c.relname, a.attname, c.oid, a.attnum, a.atttypid = 'bytea'::regtype
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT a.attisdropped AND a.attnum > 0
  AND (n.nspname || '.' || c.relname || '.' || a.attname) = ANY($1::text[])
"""


async def load_attributes(conn: Any, rules: EncryptionRules
                          ) -> tuple[dict[tuple[int, int], EncryptedColumn], frozenset[str]]:
    """The encrypted columns found, by (table OID, attnum), and the tables whose every
    encrypted column was found as bytea; statements on other tables are refused."""
    wanted = {c.qualified: c for cols in rules.columns.values() for c in cols.values()}
    rows = await conn.fetch(_QUERY, list(wanted))
    attributes: dict[tuple[int, int], EncryptedColumn] = {}
    found: set[str] = set()
    for schema, table, column, oid, attnum, is_bytea in rows:
        spec = wanted[f"{schema}.{table}.{column}"]
        if not is_bytea:
            log.error("encrypted column %s is not of type bytea; statements on %s are "
                      "refused until it is", spec.qualified, spec.table)
            continue
        attributes[(oid, attnum)] = spec
        found.add(spec.qualified)
    ready = frozenset(table for table, cols in rules.columns.items()
                      if all(c.qualified in found for c in cols.values()))
    return attributes, ready
