"""Issue 7, SQL-level hostility: statements of the attack corpus, mutated in ways that
PostgreSQL reads the same (comments, case, quoting, whitespace, parentheses, Unicode
escapes, literal spellings, qualification: tests/mutations.py), never let tenant 1 read or
change another tenant's rows.

Every entry of tests/corpus/attacks.yaml gets a fixed number of mutants (seeded, so a run
is reproducible; ``MUTATION_SEED`` picks other mutants, ``MUTATION_SCALE`` more of them).
Each runs through the proxy as tenant 1 inside BEGIN/ROLLBACK. The oracle is PostgreSQL's
own row-level security, as in test_differential_rls.py: the same mutant runs directly as
role ``rls_reader`` with ``rls.tenant = 1``, also inside BEGIN/ROLLBACK.

* Entries that may run (``expected: rewrite``, or ``safe_alternative: rewrite``): if the
  proxy ran the mutant, its command tag, rows and COPY output equal the RLS result. If RLS
  raised an error, the proxy must have refused or errored too, unless what it returned is
  the corpus's verified tenant-1 result for the entry (``INSERT ... ON CONFLICT DO UPDATE``
  on another tenant's row: RLS raises, the scoped statement inserts and updates nothing).
  Refusing is always allowed (fail closed) and counted.
* Entries that must be refused: every mutant is refused too. It means the same as the
  original, so a mutant that runs is a spelling the proxy's checks miss.
* Always: nothing only tenants 2 and 3 have (their e-mail domains, SSNs, secrets, names)
  appears in what the proxy returned; while the proxy's transaction is still open, no
  version of another tenant's row (nor of the shared and forbidden tables) was written
  (inserted, updated, deleted) by it, read from the heap pages so that uncommitted inserts
  count; after ROLLBACK every table is as before. Row locks on other tenants' rows that the
  RLS transaction did not hold as well are counted and printed, not failed: they are
  neither a read nor a change (see ``LOCKS``).
* Every mutant that may run is also run directly as the superuser and must give what the
  original statement gives: a check on the mutation operators themselves.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import psycopg
import pytest
from pglast import parser
from psycopg import pq

from proxy.wire import backend as be
from tests import mutations
from tests.certs import CertFiles
from tests.corpus_harness import (
    CORPUS,
    CORPUS_DB,
    RLS_ROLE,
    SCOPED,
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
from tests.harness import (
    Database,
    ProxyErrors,
    RunningProxy,
    proxy_password,
    proxy_settings,
    running_proxy,
)
from tests.rawclient import RawClient

TENANT = 1
ENTRIES = load_entries("attacks.yaml")
SEED = os.environ.get("MUTATION_SEED", "issue-7")
SCALE = int(os.environ.get("MUTATION_SCALE", "1"))
#: Mutants per entry that may run, and per entry that must be refused.
PER_ENTRY = {True: 5 * SCALE, False: 3 * SCALE}
#: The run is void below this many mutated statements.
BUDGET = 500 * SCALE

#: What the mutations may assume about the corpus database; the fixture checks every claim.
CONTEXT = mutations.Context(
    relations=frozenset({"users", "orders", "order_items", "documents", "tenants",
                         "countries", "audit_events", "order_summaries"}),
    functions=frozenset({"count", "max", "substr", "string_agg", "set_config", "pg_sleep",
                         "pg_notify", "query_to_xml", "pg_read_file", "pg_ls_dir"}),
    database=CORPUS_DB,
    no_inheritance=True,
)

#: Values only tenants 2 and 3 have in tests/corpus/schema.sql.
MARKERS = ("@globex.test", "@initech.test", "222-22-", "333-33-", "g-key", "i-key", "globex",
           "initech", "tps report", "dave", "erin", "frank", "grace", "heidi")
#: Tables whose rows tenant 1 may never write or lock beyond what RLS does.
PROBED = (*SCOPED, "countries", "audit_events")
REFUSALS = ("42501", "0A000", "28000")
STATS: Counter[str] = Counter()
#: Rows of other tenants that a proxied statement left locked (and RLS did not).
LOCKS: list[str] = []
#: Fail-closed outcomes worth reading: mutants of statements the proxy runs that it
#: refused, or that failed upstream although RLS ran them; by the operators applied.
NOTES: dict[str, list[str]] = {}
REFUSED_STEPS: Counter[str] = Counter()


def _may_run(entry: dict[str, Any]) -> bool:
    return entry["expected"] == "rewrite" or entry.get("safe_alternative") == "rewrite"


def mutants_for(entry: dict[str, Any]) -> list[mutations.Mutant]:
    """The entry's mutants: distinct, none equal to the original text."""
    wanted = PER_ENTRY[_may_run(entry)]
    out: list[mutations.Mutant] = []
    seen = {entry["sql"]}
    for k in range(wanted * 20):
        if len(out) == wanted:
            break
        mutant = mutations.mutate(entry["sql"], random.Random(f"{SEED}/{entry['id']}/{k}"),
                                  CONTEXT)
        if mutant.sql not in seen:
            seen.add(mutant.sql)
            out.append(mutant)
    return out


# ---------------------------------------------------------------- the mutations themselves


def test_mutants_are_equivalent() -> None:
    """Every mutant the live test sends parses to the original's tree (and fingerprint),
    or to the same normal form; the constructive operators never needed a retry."""
    mutations.REJECTED.clear()
    steps: Counter[str] = Counter()
    total = 0
    for entry in ENTRIES:
        found = mutants_for(entry)
        assert len(found) == PER_ENTRY[_may_run(entry)], entry["id"]
        for mutant in found:
            total += 1
            steps.update(mutant.steps)
            assert mutations.equivalent(entry["sql"], mutant.sql, CONTEXT), mutant
            if mutant.exact:
                assert parser.fingerprint(mutant.sql) == parser.fingerprint(entry["sql"])
    assert total >= BUDGET
    rejected = {op: n for op, n in mutations.REJECTED.items() if op in mutations.CONSTRUCTIVE}
    assert not rejected, f"constructive operators produced non-equivalent text: {rejected}"
    assert set(steps) == set(mutations.OPERATORS), f"operators never used: {steps}"


@pytest.mark.parametrize(("original", "mutated"), [
    ("SELECT id FROM users ORDER BY 1", "SELECT id FROM users ORDER BY 1::int"),
    ("SELECT id FROM users GROUP BY 1", "SELECT id FROM users GROUP BY +1"),
    ("SELECT DISTINCT ON (1) id FROM users", "SELECT DISTINCT ON ('1'::int) id FROM users"),
    ("SELECT 1", "SELECT 1::int"),  # the column name changes from ?column? to int4
    ("SELECT 1 FROM users", "SELECT '1' FROM users"),
    ("SELECT 1 AS x", "SELECT 1::int8 AS x"),
    ("SELECT 3000000000 AS x", "SELECT 3000000000::int AS x"),
    ("SELECT 1 AS x", "SELECT 2 AS x"),
    ("WITH users AS (SELECT 1 AS id) SELECT id FROM users",
     "WITH users AS (SELECT 1 AS id) SELECT id FROM public.users"),
    ("SELECT * FROM users", "SELECT * FROM pg_temp.users"),
    ("SELECT * FROM users", "SELECT * FROM other.public.users"),
    ("SELECT * FROM users", 'SELECT * FROM "USERS"'),
    ("SELECT * FROM find_users('x')", "SELECT * FROM pg_catalog.find_users('x')"),
    ("SELECT numeric(10, 2) '1'", "SELECT numeric((10)::int, 2) '1'"),
    ("CREATE TEMP VIEW countries AS SELECT 1 AS code",
     "CREATE TEMP VIEW public.countries AS SELECT 1 AS code"),
    ("SELECT 'a' AS x", "SELECT E'a\\\\' AS x"),
])
def test_normal_form_keeps_meaning_changes_apart(original: str, mutated: str) -> None:
    assert not mutations.equivalent(original, mutated, CONTEXT)
    assert not mutations.equivalent(original, mutated, mutations.Context())


def test_only_needs_the_no_inheritance_claim() -> None:
    original, mutated = "SELECT * FROM users", "SELECT * FROM ONLY users"
    assert mutations.equivalent(original, mutated, CONTEXT)
    assert not mutations.equivalent(original, mutated,
                                    mutations.Context(relations=CONTEXT.relations))


# ------------------------------------------------------------------------- live harness


@dataclass(frozen=True)
class Touched:
    """Rows of other tenants (and of shared or forbidden tables) that one open
    transaction wrote (inserted, updated, deleted) or locked: (table, block/line)."""

    writes: frozenset[tuple[str, str]] = frozenset()
    locks: frozenset[tuple[str, str]] = frozenset()


@dataclass
class Result:
    """What a statement gave when run directly (superuser, or under RLS)."""

    error: str | None = None
    message: str = ""
    command: str | None = None
    rows: list[list[str | None]] = field(default_factory=list)
    copy_out: bytes = b""
    touched: Touched = field(default_factory=Touched)

    def summary(self) -> str:
        if self.error:
            return f"error {self.error}: {self.message}"
        return f"{self.command}: {self.rows[:4]}"


@dataclass
class Env:
    db: Database
    proxy: RunningProxy
    loop: asyncio.AbstractEventLoop
    direct: psycopg.Connection = field(init=False)
    probe: psycopg.Connection = field(init=False)
    admin: asyncpg.Connection = field(init=False)
    client: RawClient | None = None
    #: Digests of every row, and of every row that is not tenant 1's.
    pristine: str = ""
    pristine_others: str = ""

    def connect(self) -> None:
        dsn = self.db.dsn(self.db.superuser, CORPUS_DB)
        self.direct = psycopg.connect(dsn, autocommit=True)
        for setting in ("TimeZone = 'UTC'", "DateStyle = ISO", "statement_timeout = '10s'",
                        "lock_timeout = '2s'"):
            self.direct.execute(f"SET {setting}")
        self.probe = psycopg.connect(dsn, autocommit=True)
        self.probe.execute("CREATE SCHEMA IF NOT EXISTS probe")
        self.probe.execute("CREATE EXTENSION IF NOT EXISTS pageinspect SCHEMA probe")
        self.probe.execute("SET search_path = public, probe")  # its SQL functions need it
        # the page functions estimate 1000 rows each: no JIT compilation for 20 tuples
        self.probe.execute("SET jit = off")
        self.admin = self.run(asyncpg.connect(dsn))

    def close(self) -> None:
        self.drop_client()
        self.direct.close()
        self.probe.close()
        self.run(self.admin.close())

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def session(self) -> RawClient:
        if self.client is None:
            client = RawClient.connect(self.proxy.port)
            seen = client.login("corpus_app", proxy_password("corpus_app"), CORPUS_DB,
                                options=f"-c tenant_proxy.tenant={TENANT} -c TimeZone=UTC "
                                        "-c DateStyle=ISO")
            assert not any(getattr(m, "sqlstate", None) for m in seen), seen
            self.client = client
        return self.client

    def drop_client(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def reset_sequences(self) -> None:
        self.run(reset_sequences(self.admin))

    def digest(self, *, tenant: int | None = None) -> str:
        return self.run(digest(self.admin, tenant=tenant))

    def restore(self) -> None:
        """Something escaped a ROLLBACK: rebuild the database and reconnect."""
        self.close()
        self.run(recreate_corpus_db(self.db))
        self.connect()

    def backend_xids(self, pid: int | None) -> list[str]:
        """The transaction id of backend ``pid``, or with None of the proxy's upstream
        session (the only other client backend of the corpus database in a transaction)."""
        if pid is not None:
            rows = self.probe.execute(
                "SELECT backend_xid::text FROM pg_stat_activity WHERE pid = %s "
                "AND backend_xid IS NOT NULL", (pid,)).fetchall()
        else:
            mine = [self.direct.pgconn.backend_pid, self.probe.pgconn.backend_pid,
                    self.admin.get_server_pid()]
            rows = self.probe.execute(
                "SELECT backend_xid::text FROM pg_stat_activity WHERE datname = %s "
                "AND backend_type = 'client backend' AND backend_xid IS NOT NULL "
                "AND pid <> ALL(%s)", (CORPUS_DB, mine)).fetchall()
        return [r[0] for r in rows]

    def touched(self, xids: list[str]) -> Touched:
        """Tuple versions written or locked by the (still open) transactions ``xids``,
        read from the heap pages, so uncommitted inserts count as well."""
        if not xids:
            return Touched()
        parts = []
        for table in PROBED:
            column = SCOPED.get(table)
            attr = ("t_attrs[(SELECT attnum FROM pg_attribute WHERE attrelid = "
                    f"'{table}'::regclass AND attname = '{column}')]") if column \
                else "NULL::bytea"
            parts.append(
                f"SELECT '{table}', blk || '/' || it.lp, it.t_xmin::text, it.t_xmax::text, "
                f"it.t_infomask, {attr} FROM generate_series(0, (pg_relation_size('{table}') "
                "/ current_setting('block_size')::int)::int - 1) AS blk, LATERAL "
                f"probe.heap_page_item_attrs(probe.get_raw_page('{table}', blk), "
                f"'{table}'::regclass, false) AS it WHERE it.t_xmin::text = ANY(%(x)s) "
                "OR it.t_xmax::text = ANY(%(x)s) OR it.t_infomask & 4096 <> 0")
        rows = self.probe.execute(" UNION ALL ".join(parts), {"x": xids}).fetchall()
        writes, locks = set(), set()
        for table, where, xmin, xmax, infomask, tenant_bytes in rows:
            if tenant_bytes is not None and \
                    int.from_bytes(tenant_bytes, sys.byteorder, signed=True) == TENANT:
                continue
            key = (table, where)
            if xmin in xids:
                writes.add(key)
            if infomask & 0x1000:  # HEAP_XMAX_IS_MULTI: look at the members
                try:
                    members = self.probe.execute(
                        "SELECT xid::text, mode FROM pg_get_multixact_members(%s::xid)",
                        (xmax,)).fetchall()
                except psycopg.Error:
                    members = []
                for xid, mode in members:
                    if xid in xids:
                        (writes if mode in ("nokeyupd", "upd") else locks).add(key)
            elif xmax in xids:
                # HEAP_XMAX_LOCK_ONLY, or the pre-9.3 spelling of a plain exclusive lock
                lock_only = infomask & 0x0080 or infomask & 0x1050 == 0x0040
                (locks if lock_only else writes).add(key)
        return Touched(frozenset(writes), frozenset(locks))


@pytest.fixture(scope="module")
def env(db: Database, certs: CertFiles, proxy_errors: ProxyErrors) -> Iterator[Env]:
    create_corpus_db(db)
    settings = corpus_settings(proxy_settings(db, certs), CORPUS / "rules.yaml",
                               {"corpus_app": proxy_password("corpus_app")})
    crashes_before = sum(1 for r in proxy_errors.records if r.exc_info)
    loop = asyncio.new_event_loop()
    with running_proxy(settings) as proxy:
        environment = Env(db, proxy, loop)
        environment.connect()
        try:
            _check_context(environment.direct)
            environment.reset_sequences()
            environment.pristine = environment.digest()
            environment.pristine_others = environment.digest(tenant=TENANT)
            yield environment
        finally:
            environment.close()
            loop.close()
    print(f"\nmutation steps applied, by operator: {dict(mutations.APPLIED)}")
    crashes = [r.getMessage() for r in proxy_errors.records if r.exc_info][crashes_before:]
    assert not crashes, f"the proxy logged exceptions (bugs): {crashes}"


def _check_context(conn: psycopg.Connection) -> None:
    """Every claim in CONTEXT holds in the corpus database."""
    assert conn.execute("SELECT current_database()").fetchone() == (CORPUS_DB,)
    assert conn.execute("SHOW search_path").fetchone() == ('"$user", public',)
    roles = ["postgres", RLS_ROLE, "corpus_app", conn.info.user]
    assert not conn.execute("SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)",
                            (roles,)).fetchall(), "a schema named after a role"
    public = {r[0] for r in conn.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace")}
    assert public >= CONTEXT.relations
    assert not conn.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = 'pg_catalog'::regnamespace "
        "AND relname = ANY(%s)", (sorted(CONTEXT.relations),)).fetchall()
    for name in CONTEXT.functions:
        where = {r[0] for r in conn.execute(
            "SELECT pronamespace::regnamespace::text FROM pg_proc WHERE proname = %s",
            (name,))}
        assert where == {"pg_catalog"}, (name, where)
    assert conn.execute("SELECT count(*) FROM pg_inherits").fetchone() == (0,)


def _collect(pg: pq.PGconn, result: pq.PGresult, copy_data: str | None) -> Result:
    out = Result()
    while result.status in (pq.ExecStatus.COPY_OUT, pq.ExecStatus.COPY_IN):
        if result.status == pq.ExecStatus.COPY_OUT:
            while True:
                n, chunk = pg.get_copy_data(0)
                if n < 0:
                    break
                out.copy_out += bytes(chunk)
        else:
            if copy_data is not None:
                pg.put_copy_data(copy_data.encode())
            pg.put_copy_end()
        final = pg.get_result()
        while pg.get_result() is not None:
            pass
        if final is None:
            break
        result = final
    error = result.error_field(pq.DiagnosticField.SQLSTATE)
    if error:
        out.error = error.decode()
        out.message = (result.error_message or b"").decode(errors="replace").strip()
        return out
    out.command = (result.command_status or b"").decode()
    values = [[result.get_value(r, c) for c in range(result.nfields)]
              for r in range(result.ntuples)]
    out.rows = [[None if v is None else bytes(v).decode() for v in row] for row in values]
    return out


def run_direct(env: Env, entry: dict[str, Any], sql: str, *, rls: bool) -> Result:
    """``sql`` straight on PostgreSQL in BEGIN/ROLLBACK: as the superuser, or with
    ``rls`` as the RLS role for tenant 1. Sequences are reset first."""
    env.reset_sequences()
    pg = env.direct.pgconn
    pg.exec_(b"BEGIN")
    try:
        if rls:
            pg.exec_(f"SET LOCAL ROLE {RLS_ROLE}; SET LOCAL rls.tenant = '{TENANT}'".encode())
        for setup in entry.get("setup") or []:
            _collect(pg, pg.exec_(setup.encode()), None)
        params = entry.get("params")
        if params is None:
            result = pg.exec_(sql.encode())
        else:
            result = pg.exec_params(sql.encode(),
                                    [None if p is None else str(p).encode() for p in params])
        out = _collect(pg, result, entry.get("copy_data"))
        out.touched = env.touched(env.backend_xids(pg.backend_pid))
    finally:
        pg.exec_(b"ROLLBACK")
    return out


def run_proxy(env: Env, entry: dict[str, Any], sql: str) -> tuple[Outcome, Touched]:
    """``sql`` through the proxy as tenant 1, in BEGIN/ROLLBACK unless the entry cannot
    run in a transaction block. A connection the proxy closes counts as a refusal."""
    env.reset_sequences()
    client = env.session()
    wrap = entry.get("wrap") != "none"
    if wrap:
        assert run_statement(client, "BEGIN").error is None
    for setup in entry.get("setup") or []:
        run_statement(client, setup)
    out = run_statement(client, sql, entry.get("params"), entry.get("copy_data"))
    touched = env.touched(env.backend_xids(None))
    after = run_statement(client, "ROLLBACK" if wrap else "SELECT 1")
    if after.command is None and after.error is None:  # the proxy hung up
        env.drop_client()
        if out.command is None and out.error is None:
            STATS["connection closed"] += 1
            out.error = be.ErrorResponse({"C": "08006", "M": "the proxy closed the connection"})
    return out, touched


def _same(a: Result, b: Result) -> bool:
    if a.error or b.error:
        return a.error == b.error
    return a.command == b.command and a.copy_out == b.copy_out and \
        rows_equal(a.rows, b.rows, ordered=False)


def _proxy_matches(out: Outcome, rls: Result) -> bool:
    return out.command == rls.command and out.copy_out == rls.copy_out and \
        rows_equal(out.rows, rls.rows, ordered=False)


def _verified_result(entry: dict[str, Any], out: Outcome) -> bool:
    """The proxy's outcome is the corpus's hand-scoped tenant-1 result for the entry."""
    expected = entry.get("expected_result") or {}
    if "command" not in expected or "sqlstate" in expected:
        return False
    return out.command == expected["command"] and \
        rows_equal(out.rows, expected.get("rows") or [], ordered=False) and \
        out.copy_out.decode() == expected.get("copy_out", "")


def _leaks(entry: dict[str, Any], rows: list[list[str | None]], copy_out: bytes) -> list[str]:
    text = entry["sql"].lower()
    cells = [c.lower() for row in rows for c in row if c] + [copy_out.decode().lower()]
    return sorted({m for m in MARKERS if m not in text for c in cells if m in c})


def check_mutant(env: Env, entry: dict[str, Any], mutant: mutations.Mutant,
                 baseline: Result | None, original_ran: bool) -> list[str]:
    """Run one mutant both ways and return what is wrong with the proxy's handling."""
    sql = mutant.sql
    may_run = baseline is not None
    STATS["tried"] += 1
    problems = []
    rls = run_direct(env, entry, sql, rls=True) if may_run else None
    if may_run:
        assert baseline is not None
        assert rls is not None
        superuser = run_direct(env, entry, sql, rls=False)
        if not _same(superuser, baseline):
            problems.append(f"MUTATION BUG (not equivalent): superuser got "
                            f"{superuser.summary()}, original {baseline.summary()}")
        assert not _leaks(entry, rls.rows, rls.copy_out), ("oracle leaks", rls.summary())
        assert not rls.touched.writes, ("RLS wrote other tenants' rows", rls.touched)
    out, touched = run_proxy(env, entry, sql)

    if out.refused:
        assert out.error is not None
        state = out.error.sqlstate
        if rls is not None and rls.error:
            STATS["both errored"] += 1
        elif state in REFUSALS:
            STATS["refused"] += 1
            if not may_run:
                STATS["refused (must be refused)"] += 1
        else:
            STATS["proxy errored, RLS ran" if may_run else "errored"] += 1
        if may_run and original_ran and not (rls is not None and rls.error):
            kind = "refused" if state in REFUSALS else "errored upstream"
            STATS[f"{kind}, the original ran"] += 1
            REFUSED_STEPS.update(set(mutant.steps))
            NOTES.setdefault(f"{kind}, the original ran", []).append(
                f"{entry['id']}: {state} {out.error.message[:90]!r} for {sql!r}")
        elif not may_run and state not in REFUSALS:
            NOTES.setdefault("must be refused, failed upstream instead", []).append(
                f"{entry['id']}: {state} {out.error.message[:90]!r} for {sql!r}")
    elif not may_run:
        problems.append(f"REFUSAL BYPASS: must be refused, but ran: {out.summary()}")
    else:
        assert rls is not None
        if not original_ran:
            STATS["ran, the original was refused"] += 1
        if rls.error is None and _proxy_matches(out, rls):
            STATS["same result"] += 1
        elif rls.error and _verified_result(entry, out):
            STATS["RLS errored, proxy gave the verified result"] += 1
        elif rls.error:
            problems.append(f"RLS raised {rls.error} ({rls.message}) but the proxy ran it: "
                            f"{out.summary()}")
        else:
            problems.append(f"ISOLATION: result differs from RLS: proxy {out.summary()}, "
                            f"RLS {rls.summary()}")
    leaked = _leaks(entry, out.rows, out.copy_out)
    if leaked:
        problems.append(f"ISOLATION: other tenants' values in the result: {leaked}")
    if touched.writes:
        problems.append(f"ISOLATION: wrote other tenants' rows: {sorted(touched.writes)}")
    extra_locks = touched.locks - (rls.touched.locks if rls is not None else frozenset())
    if extra_locks:
        # Not a read or a change, so reported rather than failed: the conflicting row of
        # ON CONFLICT DO UPDATE is locked before the proxy's tenant predicate in its WHERE
        # is evaluated, while under RLS the statement fails and the lock goes with it.
        STATS["held a row lock RLS did not"] += 1
        LOCKS.append(f"{entry['id']}: {sorted(extra_locks)} by {sql!r}")
    if env.digest() != env.pristine:
        if env.digest(tenant=TENANT) != env.pristine_others:
            problems.append("ISOLATION: other tenants' rows changed although the "
                            "transaction was rolled back")
        else:
            problems.append("ESCAPE: tenant 1's rows changed although the transaction was "
                            "rolled back")
        env.restore()
    return [f"{p}\n    mutant {sql!r} (steps {', '.join(mutant.steps)})" for p in problems]


def _totals() -> str:
    ran_same = STATS["same result"] + STATS["RLS errored, proxy gave the verified result"]
    return (f"tried {STATS['tried']}, ran with the same result {ran_same} "
            f"(of which RLS errored and the proxy gave the verified tenant-1 result "
            f"{STATS['RLS errored, proxy gave the verified result']}), "
            f"refused {STATS['refused']} ({STATS['refused (must be refused)']} of them "
            f"mutants of entries that must be refused), both errored {STATS['both errored']}, "
            f"other proxy errors {STATS['proxy errored, RLS ran'] + STATS['errored']}, "
            f"connections closed {STATS['connection closed']}; {dict(STATS)}")


# ------------------------------------------------------------------------------ live tests


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["id"] for e in ENTRIES])
def test_mutated_attack(env: Env, entry: dict[str, Any]) -> None:
    may_run = _may_run(entry)
    baseline = run_direct(env, entry, entry["sql"], rls=False) if may_run else None
    problems: list[str] = []
    try:
        original, _ = run_proxy(env, entry, entry["sql"])
        if env.digest() != env.pristine:
            problems.append("the original statement changed the database through the proxy")
            env.restore()
        for mutant in mutants_for(entry):
            problems += check_mutant(env, entry, mutant, baseline, not original.refused)
    finally:
        env.drop_client()
    assert not problems, f"{entry['id']}: {len(problems)} problem(s):\n" + "\n".join(problems)


@pytest.mark.live
def test_mutant_budget() -> None:
    """Runs after the mutants: the totals, and the run cannot have passed vacuously."""
    print(f"\nmutated attacks: {_totals()}")
    for note in LOCKS[:10]:
        print(f"  other tenant's row left locked: {note}")
    print(f"  operators in mutants refused although the original ran: {dict(REFUSED_STEPS)}")
    for kind, notes in NOTES.items():
        for note in notes[:12]:
            print(f"  {kind}: {note}")
    assert STATS["tried"] >= BUDGET, _totals()
