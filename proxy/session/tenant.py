"""One tenant session's application of plans: its tenant, the per-tenant checks
of each plan, and the names (statements, portals, COPY) it keeps from crossing a
tenant switch.

``TenantSession`` is the StatementHook of a client session for a tenant role:
it knows the session's tenant (bound, from a token, or trusted), answers the
identity statements and runs each plan's tenant checks.
"""

from __future__ import annotations

import copy
import functools
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from proxy.anomaly.activity import SessionActivity
from proxy.crypto.columns import ColumnCrypto
from proxy.errors import PgError, Refused, Unsupported
from proxy.policy.rules import UserRule
from proxy.policy.tokens import TokenError
from proxy.session.engine import Engine
from proxy.session.namespace import (
    BOUND,
    CLOSED,
    EXECUTED,
    PARSED,
    QUERY,
    Names,
    Portal,
    Prepared,
    Step,
    Steps,
)
from proxy.session.records import audit_statement, fingerprint
from proxy.session.results import ResultDecryptor
from proxy.sql.copyin import CopyFormat, CopyIn
from proxy.sql.engine import TENANT_SETTING
from proxy.sql.facts import STATEMENT_KINDS
from proxy.sql.normalize import splice
from proxy.sql.plan import IdentityAction, Plan, SqlObject
from proxy.sql.sealing import SealedValue, placeholder
from proxy.sql.splice import TENANT_SENTINEL
from proxy.wire.fields import FieldReader, decode_text
from proxy.wire.frontend import Bind, Close, Parse


class InvalidToken(PgError):
    """A tenant token that does not verify: the statement fails, the session lives."""

    sqlstate = "28000"
    default_reason = "token"


_NO_TENANT_HINT = f"SET {TENANT_SETTING} = '<token>' first."
#: Startup parameters that are not settings, or that the session handles itself.

@dataclass
class TenantSession:
    engine: Engine
    role: str
    user: UserRule
    startup_tenant: str | None
    tenant: str | None = None
    local_tenant: str | None = None
    #: ReadyForQuery sequence number after which the SET LOCAL tenant ends.
    local_until: int | None = None
    #: One namespace for SQL PREPARE and protocol Parse, one for cursors and portals,
    #: as in PostgreSQL; both settled by the server's answers (``steps``).
    statements: Names[Prepared] = field(default_factory=Names)
    portals: Names[Portal] = field(default_factory=Names)
    steps: Steps = field(default_factory=Steps)
    #: Set by the relay before each call: the number of the ReadyForQuery that
    #: will answer the message being inspected.
    rfq_due: int = 0
    inspects: bool = True
    scoped: bool = True
    #: While the server is in COPY FROM STDIN: its rows' checker (None: rows go as sent).
    copying: bool = False
    copy: CopyIn | None = None
    activity: SessionActivity = field(default_factory=SessionActivity)
    #: Decrypts result rows; None when no column is encrypted.
    results: ResultDecryptor | None = None
    _counters: dict[tuple[str, str | None, str], Any] = field(default_factory=dict, repr=False)
    #: Transaction status of the last ReadyForQuery.
    status: bytes = b"I"
    #: A SAVEPOINT was set in the current transaction block.
    _savepoint: bool = field(default=False, repr=False)
    #: A tenant switch planned and not yet sent with its step / awaiting the server.
    _switch: Callable[[], None] | None = field(default=None, repr=False)
    _switching: bool = field(default=False, repr=False)
    #: The session tenant when the current transaction block began, and whether a
    #: ROLLBACK of it was sent.
    _block_tenant: str | None = field(default=None, repr=False)
    _rolling_back: bool = field(default=False, repr=False)
    _switch_due: int = field(default=0, repr=False)
    _switch_ready: Callable[[], None] | None = field(default=None, repr=False)
    #: The Sync epoch being planned and how many statements it has had.
    _epoch_due: int = field(default=-1, repr=False)
    _epoch_count: int = field(default=0, repr=False)
    #: Whether a WITH HOLD cursor was ever declared (portals then outlive transactions).
    _holds: bool = field(default=False, repr=False)
    #: (plan, tenant, Parse, entry) of the last unnamed statement parsed.
    _last_unnamed: tuple[Plan, str | None, Parse, Prepared] | None = field(default=None,
                                                                           repr=False)

    def __post_init__(self) -> None:
        self.tenant = self.startup_tenant
        engine = self.engine
        if engine.rules.encryption is not None:
            self.results = ResultDecryptor(lambda: engine.crypto, lambda: self.current,
                                           self._sealed_columns, self._encrypted)

    def _encrypted(self, name: str) -> bool:
        return any(p.encrypted for p in self.statements.get(name))

    def _sealed_columns(self, name: str) -> dict[int, Any]:
        entries = self.statements.get(name)
        return {n: s.column for n, s in entries[-1].sealed.items()} if entries else {}

    @property
    def current(self) -> str | None:
        return self.local_tenant if self.local_until is not None else self.tenant

    # --- StatementHook ------------------------------------------------------------

    async def warm(self) -> None:
        """The session's tenant key, loaded before its first statement: a first use
        while serving would wait for the key store on the event loop."""
        crypto, tenant = self.engine.crypto, self.current
        if crypto is not None and tenant is not None:
            await crypto.keyring.prefetch(tenant)

    def query(self, sql: str) -> str | None:
        start = time.perf_counter()
        plan: Plan | None = None
        try:
            plan, literals = self.engine.plan_query(sql)
            new_sql = self._apply(plan, literals)
            # Only a COPY, a SQL-level name or a tenant switch needs the server's answer;
            # a CopyInResponse in an epoch with no step is refused (fail closed).
            step = None
            switch, self._switch = self._switch, None
            if plan.sql_object is not None or "CopyStmt" in plan.kinds or switch:
                step = Step(self.rfq_due, QUERY, copies="CopyStmt" in plan.kinds,
                            copy_in=plan.copy_in, tenant=self.current)
                if plan.sql_object is not None:
                    self._sql_object(plan.sql_object, self._inner(plan), step)
                if switch is not None:
                    self._await_switch(step, switch)
        except PgError as exc:
            self._count(plan, "refused", exc, start, sql)
            raise
        self._count(plan, "forwarded" if new_sql is None else "rewritten", None, start, sql)
        if step is not None:
            self.steps.add(step)
        return new_sql

    def parse(self, message: Parse) -> Parse | None:
        start = time.perf_counter()
        plan: Plan | None = None
        try:
            plan = self.engine.plan(message.sql, extended=True)
            new_sql = self._apply(plan)
        except PgError as exc:
            self._count(plan, "refused", exc, start, message.sql)
            raise
        self._count(plan, "forwarded" if new_sql is None else "rewritten", None, start,
                    message.sql)
        sealed = dict(plan.sealing.params) if plan.sealing is not None else {}
        prepared = self._prepared(message, plan, sealed)
        switch, self._switch = self._switch, None
        if switch is not None:
            prepared = replace(prepared, identity=switch, confirmed=False)
        if not (prepared.confirmed and self.statements.only(message.name, prepared)):
            # (The unnamed statement parsed again as it is: a failure would leave the
            # proxy expecting a statement the server dropped, which fails there too.)
            self._define(self.statements, message.name, prepared, PARSED)
        types = message.param_types
        if plan.sealing is not None:
            # The server types these parameters as bytea (or bytea[]): the client's
            # declared type is the logical one, used when sealing at Bind.
            types = tuple(0 if n + 1 in sealed else oid for n, oid in enumerate(types))
        if new_sql is None and types == message.param_types:
            return None
        return Parse(message.name, new_sql or message.sql, types)

    def _prepared(self, message: Parse, plan: Plan, sealed: dict[int, SealedValue]
                  ) -> Prepared:
        """The namespace entry of a Parse. The unnamed statement parsed again with the
        same text and plan for the same tenant (drivers do it for every statement)
        reuses its entry: PostgreSQL drops the unnamed statement at each Parse, so the
        reused entry stands for exactly what a new one would."""
        tenant = self.current if plan.needs_tenant else None
        last = self._last_unnamed
        if last is not None and last[0] is plan and last[1] == tenant and \
                message.name == "" and last[2].param_types == message.param_types:
            return last[3]  # the same plan is the same text
        prepared = Prepared(tenant, plan.tenant_params, message, sealed,
                            encrypted=plan.sealing is not None,
                            copies="CopyStmt" in plan.kinds, copy_in=plan.copy_in,
                            sql_object=plan.sql_object,
                            prepares=None if plan.sql_object is None else self._inner(plan))
        if message.name == "":
            self._last_unnamed = (plan, tenant, message, prepared)
        return prepared

    def _count(self, plan: Plan | None, outcome: str, error: PgError | None,
               start: float, sql: str) -> None:
        """Metrics, anomaly score and audit record of one statement. In enforce mode
        an anomalous statement that was about to be forwarded is refused here."""
        metrics = self.engine.metrics
        verdict = None
        anomaly = self.engine.anomaly
        tenant = self.current
        if anomaly is not None and plan is not None:
            verdict = anomaly.assess(self.role, tenant, plan.fingerprint, plan.facts, sql,
                                     error is not None, self.activity)
            metrics.anomaly_score.observe(verdict.score)
            if verdict.refuse and error is None and plan.identity is None:
                error = Refused(f"statement refused as anomalous: {verdict.reason()}",
                                hint="An operator can review it with "
                                     "`tenant-proxy anomaly report`.", reason="anomaly")
                outcome = "refused"
            elif verdict.flagged and error is None:
                outcome = "flagged"
        metrics.pipeline_seconds.observe(time.perf_counter() - start)
        self.activity.statement(refused=error is not None)
        if plan is not None and plan.identity is not None:
            kind = "identity"
        else:
            kind = STATEMENT_KINDS.get(plan.kinds[0], "utility") if plan and plan.kinds else "other"
        key = (kind, tenant, outcome)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = metrics.statements.labels(
                kind, metrics.tenant_label(tenant), self.role, outcome)
        counter.inc()
        if error is not None:
            metrics.refusals.labels(error.reason).inc()
        if self.engine.audit is not None:
            audit_statement(self.engine.audit, self.role, tenant, kind,
                            plan.fingerprint if plan else fingerprint(sql), outcome, error,
                            plan.facts.relations if plan else (), verdict)
        if error is not None and outcome == "refused" and error.reason == "anomaly":
            raise error

    def bind(self, body: bytes) -> list[Close | Parse | Bind] | None:
        """Check a Bind; a statement prepared for another tenant is prepared again
        for this one first (the messages returned go upstream before the Bind, and
        their answers never reach the client), as drivers that prepare statements
        behind the application's back (psycopg) keep using them after a switch."""
        portal_end = body.index(b"\0")
        statement_end = body.index(b"\0", portal_end + 1)
        portal = decode_text(body[:portal_end])
        name = decode_text(body[portal_end + 1:statement_end])
        entries = self._named(name, self.rfq_due)
        current = self.current
        injected: list[Close | Parse | Bind] | None = None
        if len(entries) == 1 and entries[0].tenant not in (None, current):
            prepared = entries[0]
            if prepared.parse is None:
                raise Refused(f'prepared statement "{name}" was prepared for another tenant',
                              hint="Prepare it again after switching tenant.")
            self._close_step("S", name)
            again = self.parse(prepared.parse)
            injected = [Close("S", name), again or prepared.parse]
            entries = self.statements.get(name, self.rfq_due)
        if len(entries) != 1 or entries[0].tenant not in (None, current):
            self._owned(entries, f'prepared statement "{name}"')
        prepared = entries[-1]
        if len(entries) == 1:
            owner = current if prepared.tenant is not None else None
            plain = not prepared.sealed and not prepared.params
        else:
            owner = current if any(p.tenant is not None for p in entries) else None
            plain = not any(p.sealed or p.params for p in entries)
        entry = Portal(owner, prepared)
        if self.portals.get(portal):
            self._define(self.portals, portal, entry, BOUND)
        else:
            # Nothing the server could hold under this name: whether the Bind succeeds
            # (the entry) or fails (no portal, so an Execute fails there), the entry
            # is all the name can mean, with no answer to wait for.
            self.portals.settle(portal, entry)
        if plain:
            return injected  # nothing in the values to check: no need to decode them
        message = Bind.decode(FieldReader(body, "Bind"))
        if prepared.sealed:
            if len(entries) > 1:
                raise Refused(f'prepared statement "{name}" is being prepared again; bind it '
                              "after the server has answered", reason="encrypted_column")
            message = self._seal_bind(message, prepared)
            injected = [*(injected or []), message]  # the last one replaces the Bind
        for number in sorted({n for p in entries if p.tenant is not None for n in p.params}):
            if number > len(message.params):
                continue  # PostgreSQL itself rejects the parameter count
            value = message.params[number - 1]
            if not self._param_is_tenant(value, message.param_format(number - 1)):
                raise Refused(f"parameter ${number} is not this session's tenant",
                              hint="Rows cannot be written for another tenant.")
        return injected

    def _seal_bind(self, message: Bind, prepared: Prepared) -> Bind:
        """The Bind with encrypted columns' parameters sealed (all sent in binary)."""
        tenant = self.current
        crypto = self._crypto(tenant)
        assert tenant is not None
        declared = prepared.parse.param_types if prepared.parse is not None else ()
        params = list(message.params)
        formats = [message.param_format(i) for i in range(len(params))]
        for number, sealed in prepared.sealed.items():
            if number > len(params):
                continue  # PostgreSQL itself rejects the parameter count
            i = number - 1
            params[i] = crypto.seal_param(tenant, sealed.column, sealed.search, params[i],
                                          formats[i], declared[i] if i < len(declared) else 0)
            formats[i] = 1
        return Bind(message.portal, message.statement, tuple(formats), tuple(params),
                    message.result_formats)

    def execute(self, body: bytes) -> None:
        name = decode_text(body[:body.index(b"\0")])
        portals = self.portals.get(name, self.rfq_due)
        if not portals:
            raise _missing("portal", name)
        if len(portals) != 1 or portals[0].tenant not in (None, self.current):
            self._owned(portals, f'portal "{name}"')
        if len(portals) == 1:  # the common case, without the lists below
            only = portals[0].statement
            if only is None or (not only.copies and only.sql_object is None and
                                only.identity is None):
                return
        statements = [p.statement for p in portals if p.statement is not None]
        copies = [p for p in statements if p.copies]
        if len({id(p.copy_in) for p in copies}) > 1:
            raise Refused(f'portal "{name}" is being bound again; execute it after the '
                          "server has answered")
        objects = [p for p in statements if p.sql_object is not None]
        if not copies and not objects and all(p.identity is None for p in statements):
            return  # only a COPY, a SQL-level name or a switch needs the answer (see query)
        step = Step(self.rfq_due, EXECUTED[0], copies=bool(copies),
                    copy_in=copies[0].copy_in if copies else None, tenant=self.current)
        for statement in objects:
            self._sql_object(statement.sql_object, statement.prepares, step)
        switches = [p.identity for p in statements if p.identity is not None]
        if switches:
            if len(switches) > 1 or len(statements) > 1:
                raise Refused(f'portal "{name}" is being bound again; execute it after the '
                              "server has answered")
            self._await_switch(step, switches[0])
        self.steps.add(step)

    def close(self, body: bytes) -> None:
        message = Close.decode(FieldReader(body, "Close"))
        self._close_step(message.kind, message.name)

    def ready(self, status: bytes, number: int) -> None:
        self.steps.ready(number)
        if self.status == b"I" and status != b"I":
            self._block_tenant = self.tenant  # a transaction block began: roll back to this
        if self._switching and number >= self._switch_due:
            self._switching = False
            switch, self._switch_ready = self._switch_ready, None
            if switch is not None:
                switch()
        # A block that ends with ROLLBACK (or failed) undoes the SETs made in it, as
        # PostgreSQL does; SET LOCAL ends either way (below).
        if status == b"I" and (self.status == b"E" or (self.status == b"T"
                                                        and self._rolling_back)):
            self.tenant = self._block_tenant
        if status == b"I":
            self._savepoint = self._rolling_back = False
        self.status = status
        if self.copying or self.copy is not None:
            self._copy_stop()
        if status == b"I":
            if self._holds:
                self.portals.clear(keep=_held)
            elif len(self.portals):
                self.portals.reset()
            if self.local_until is not None and number >= self.local_until:
                self.local_until = self.local_tenant = None

    def answered(self, kind: int) -> None:
        if (self.copying or self.copy is not None) and kind in EXECUTED:
            self._copy_stop()
        if self.steps:
            self.steps.answered(kind)

    def failed(self) -> None:
        self._switch_ready = None  # the epoch's implicit transaction is rolled back
        self._copy_stop()
        self.steps.error()

    @property
    def executing(self) -> bool:
        return self.steps.executing

    def notification_allowed(self, channel: str) -> bool:
        return self.engine.rules.channel_allowed(channel, self.current)

    def completed(self, rows: int) -> None:
        self.activity.completed(rows)

    def server_error(self, sqlstate: str) -> None:
        self.activity.error()

    def copy_begin(self) -> None:
        """The server entered COPY FROM STDIN for the statement it runs now: rows are
        checked as that statement's plan says; a COPY nothing planned is refused."""
        step = self.steps.running()
        if step is None or not step.copies:
            raise Refused("COPY FROM STDIN of a statement tenant-proxy did not plan as one",
                          reason="copy_unplanned")
        self.copying = True
        if step.copy_in is not None:
            self.copy = self._copy_in(step.copy_in, step.tenant)

    def copy_data(self, data: bytes) -> bytes:
        return data if self.copy is None else self.copy.feed(data)

    def copy_done(self) -> bytes:
        return b"" if self.copy is None else self.copy.finish()

    def copy_end(self) -> None:
        self._copy_stop()

    def _copy_stop(self) -> None:
        self.copying, self.copy = False, None

    def _copy_in(self, fmt: CopyFormat, tenant: str | None) -> CopyIn:
        if tenant is None:
            raise Refused("no tenant is set for this session", hint=_NO_TENANT_HINT,
                          reason="no_tenant")
        seal = None
        if fmt.sealed:
            seal = functools.partial(self._crypto(tenant).seal_copy_field, tenant)
        return CopyIn(fmt, tenant, seal=seal,
                      quote_tenant=self.engine.rules.tenant_type not in ("bigint", "integer"))

    # --- names -----------------------------------------------------------------------

    def _named(self, name: str, due: int) -> list[Prepared]:
        entries = self.statements.get(name, due)
        if not entries:
            raise _missing("prepared statement", name)
        return entries

    def _owned(self, entries: list[Prepared] | list[Portal], what: str) -> None:
        current = self.current
        if len(entries) == 1 and entries[0].tenant in (None, current):
            return
        if any(e.tenant is not None and e.tenant != current for e in entries):
            raise Refused(f"{what} was opened for another tenant",
                          hint="Prepare or open it again after switching tenant.")

    def _define(self, names: Names[Any], name: str, entry: Any, kind: int) -> None:
        """A protocol Parse or Bind sent: the name is settled by its answer."""
        names.define(name, entry, self.rfq_due)
        self.steps.add(Step(self.rfq_due, kind, names=names, name=name, entry=entry))

    def _close_step(self, kind: str, name: str) -> None:
        names: Names[Any] = self.statements if kind == "S" else self.portals
        self.steps.add(Step(self.rfq_due, CLOSED, functools.partial(names.remove, name)))

    def _inner(self, plan: Plan) -> Prepared | None:
        """What a SQL PREPARE of this plan leaves in the namespace."""
        obj = plan.sql_object
        if obj is None or obj.verb != "prepare":
            return None
        return Prepared(self.current if plan.needs_tenant else None, plan.tenant_params)

    def _sql_object(self, obj: SqlObject, inner: Prepared | None, step: Step) -> None:
        """Check a SQL PREPARE, EXECUTE, DECLARE, FETCH, CLOSE or DEALLOCATE about to
        run, and attach what it does to the namespaces to ``step``, which the server's
        answer settles."""
        if obj.verb == "prepare" and obj.name is not None and inner is not None:
            self._pending(self.statements, obj.name, inner, step)
        elif obj.verb == "declare" and obj.name is not None:
            cursor = Portal(self.current if inner is None or inner.tenant else None,
                            hold=obj.hold)
            self._holds |= obj.hold
            self._pending(self.portals, obj.name, cursor, step)
        elif obj.verb == "execute" and obj.name is not None:
            self._execute_sql(obj, step)
        elif obj.verb in ("fetch", "close") and obj.name is not None:
            cursors = self.portals.get(obj.name, step.due)
            if not cursors:
                raise _missing("cursor", obj.name)
            self._owned(cursors, f'cursor "{obj.name}"')
            if obj.verb == "close":
                step.done = functools.partial(self.portals.remove, obj.name)
        elif obj.verb == "close":
            step.done = functools.partial(self.portals.remove_all)
        elif obj.verb == "deallocate":
            names = self.statements
            step.done = functools.partial(names.remove_all) if obj.name is None else \
                functools.partial(names.remove, obj.name)

    def _pending(self, names: Names[Any], name: str, entry: Any, step: Step) -> None:
        names.define(name, entry, step.due)
        step.names, step.name, step.entry = names, name, entry

    def _execute_sql(self, obj: SqlObject, step: Step) -> None:
        """SQL EXECUTE: the checks of every statement the name may stand for."""
        assert obj.name is not None
        entries = self._named(obj.name, step.due)
        self._owned(entries, f'prepared statement "{obj.name}"')
        tenant = self.current
        for prepared in entries:
            if prepared.encrypted:
                raise Unsupported(f'prepared statement "{obj.name}" uses encrypted columns; '
                                  "execute it through the protocol (Bind), not EXECUTE",
                                  reason="encrypted_column")
            if prepared.tenant is None:
                continue
            for number in prepared.params:
                arg = obj.args[number - 1] if number <= len(obj.args) else None
                if arg is None or not self._literal_is_tenant(arg, tenant):
                    raise Refused(f"parameter ${number} is not this session's tenant",
                                  hint="Rows cannot be written for another tenant.")
        copies = [p for p in entries if p.copies]
        step.copies = bool(copies)
        step.copy_in = copies[0].copy_in if copies else None

    # --- plans ---------------------------------------------------------------------

    def _apply(self, plan: Plan, literals: tuple[str, ...] | None = None) -> str | None:
        if self._switching:
            raise Refused("the tenant switch sent before this statement is not confirmed yet",
                          hint="Wait for the server's answer to SET tenant_proxy.tenant (a "
                               "Sync) before sending the next statement.",
                          reason="tenant_switch")
        if self._epoch_due != self.rfq_due:
            self._epoch_due, self._epoch_count = self.rfq_due, 0
        self._epoch_count += 1
        if plan.savepoint and self.status != b"I":
            self._savepoint = True
        if plan.rollback:
            self._rolling_back = True
        if plan.identity is not None:
            return self._identity(plan.identity)
        if plan.error is not None:
            # A copy: raising the cached object would chain every traceback to it.
            raise copy.copy(plan.error)
        tenant = self.current
        rules = self.engine.rules
        if plan.needs_tenant and tenant is None:
            raise Refused("no tenant is set for this session", hint=_NO_TENANT_HINT,
                          reason="no_tenant")
        checked: list[str] = list(plan.tenant_literals) if plan.tenant_literals else []
        if literals is not None and plan.tenant_params:
            checked += [_literal_value(literals[n - 1]) or literals[n - 1]
                        for n in plan.tenant_params]
        for literal in checked:
            if not self._literal_is_tenant(literal, tenant):
                raise Refused(f"tenant value {literal[:40]} is not this session's tenant",
                              hint="Rows cannot be written for another tenant.",
                              reason="tenant_mismatch")
        if plan.sealing is not None:
            if self.results is None:
                raise Refused("this session started before column encryption was configured",
                              hint="Reconnect to use encrypted columns.",
                              reason="encrypted_column")
            missing = plan.sealing.tables - self._crypto(tenant).tables
            if missing:
                raise Unsupported(f"encrypted table {min(missing)} is not in the database as "
                                  "the rules file describes it",
                                  hint="Its encrypted columns must exist with type bytea; the "
                                       "proxy reads the catalog again every "
                                       "encryption.key_refresh seconds.",
                                  reason="encrypted_column")
        for channel in plan.channels:
            if not rules.channel_allowed(channel, tenant):
                raise Refused(f'channel "{channel}" does not belong to this tenant',
                              reason="channel",
                              hint="Channel names start with "
                                   f"{rules.channel_prefix.format(tenant='<tenant>')}.")
        tenant_sql = rules.tenant_literal(tenant) if tenant is not None else "NULL"
        sealing = plan.sealing
        if plan.template is not None and literals is not None:
            if sealing is not None and sealing.params:
                literals = self._seal_literals(sealing.params, literals)
            return splice(plan.template, literals).replace(TENANT_SENTINEL, tenant_sql)
        if plan.parts is None:
            return None
        text = plan.render(tenant_sql)
        if sealing is not None and sealing.literals and text is not None:
            crypto = self._crypto(tenant)
            for number, (sealed, literal) in sealing.literals.items():
                text = text.replace(placeholder(number), crypto.seal_literal(
                    tenant, sealed.column, sealed.search, literal), 1)  # type: ignore[arg-type]
        return text

    def _crypto(self, tenant: str | None) -> ColumnCrypto:
        crypto = self.engine.crypto
        if crypto is None or tenant is None:
            raise Refused("encrypted columns are not available in this session",
                          hint=_NO_TENANT_HINT if tenant is None else
                          "The proxy has not loaded its key store yet.")
        return crypto

    def _seal_literals(self, sealed: dict[int, SealedValue],
                       literals: tuple[str, ...]) -> tuple[str, ...]:
        """Template literals of encrypted columns replaced by their ciphertexts."""
        tenant = self.current
        crypto = self._crypto(tenant)
        out = list(literals)
        for number, value in sealed.items():
            if number <= len(out):
                text = out[number - 1]
                out[number - 1] = crypto.seal_literal(tenant, value.column, value.search,
                                                      _sealable_literal(text))
        return tuple(out)

    def _literal_is_tenant(self, literal: str, tenant: str | None) -> bool:
        if tenant is None:
            return False
        if self.engine.rules.tenant_type in ("bigint", "integer"):
            return re.fullmatch(r"-?[0-9]{1,19}", literal) is not None and \
                int(literal) == int(tenant)
        return literal == tenant

    def _param_is_tenant(self, value: bytes | None, fmt: int) -> bool:
        tenant = self.current
        if value is None or tenant is None:
            return False
        kind = self.engine.rules.tenant_type
        if fmt == 0:
            return self._literal_is_tenant(value.decode("utf-8", "replace"), tenant)
        if kind in ("bigint", "integer"):
            return len(value) in (2, 4, 8) and int.from_bytes(value, "big", signed=True) \
                == int(tenant)
        if kind == "uuid":
            return len(value) == 16 and uuid.UUID(bytes=value) == uuid.UUID(tenant)
        return value.decode("utf-8", "replace") == tenant

    # --- identity --------------------------------------------------------------------

    def _identity(self, action: IdentityAction) -> str | None:
        """SET/RESET of the tenant: the text to send, and the switch staged for the
        caller to make when the server confirms it (``_await_switch``), so that a
        statement PostgreSQL rolls back, skips or never executes switches nothing.

        Switches run only where their effect is known: each first in its Sync epoch,
        never after a SAVEPOINT of the block (a ROLLBACK TO would undo it), SET LOCAL
        only inside a block. A session-level switch inside a block is undone when the
        block rolls back (``ready``), as PostgreSQL undoes it."""
        if action.verb == "show":
            return None
        if action.verb != "reset-all" and self.user.identity == "bound":
            raise Refused(f'role "{self.role}" is bound to tenant {self.user.tenant}; '
                          "it cannot switch tenant")
        self._check_switch_point(action.local)
        if action.verb == "reset-all":
            startup = self.startup_tenant

            def reset_all() -> None:
                self.tenant, self.local_until, self.local_tenant = startup, None, None

            self._switch = reset_all
            return None
        tenant = self.startup_tenant if action.verb == "reset" else self._resolve(
            action.value or "")
        due = self.rfq_due

        def switch() -> None:
            if action.local:
                self.local_tenant, self.local_until = tenant, due
            else:  # a session SET also replaces an earlier SET LOCAL, as in PostgreSQL
                self.tenant, self.local_tenant, self.local_until = tenant, None, None

        self._switch = switch
        scope = "LOCAL " if action.local else ""
        if tenant is None:
            return f"SET {scope}{TENANT_SETTING} TO DEFAULT"
        return f"SET {scope}{TENANT_SETTING} = '{tenant.replace(chr(39), chr(39) * 2)}'"

    def _check_switch_point(self, local: bool) -> None:
        if self.rfq_due > self.steps.received + 1 or self._epoch_count > 1:
            raise Refused("a tenant switch must be the first statement after the server has "
                          "answered the ones before it",
                          hint="Send it on its own and wait for the answer (Sync).",
                          reason="tenant_switch")
        if local and self.status != b"T":
            raise Refused("SET LOCAL of the tenant works only inside a transaction block",
                          hint="BEGIN, then SET LOCAL tenant_proxy.tenant, then the "
                               "transaction's statements.", reason="tenant_switch")
        if self._savepoint:
            raise Refused("switching tenant after a SAVEPOINT is not supported: ROLLBACK TO "
                          "would switch it back", hint="Switch before the first SAVEPOINT of "
                          "the transaction, or outside it.", reason="tenant_switch")

    def _await_switch(self, step: Step, switch: Callable[[], None]) -> None:
        """The switch happens at the ReadyForQuery that ends the step's epoch, if the
        step completed and nothing in the epoch failed (an error rolls the implicit
        transaction back, SET included); until then no other statement is planned."""
        assert step.done is None  # identity statements are nothing else
        self._switching, self._switch_due = True, step.due

        def completed() -> None:
            self._switch_ready = switch  # ``failed`` drops it if the epoch fails later

        step.done = completed

    def _resolve(self, value: str) -> str:
        """A token (or, for trusted roles, a bare id) to a canonical tenant id."""
        rules = self.engine.rules
        if self.user.identity == "trusted":
            try:
                return rules.check_tenant(value)
            except ValueError as exc:
                raise InvalidToken(str(exc)) from exc
        verifier = self.engine.verifier
        try:
            if verifier is None:
                raise TokenError("no token keys are configured in the rules file")
            claims = verifier.verify(value, role=self.role)
            if claims.expires - time.time() > rules.tokens.max_ttl:
                raise TokenError(f"tenant token is valid for longer than tokens.max_ttl "
                                 f"({rules.tokens.max_ttl} s)")
            return rules.check_tenant(claims.tenant)
        except (TokenError, ValueError) as exc:
            self.tenant = self.local_tenant = None
            self.local_until = None
            raise InvalidToken(f"invalid tenant token: {exc}",
                               hint="The session now has no tenant.") from exc


class _NoStatement(PgError):
    sqlstate = "26000"
    default_reason = "missing_name"


class _NoPortal(PgError):
    sqlstate = "34000"
    default_reason = "missing_name"


def _held(portal: Portal) -> bool:
    """WITH HOLD cursors outlive their transaction."""
    return portal.hold


def _missing(what: str, name: str) -> PgError:
    """PostgreSQL's error for a name it does not hold (or the proxy cannot vouch for)."""
    kind = _NoStatement if what == "prepared statement" else _NoPortal
    return kind(f'{what} "{name}" does not exist')

def _literal_value(literal: str) -> str | None:
    """The value of a plain number or standard string literal, else None."""
    if literal.startswith("'") and literal.endswith("'") and len(literal) >= 2:
        return literal[1:-1].replace("''", "'")
    return literal if re.fullmatch(r"-?\d+", literal) else None


def _sealable_literal(literal: str) -> str | None:
    """The value of a string, number or boolean literal about to be encrypted."""
    if re.fullmatch(r"-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", literal) or \
            literal.lower() in ("true", "false"):
        return literal
    return _literal_value(literal)
