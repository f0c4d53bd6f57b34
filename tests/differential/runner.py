"""Run generated statements through the proxy (tenant 1, both protocols) and
directly under PostgreSQL row-level security for tenant 1, and judge the pair.

Each side is one long-lived raw protocol connection; every statement runs in
its own transaction that is rolled back, so writes are compared inside the
transaction and the database never changes. A non-transactional counter
(``schema.LEAK_SEQUENCE``, bumped by triggers) tells whether a statement wrote
a row that is not tenant 1's, even though it was rolled back.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from proxy.auth.scram import make_verifier
from proxy.config.settings import Settings
from proxy.floor.install import install
from proxy.floor.spec import FloorSpec
from proxy.policy.rules import parse_rules
from proxy.sql.engine import plan_statement
from proxy.wire import backend as be
from proxy.wire import frontend as fe
from tests.certs import CertFiles
from tests.differential import schema
from tests.differential.generator import Statement
from tests.harness import (
    Database,
    RunningProxy,
    admin_connect,
    proxy_settings,
    recreate_database,
    running_proxy,
)
from tests.rawclient import RawClient

REFUSALS = ("42501", "0A000")
#: Error classes raised by evaluating expressions over rows (error oracles) ...
EXPRESSION_ERRORS = ("22", "21")
#: ... and with constraint violations, by running over a table RLS denies outright.
DATA_ERRORS = ("22", "21", "23")
LOST = "08006"
SESSION = "SET TimeZone = 'UTC'; SET statement_timeout = '5s'; SET extra_float_digits = 1"
RLS_BEGIN = f"BEGIN; SET LOCAL ROLE {schema.RLS_ROLE}; SET LOCAL rls.tenant = '{schema.TENANT}'"
RESET_SEQUENCES = ", ".join(f"setval('{s}', 100, false)" for s in schema.SEQUENCES)
#: A transaction in which only what tenant 1 may read is left.
OWN_WORLD = "; ".join(
    ["BEGIN", "SET LOCAL session_replication_role = replica", f"SELECT {RESET_SEQUENCES}"]
    + [f"DELETE FROM {t.name} WHERE {t.tenant_col} <> {schema.TENANT}"
       for t in schema.TENANT_TABLES]
    + [f"DELETE FROM {t.name}" for t in schema.TABLES
       if t.scope in (schema.DENIED, schema.UNKNOWN) and t.name != "order_summaries"])


@dataclass
class Result:
    """What one side said about one statement."""

    sqlstate: str | None = None
    message: str = ""
    columns: list[str] = field(default_factory=list)
    rows: list[tuple[str | None, ...]] = field(default_factory=list)
    tag: str | None = None
    copy: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.sqlstate is None

    def same_data(self, other: Result, ordered: bool) -> bool:
        if ordered:
            return self.rows == other.rows and self.copy == other.copy
        return _sorted(self.rows) == _sorted(other.rows) and \
            sorted(self.copy) == sorted(other.copy)

    def summary(self) -> str:
        if self.sqlstate:
            return f"error {self.sqlstate}: {self.message}"
        body = self.rows[:4] if self.rows else self.copy[:4]
        more = " ..." if max(len(self.rows), len(self.copy)) > 4 else ""
        return f"{self.tag} {self.columns} {body}{more}"


def _sorted(rows: list[tuple[str | None, ...]]) -> list[tuple[str | None, ...]]:
    return sorted(rows, key=lambda r: tuple((v is None, v or "") for v in r))


def _result(messages: list[be.BackendMessage]) -> Result:
    out = Result()
    for m in messages:
        if isinstance(m, be.ErrorResponse) and out.sqlstate is None:
            out.sqlstate, out.message = m.sqlstate, m.message
        elif isinstance(m, be.RowDescription):
            out.columns = [c.name for c in m.columns]
        elif isinstance(m, be.DataRow):
            out.rows.append(tuple(None if v is None else v.decode("utf-8", "replace")
                                  for v in m.values))
        elif isinstance(m, be.CommandComplete):
            out.tag = m.tag
        elif isinstance(m, be.CopyData):
            out.copy.extend(m.data.decode("utf-8", "replace").splitlines())
    return out


class Side:
    """One raw connection that runs statements in rolled-back transactions."""

    def __init__(self, port: int, user: str, password: str, database: str) -> None:
        self.args = (port, user, password, database)
        self.reconnects = 0
        self.client = self._connect()

    def _connect(self) -> RawClient:
        port, user, password, database = self.args
        client = RawClient.connect(port)
        seen = client.login(user, password, database)
        errors = [m for m in seen if isinstance(m, be.ErrorResponse)]
        if errors or not seen:
            raise RuntimeError(f"login of {user} failed: {errors}")
        client.query(SESSION)
        return client

    def query(self, sql: str) -> Result:
        """A simple Query on its own (no transaction around it)."""
        self.client.send(fe.Query(sql))
        return _result(self._until_ready(1)[0])

    def run(self, sql: str, params: tuple[str | None, ...] | None, begin: str = "BEGIN"
            ) -> Result:
        """``sql`` between ``begin`` and ROLLBACK, simple Query when ``params`` is
        None, else Parse/Bind/Describe/Execute/Sync; the three are pipelined."""
        if params is None:
            stmt: list[object] = [fe.Query(sql)]
        else:
            values = tuple(None if p is None else p.encode() for p in params)
            stmt = [fe.Parse("", sql), fe.Bind("", "", (), values), fe.Describe("P", ""),
                    fe.Execute("", 0), fe.Sync()]
        try:
            self.client.send(fe.Query(begin), *stmt, fe.Query("ROLLBACK"))
            groups = self._until_ready(3)
        except (OSError, ConnectionError) as exc:
            return self._lost(str(exc))
        if len(groups) < 3:
            return self._lost("connection closed")
        return _result(groups[1])

    def _lost(self, why: str) -> Result:
        self.reconnects += 1
        try:
            self.client.close()
        finally:
            self.client = self._connect()
        return Result(sqlstate=LOST, message=f"connection lost: {why}")

    def _until_ready(self, n: int) -> list[list[be.BackendMessage]]:
        groups: list[list[be.BackendMessage]] = [[]]
        while len(groups) <= n:
            msg = self.client.recv()
            if msg is None:
                return groups[:-1]
            groups[-1].append(msg)
            if isinstance(msg, be.ReadyForQuery):
                groups.append([])
        return groups[:-1]

    def close(self) -> None:
        self.client.close()


# ------------------------------------------------------------------ verdicts
AGREE, REFUSED, MISMATCH = "agree", "refused", "mismatch"
LEAK, WRONG, FIDELITY, REFUSAL = "leak", "wrong-result", "fidelity", "refusal"
#: A condition that fails on rows the tenant may see, evaluated by one plan and not the
#: other: PostgreSQL promises no evaluation order, so neither answer is wrong.
EVAL_ORDER = "evaluation-order"
CLASSES = (LEAK, WRONG, FIDELITY, EVAL_ORDER, REFUSAL)


@dataclass(frozen=True)
class Verdict:
    outcome: str
    klass: str | None = None
    why: str = ""


@dataclass
class Case:
    """One statement in one protocol, with both sides' results and the verdict."""

    statement: Statement
    protocol: str
    rls: Result
    proxy: Result
    verdict: Verdict

    def report(self) -> str:
        s = self.statement
        sql = s.param_sql if self.protocol == "extended" else s.sql
        params = f"\n    params: {list(s.params)}" if self.protocol == "extended" \
            and s.params else ""
        return (f"[{self.verdict.klass}] {self.verdict.why} ({self.protocol})\n    {sql}"
                f"{params}\n    RLS:   {self.rls.summary()}\n    proxy: {self.proxy.summary()}")


def _count(tag: str | None) -> int | None:
    last = (tag or "").rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else None


def _more(proxy: Result, rls: Result) -> bool:
    """The proxy returned a strict superset of RLS's rows, or its write touched more."""
    mine, theirs = _count(proxy.tag), _count(rls.tag)
    if mine is not None and theirs is not None and mine > theirs:
        return True
    rest = Counter(proxy.rows)
    rest.subtract(Counter(rls.rows))
    return len(proxy.rows) > len(rls.rows) and min(rest.values(), default=0) >= 0


def error_class(state: str | None) -> str:
    return (state or "")[:2]


class Judge:
    """Compares the two sides and tells a leak from any other mismatch."""

    def __init__(self, markers: frozenset[str], admin: Side) -> None:
        self.markers = markers
        self.admin = admin
        self.rules = parse_rules(schema.RULES_YAML)

    def sent(self, stmt: Statement, params: tuple[str | None, ...] | None) -> str:
        """The text the proxy sends upstream for the statement (planned in-process)."""
        sql = stmt.sql if params is None else stmt.param_sql
        plan = plan_statement(sql, self.rules, extended=params is not None)
        return plan.render(str(schema.TENANT)) or sql

    def _own_world(self, stmt: Statement, params: tuple[str | None, ...] | None) -> Result:
        """The proxy's own statement with every row tenant 1 may not see gone."""
        return self.admin.run(self.sent(stmt, params), params, OWN_WORLD)

    def verdict(self, stmt: Statement, params: tuple[str | None, ...] | None, rls: Result,
                proxy: Result, leaked: int) -> Verdict:
        if leaked:
            return Verdict(MISMATCH, LEAK, f"wrote {leaked} row(s) not tenant 1's "
                                           "or of a table tenants may not write")
        if not rls.ok and not proxy.ok:
            return self._both_failed(stmt, params, rls, proxy)
        if not proxy.ok:
            if proxy.sqlstate in REFUSALS:
                return Verdict(MISMATCH, REFUSAL, "refused what RLS runs")
            if error_class(proxy.sqlstate) in EXPRESSION_ERRORS and \
                    self._unscoped_fails_alike(stmt, params, proxy):
                return Verdict(MISMATCH, LEAK, f"error oracle: failed ({proxy.sqlstate}) on "
                                               "rows RLS hides")
            if error_class(proxy.sqlstate) in EXPRESSION_ERRORS and \
                    self._fails_on_own_rows(stmt, params, proxy):
                return Verdict(MISMATCH, EVAL_ORDER, f"proxy failed ({proxy.sqlstate}) on "
                                                     "rows tenant 1 may see; RLS's plan did not")
            return Verdict(MISMATCH, WRONG, f"proxy failed ({proxy.sqlstate}) where RLS ran")
        if not rls.ok:
            lenient = error_class(rls.sqlstate) in EXPRESSION_ERRORS
            return self._leak_or(stmt, params, rls, proxy, EVAL_ORDER if lenient else WRONG,
                                 f"proxy ran what RLS refuses ({rls.sqlstate})")
        if proxy.tag != rls.tag or not proxy.same_data(rls, stmt.ordered):
            return self._leak_or(stmt, params, rls, proxy, WRONG, "different rows or tag")
        if proxy.columns != rls.columns:
            return Verdict(MISMATCH, FIDELITY, "different output column names")
        return Verdict(AGREE)

    def _both_failed(self, stmt: Statement, params: tuple[str | None, ...] | None,
                     rls: Result, proxy: Result) -> Verdict:
        if error_class(rls.sqlstate) == error_class(proxy.sqlstate):
            return Verdict(AGREE)
        if proxy.sqlstate in REFUSALS:
            return Verdict(REFUSED, None, f"refused ({proxy.sqlstate}) where RLS failed "
                                          f"({rls.sqlstate})")
        denied = rls.message.startswith("permission denied")
        if error_class(proxy.sqlstate) in (DATA_ERRORS if denied else EXPRESSION_ERRORS) \
                and self._unscoped_fails_alike(stmt, params, proxy):
            return Verdict(MISMATCH, LEAK, f"error oracle: failed ({proxy.sqlstate}) on rows "
                                           f"RLS hides or denies (RLS: {rls.sqlstate})")
        return Verdict(MISMATCH, FIDELITY, f"different error ({rls.sqlstate} vs "
                                           f"{proxy.sqlstate})")

    def unscoped(self, stmt: Statement, params: tuple[str | None, ...] | None) -> Result:
        """The statement as the superuser, without RLS (rolled back)."""
        sql = stmt.sql if params is None else stmt.param_sql
        return self.admin.run(sql, params, f"BEGIN; SELECT {RESET_SEQUENCES}")

    def _unscoped_fails_alike(self, stmt: Statement, params: tuple[str | None, ...] | None,
                              proxy: Result) -> bool:
        """An error oracle: the statement fails like the proxy's without RLS, and does
        not when every row tenant 1 may not see is gone (same plan: the deleted rows
        are still on disk), so the error came from a hidden row."""
        alike = error_class(proxy.sqlstate)
        if error_class(self.unscoped(stmt, params).sqlstate) != alike:
            return False
        # The proxy's own statement, run where hidden rows do not exist: if it still
        # fails, the failing value was one tenant 1 may see (its plan, not RLS's).
        return error_class(self._own_world(stmt, params).sqlstate) != alike

    def _fails_on_own_rows(self, stmt: Statement, params: tuple[str | None, ...] | None,
                           proxy: Result) -> bool:
        """The proxy's statement fails alike with only tenant 1's rows left: the
        failing value is one the tenant may see."""
        return error_class(self._own_world(stmt, params).sqlstate) == \
            error_class(proxy.sqlstate)

    def _leak_or(self, stmt: Statement, params: tuple[str | None, ...] | None, rls: Result,
                 proxy: Result, otherwise: str, why: str) -> Verdict:
        marker = self.marker(proxy, rls)
        if marker:
            return Verdict(MISMATCH, LEAK, f"{why}; shows {marker!r}")
        unscoped = self.unscoped(stmt, params)
        evidence = unscoped.rows or unscoped.copy or _count(unscoped.tag)
        if evidence and unscoped.tag == proxy.tag and unscoped.same_data(proxy, False) \
                and not (rls.ok and rls.tag == unscoped.tag and rls.same_data(unscoped, False)):
            own = self._own_world(stmt, params)
            if not (own.ok and own.tag == proxy.tag and own.same_data(proxy, False)):
                return Verdict(MISMATCH, LEAK, f"{why}; equals the statement without RLS")
        if rls.ok and _more(proxy, rls):
            return Verdict(MISMATCH, LEAK, f"{why}; more rows than RLS allows (an oracle on "
                                           "hidden rows)")
        return Verdict(MISMATCH, otherwise, why)

    def marker(self, proxy: Result, rls: Result) -> str | None:
        """Another tenant's value (or a tenant_id other than 1) in what the proxy
        returned and RLS did not."""
        for i, name in enumerate(proxy.columns):
            if name == "tenant_id":
                for row in proxy.rows:
                    if row[i] not in (None, str(schema.TENANT)):
                        return f"tenant_id {row[i]}"
        seen = " ".join(v for r in rls.rows for v in r if v) + " ".join(rls.copy)
        got = " ".join(v for r in proxy.rows for v in r if v) + " ".join(proxy.copy)
        low_seen, low_got = seen.lower(), got.lower()
        return next((m for m in self.markers if m in low_got and m not in low_seen), None)


# ------------------------------------------------------------------ tallies
@dataclass
class Tally:
    """Counts per (position, kind, scope) cell and the mismatching cases."""

    cells: dict[tuple[str, str, str], Counter[str]] = field(
        default_factory=lambda: defaultdict(Counter))
    outcomes: Counter[str] = field(default_factory=Counter)
    classes: Counter[str] = field(default_factory=Counter)
    protocols: Counter[str] = field(default_factory=Counter)
    rls_errors: int = 0
    mismatches: list[Case] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, case: Case) -> None:
        v = case.verdict
        key = v.klass if v.outcome == MISMATCH else v.outcome
        self.outcomes[v.outcome] += 1
        self.protocols[case.protocol] += 1
        self.rls_errors += not case.rls.ok
        for cell in case.statement.cells:
            self.cells[cell]["statements"] += 1
            self.cells[cell][key] += 1
        if v.outcome == MISMATCH:
            self.classes[v.klass or ""] += 1
            self.mismatches.append(case)

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())

    def failures(self, classes: tuple[str, ...] = (LEAK, WRONG)) -> list[Case]:
        return [c for c in self.mismatches if c.verdict.klass in classes]


# -------------------------------------------------------------------- world
def create_database(db: Database) -> None:
    """A fresh ``schema.DATABASE``: corpus schema, RLS reference, leak triggers,
    the floor role, and the floor ``tenant-proxy install`` derives from the rules."""

    async def go() -> None:
        await recreate_database(db, schema.DATABASE)
        conn = await admin_connect(db, schema.DATABASE)
        try:
            await conn.execute(schema.SCHEMA_SQL.read_text())
            for sql in [*schema.setup_sql(), *schema.floor_role_sql()]:
                await conn.execute(sql)
            spec = FloorSpec.from_rules(parse_rules(schema.RULES_YAML), [schema.FLOOR_ROLE])
            result = await install(conn, spec, say=lambda _: None)
            assert not result.remaining, [f.problem for f in result.remaining]
            for t in schema.TABLES:
                if t.schema == "public" and t.name != "order_summaries":
                    await conn.execute(f"ALTER TABLE {t.name} SET (autovacuum_enabled = false)")
        finally:
            await conn.close()

    asyncio.run(go())


def markers(admin: Side) -> frozenset[str]:
    """Distinctive values of rows tenant 1 may not read, lower-cased."""
    hidden, visible = set(), set()
    for t in schema.TABLES:
        if t.scope != schema.TENANT_SCOPE and t.name != "audit_events":
            continue
        cols = [c for c, typ in t.columns.items() if typ in (schema.TEXT, schema.NUM,
                                                              schema.JSON, schema.ARR)
                and (t.scope == schema.TENANT_SCOPE or typ == schema.JSON)]
        if not cols:
            continue
        mine = "false" if t.scope == schema.DENIED else \
            f"{t.tenant_col} = {schema.TENANT}" if t.tenant_col else "true"
        res = admin.query(f"SELECT {mine}, {', '.join(f'{c}::text' for c in cols)} FROM {t.name}")
        for row in res.rows:
            (visible if row[0] == "t" else hidden).update(v.lower() for v in row[1:] if v)
    return frozenset(v for v in hidden - visible if len(v) >= 5 and
                     not any(v in w for w in visible))


def fuzz_settings(db: Database, certs: CertFiles, rules: Path, floor: bool) -> Settings:
    base = proxy_settings(db, certs)
    role = schema.FLOOR_ROLE if floor else db.superuser
    passwords = dict(base.upstream.passwords)
    passwords[schema.FLOOR_ROLE] = schema.FLOOR_PASSWORD
    if db.superuser_password:
        passwords[db.superuser] = db.superuser_password
    upstream = replace(base.upstream, database=schema.DATABASE,
                       roles={schema.LOGIN: role}, passwords=passwords)
    auth = replace(base.auth, users={**base.auth.users,
                                     schema.LOGIN: make_verifier(schema.LOGIN_PASSWORD)})
    return replace(base, upstream=upstream, auth=auth, rules=str(rules))


class Fuzzer:
    """The two sides, the judge and the loop over statements."""

    def __init__(self, proxy: RunningProxy, db: Database) -> None:
        superuser = (db.port, db.superuser, db.superuser_password or "", schema.DATABASE)
        self.rls = Side(*superuser)
        self.admin = Side(*superuser)
        self.proxy = Side(proxy.port, schema.LOGIN, schema.LOGIN_PASSWORD, schema.DATABASE)
        self.judge = Judge(markers(self.admin), self.rls)
        self.tally = Tally()
        self.start_digest = self.digest()

    def digest(self) -> str:
        """Every row of every table (the run must leave them as they were)."""
        parts = []
        for t in schema.TABLES:
            if t.schema == "public":
                res = self.admin.query(f"SELECT md5(string_agg(x::text, ',' ORDER BY x::text))"
                                       f" FROM {t.name} x")
                parts.append(res.rows[0][0] if res.rows else "")
        return ",".join(p or "" for p in parts)

    def leaks(self) -> int:
        res = self.admin.query(f"SELECT CASE WHEN is_called THEN last_value ELSE 0 END "
                               f"FROM {schema.LEAK_SEQUENCE}; "
                               f"SELECT {RESET_SEQUENCES}")
        return int(res.rows[0][0]) if res.rows else 0

    def run(self, stmt: Statement) -> list[Case]:
        """Both protocols; each compared with RLS in the same protocol."""
        forms: list[tuple[str, tuple[str | None, ...] | None]] = [("simple", None)]
        forms.append(("extended", stmt.params if stmt.params else ()))
        cases = []
        for protocol, params in forms:
            sql = stmt.sql if params is None else stmt.param_sql
            if stmt.writes:
                self.leaks()
            rls = self.rls.run(sql, params, RLS_BEGIN)
            before = self.leaks() if stmt.writes else 0
            proxy = self.proxy.run(sql, params)
            leaked = self.leaks() - before if stmt.writes else 0
            verdict = self.judge.verdict(stmt, params, rls, proxy, leaked)
            case = Case(stmt, protocol, rls, proxy, verdict)
            self.tally.add(case)
            cases.append(case)
        return cases

    def run_all(self, statements: Iterator[Statement] | list[Statement]) -> Tally:
        start = time.monotonic()
        for stmt in statements:
            self.run(stmt)
        self.tally.seconds += time.monotonic() - start
        return self.tally

    def close(self) -> None:
        for side in (self.rls, self.admin, self.proxy):
            side.close()


@contextmanager
def fuzzer(db: Database, certs: CertFiles, workdir: Path, floor: bool = False
           ) -> Iterator[Fuzzer]:
    """A fresh fuzz database, a proxy in front of it (upstream: the superuser, or
    with ``floor`` the RLS-bound floor role) and a Fuzzer over both."""
    create_database(db)
    rules = workdir / "differential-rules.yaml"
    rules.write_text(schema.RULES_YAML)
    with running_proxy(fuzz_settings(db, certs, rules, floor)) as proxy:
        fz = Fuzzer(proxy, db)
        try:
            yield fz
        finally:
            fz.close()
