"""The differential fuzzer's world: the corpus schema's tables with their scope
classes, the proxy's rules for them, and the database setup that makes
PostgreSQL's row-level security the reference for tenant 1.

The reference role ``rls_reader`` has exactly the privileges the rules give a
tenant (tenant tables read/write with an RLS policy on ``rls.tenant``,
read-only tables SELECT only, denied and unknown relations nothing), so
"PostgreSQL RLS for tenant 1" and "the rules for tenant 1" mean the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

TENANT = 1
DATABASE = "difffuzz"
RLS_ROLE = "rls_reader"
FLOOR_ROLE = "fuzz_floor"
FLOOR_PASSWORD = "fuzz-floor-secret"
LOGIN = "fuzz_app"
LOGIN_PASSWORD = "fuzz-app-secret"
SCHEMA_SQL = Path(__file__).resolve().parents[1] / "corpus" / "schema.sql"

# scope classes
TENANT_SCOPE = "tenant"
SHARED_RO = "shared-ro"
SHARED_RW = "shared-rw"
DENIED = "denied"
UNKNOWN = "unknown"
CATALOG = "catalog"
SCOPES = (TENANT_SCOPE, SHARED_RO, SHARED_RW, DENIED, UNKNOWN, CATALOG)

# column types
INT, NUM, TEXT, TS, JSON, ARR = "int", "num", "text", "ts", "json", "arr"


@dataclass(frozen=True)
class Table:
    """A relation the generator may name, and what it is to the rules."""

    schema: str
    name: str
    scope: str
    columns: dict[str, str]
    key: str | None = None
    tenant_col: str | None = None
    writable: bool = False
    #: A predicate (``{a}`` = alias) added wherever a catalog relation is read,
    #: so its rows do not depend on who reads them.
    guard: str | None = None
    #: Columns an INSERT fills, with a value maker name (see generator).
    insert_cols: tuple[str, ...] = ()
    nullable: frozenset[str] = field(default_factory=frozenset)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def cols_of(self, typ: str) -> list[str]:
        return [c for c, t in self.columns.items() if t == typ]


TABLES: tuple[Table, ...] = (
    Table("public", "users", TENANT_SCOPE,
          {"id": INT, "tenant_id": INT, "email": TEXT, "name": TEXT, "ssn": TEXT},
          key="id", tenant_col="tenant_id", writable=True,
          insert_cols=("tenant_id", "email", "name", "ssn"),
          nullable=frozenset({"name", "ssn"})),
    Table("public", "orders", TENANT_SCOPE,
          {"id": INT, "tenant_id": INT, "user_id": INT, "total": NUM, "created_at": TS},
          key="id", tenant_col="tenant_id", writable=True,
          insert_cols=("tenant_id", "user_id", "total"), nullable=frozenset({"user_id"})),
    Table("public", "order_items", TENANT_SCOPE,
          {"id": INT, "tenant_id": INT, "order_id": INT, "sku": TEXT, "qty": INT},
          key="id", tenant_col="tenant_id", writable=True,
          insert_cols=("tenant_id", "order_id", "sku", "qty")),
    Table("public", "documents", TENANT_SCOPE,
          {"id": INT, "tenant_id": INT, "body": JSON, "tags": ARR},
          key="id", tenant_col="tenant_id", writable=True, insert_cols=("tenant_id", "body")),
    Table("public", "tenants", TENANT_SCOPE, {"id": INT, "name": TEXT}, key="id",
          tenant_col="id", insert_cols=("id", "name")),
    Table("public", "countries", SHARED_RO, {"code": TEXT, "name": TEXT}, key="code",
          insert_cols=("code", "name")),
    Table("public", "pgbench_branches", SHARED_RW,
          {"bid": INT, "bbalance": INT, "filler": TEXT}, key="bid", writable=True,
          insert_cols=("bid", "bbalance"), nullable=frozenset({"filler", "bbalance"})),
    Table("public", "audit_events", DENIED,
          {"id": INT, "actor": TEXT, "action": TEXT, "detail": JSON, "created_at": TS},
          key="id", insert_cols=("actor", "action")),
    Table("public", "pgbench_tellers", UNKNOWN,
          {"tid": INT, "bid": INT, "tbalance": INT, "filler": TEXT}, key="tid",
          insert_cols=("tid", "bid", "tbalance")),
    Table("public", "order_summaries", UNKNOWN,
          {"tenant_id": INT, "order_id": INT, "total": NUM, "email": TEXT},
          insert_cols=("tenant_id", "order_id", "total")),
    Table("pg_catalog", "pg_class", CATALOG,
          {"relname": TEXT, "relkind": TEXT, "relnatts": INT},
          guard="{a}.relname IN ('users', 'orders', 'countries', 'audit_events')",
          insert_cols=("relname",)),
    Table("pg_catalog", "pg_namespace", CATALOG, {"nspname": TEXT},
          guard="{a}.nspname IN ('public', 'pg_catalog')", insert_cols=("nspname",)),
    Table("information_schema", "tables", CATALOG,
          {"table_schema": TEXT, "table_name": TEXT, "table_type": TEXT},
          guard="{a}.table_schema = 'public' AND {a}.table_name IN ('users', 'orders', "
                "'countries')", insert_cols=("table_name",)),
    Table("pg_catalog", "pg_authid", CATALOG, {"rolname": TEXT, "rolconnlimit": INT},
          guard="{a}.rolname = 'postgres'", insert_cols=("rolname",)),
)
BY_NAME = {t.name: t for t in TABLES}
TENANT_TABLES = tuple(t for t in TABLES if t.scope == TENANT_SCOPE)
WRITABLE_TENANT = tuple(t for t in TENANT_TABLES if t.writable)

RULES_YAML = f"""\
version: 1
tenant: {{column: tenant_id, type: integer}}
tables:
  public.users: {{scope: tenant}}
  public.orders: {{scope: tenant}}
  public.order_items: {{scope: tenant}}
  public.documents: {{scope: tenant}}
  public.tenants: {{scope: tenant, column: id, writable: false}}
  public.countries: {{scope: shared, writable: false}}
  public.pgbench_branches: {{scope: shared, writable: true}}
  public.audit_events: {{scope: deny}}
session: {{multi_statement: allow, reset_all: allow, sql_prepare: rewrite}}
users:
  {LOGIN}: {{identity: bound, tenant: {TENANT}}}
"""

LEAK_SEQUENCE = "fuzz_leaks"
SEQUENCES = ("users_id_seq", "orders_id_seq", "order_items_id_seq", "documents_id_seq",
             "audit_events_id_seq")


def _tenant_expr(setting: str) -> str:
    return f"NULLIF(current_setting('{setting}', true), '')::int"


def setup_sql() -> list[str]:
    """Statements (run as superuser in the fresh database) after schema.sql."""
    out = [f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{RLS_ROLE}') "
           f"THEN CREATE ROLE {RLS_ROLE} NOLOGIN NOBYPASSRLS; END IF; END $$"]
    out += _grants(RLS_ROLE)
    for t in TENANT_TABLES:
        out.append(f"ALTER TABLE {t.name} ENABLE ROW LEVEL SECURITY")
        check = f"{t.tenant_col} = {_tenant_expr('rls.tenant')}"
        out.append(f"CREATE POLICY tenant_isolation ON {t.name} TO {RLS_ROLE} "
                   f"USING ({check}) WITH CHECK ({check})")
    for t in WRITABLE_TENANT:  # RLS reference fills the tenant column as the proxy does
        out.append(f"ALTER TABLE {t.name} ALTER COLUMN {t.tenant_col} "
                   f"SET DEFAULT {_tenant_expr('rls.tenant')}")
    # now() defaults would differ between the two transactions compared
    out.append("ALTER TABLE orders ALTER COLUMN created_at SET DEFAULT '2024-06-01 00:00+00'")
    out.append("ALTER TABLE audit_events ALTER COLUMN created_at "
               "SET DEFAULT '2024-06-01 00:00+00'")
    out += _leak_trigger()
    out.append("ANALYZE")
    return out


def _grants(role: str) -> list[str]:
    rw = [t.name for t in TABLES if t.writable]
    ro = [t.name for t in TABLES if t.schema == "public" and not t.writable
          and t.scope in (TENANT_SCOPE, SHARED_RO)]
    return [f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role}",
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON {', '.join(rw)} TO {role}",
            f"GRANT SELECT ON {', '.join(ro)} TO {role}",
            f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}"]


def _leak_trigger() -> list[str]:
    """After-row triggers that bump a (non-transactional) sequence whenever a row
    that is not tenant 1's is written, or any row of a table tenants may not write:
    a rolled-back transaction still leaves the count behind."""
    out = [f"CREATE SEQUENCE {LEAK_SEQUENCE}",
           "CREATE FUNCTION fuzz_leak() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$\n"
           "DECLARE col text := TG_ARGV[0];\n"
           "BEGIN\n"
           "  IF col = '' OR (TG_OP <> 'INSERT' AND (to_jsonb(OLD) ->> col) IS DISTINCT FROM "
           f"'{TENANT}')\n"
           "     OR (TG_OP <> 'DELETE' AND (to_jsonb(NEW) ->> col) IS DISTINCT FROM "
           f"'{TENANT}') THEN\n"
           f"    PERFORM nextval('{LEAK_SEQUENCE}');\n"
           "  END IF;\n"
           "  RETURN NULL;\n"
           "END $$"]
    for t in TABLES:
        if t.schema != "public" or t.scope in (SHARED_RW,) or t.name == "order_summaries":
            continue
        arg = t.tenant_col if t.writable else ""
        out.append(f"CREATE TRIGGER fuzz_leak AFTER INSERT OR UPDATE OR DELETE ON {t.name} "
                   f"FOR EACH ROW EXECUTE FUNCTION fuzz_leak('{arg}')")
    return out


def floor_role_sql() -> list[str]:
    """The non-superuser role the proxy's upstream runs as with the floor on; its
    policies and grants come from ``tenant-proxy install`` (proxy.floor), and it has
    no default for ``tenant_proxy.tenant``: only the proxy sets it."""
    return [f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{FLOOR_ROLE}') "
            f"THEN CREATE ROLE {FLOOR_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS "
            f"PASSWORD '{FLOOR_PASSWORD}'; END IF; END $$"]
