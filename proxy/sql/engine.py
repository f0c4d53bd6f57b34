"""From statement text to a Plan: split with PostgreSQL's grammar, police utility
statements, run data statements through the planner's passes, verify the result.

Pure: text and rules in, a Plan out (or a PgError inside the plan). Nothing
here knows about sessions or tenants; ``proxy.session`` applies plans.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from pglast import ast, enums

from proxy.errors import PgError, Refused, Unsupported
from proxy.policy.rules import Rules
from proxy.sql import passes
from proxy.sql.builtins import SAFE_SETTINGS
from proxy.sql.copyin import CopyFormat
from proxy.sql.facts import statement_facts
from proxy.sql.plan import IdentityAction, Plan, SqlObject
from proxy.sql.scope import references
from proxy.sql.sealing import Sealing
from proxy.sql.sidechannels import check_show
from proxy.sql.splice import TENANT_SENTINEL
from proxy.sql.statements import (
    DATA_STATEMENTS,
    Statement,
    SyntaxErr,
    split,
)
from proxy.sql.verify import verify

log = logging.getLogger("tenant_proxy.sql")

TENANT_SETTING = "tenant_proxy.tenant"

_SETTING_REASONS = {
    "search_path": "it changes how names resolve",
    "role": "it changes privileges",
    "session_authorization": "it changes privileges",
    "standard_conforming_strings": "it changes how the server reads strings, so the proxy's "
                                   "parser would disagree with it",
    "client_encoding": "the proxy reads statements as UTF-8",
}

_CURSOR_HINT = "Use your driver's prepared statements (the extended protocol) instead."


class _Data:
    """The outcome for one data statement."""

    def __init__(self, text: str, changed: bool, needs_tenant: bool,
                 params: set[int], literals: list[str], relations: list[str],
                 copy_in: CopyFormat | None = None, sealing: Sealing | None = None) -> None:
        self.text, self.changed, self.needs_tenant = text, changed, needs_tenant
        self.params, self.literals, self.relations = params, literals, relations
        self.copy_in, self.sealing = copy_in, sealing


def plan_data(stmt: Statement, rules: Rules) -> _Data:
    """Check and scope one data statement (SELECT, INSERT, UPDATE, DELETE, COPY,
    or SQL PREPARE/DECLARE of one) with the planner's passes."""
    ctx = passes.run(stmt, rules)
    splicer, sealing = ctx.splicer, ctx.sealing
    assert splicer is not None
    text = splicer.result()
    changed = text != stmt.text or (sealing is not None and bool(sealing.params
                                                                or sealing.literals))
    out = splicer.out
    return _Data(text, changed, out.needs_tenant, out.tenant_params, out.tenant_literals,
                 ctx.relations, copy_in=ctx.copy_in, sealing=sealing)


def _setting_plan(node: ast.VariableSetStmt, rules: Rules) -> IdentityAction | None:
    kind = node.kind
    name = (node.name or "").lower()
    if kind == enums.VariableSetKind.VAR_RESET_ALL:
        if not rules.reset_all:
            raise Refused("RESET ALL is not allowed",
                          hint="Set session.reset_all: allow in the rules file to let it "
                               "reset the tenant too.")
        return IdentityAction("reset-all")
    if name == TENANT_SETTING:
        if kind == enums.VariableSetKind.VAR_SET_VALUE:
            args = node.args or ()
            if len(args) != 1 or not isinstance(args[0], ast.A_Const) or not isinstance(
                    args[0].val, ast.String):
                raise Refused(f"{TENANT_SETTING} must be set to a single quoted string")
            return IdentityAction("set", args[0].val.sval, bool(node.is_local))
        if kind in (enums.VariableSetKind.VAR_SET_DEFAULT, enums.VariableSetKind.VAR_RESET):
            return IdentityAction("reset", None, bool(node.is_local))
        raise Refused(f"this form of SET {TENANT_SETTING} is not supported")
    if name.startswith("tenant_proxy."):
        raise Refused(f'unknown tenant-proxy setting "{name}"')
    if kind == enums.VariableSetKind.VAR_SET_MULTI or name in SAFE_SETTINGS:
        return None
    reason = _SETTING_REASONS.get(name, "it is not in the proxy's list of safe settings")
    raise Refused(f'setting "{name}" is not allowed: {reason}', reason="setting")


_CURSOR_OPT_HOLD = 0x0020


def _sql_object(stmt: Statement, rules: Rules) -> tuple[_Data, SqlObject]:
    """SQL-level PREPARE/EXECUTE and DECLARE/FETCH/CLOSE: bodies are scoped like
    any statement; the session ties each name to the tenant it was made for."""
    node = stmt.node
    if isinstance(node, (ast.PrepareStmt, ast.DeclareCursorStmt)):
        prepare = isinstance(node, ast.PrepareStmt)
        inner = type(node.query).__name__
        if inner not in DATA_STATEMENTS or (not prepare and inner != "SelectStmt"):
            raise Unsupported(f"{stmt.kind} of a {inner} is not supported")
        data = plan_data(stmt, rules)
        hold = not prepare and bool(node.options & _CURSOR_OPT_HOLD)
        name = node.name if prepare else node.portalname
        return data, SqlObject("prepare" if prepare else "declare", name, hold=hold)
    unchanged = _Data(stmt.text, False, False, set(), [], [])
    if isinstance(node, ast.ExecuteStmt):
        args = tuple(_const_text(a) for a in node.params or ())
        return unchanged, SqlObject("execute", node.name, args)
    if isinstance(node, ast.FetchStmt):
        return unchanged, SqlObject("fetch", node.portalname)
    if isinstance(node, ast.ClosePortalStmt):
        return unchanged, SqlObject("close", node.portalname)
    assert isinstance(node, ast.DeallocateStmt)
    return unchanged, SqlObject("deallocate", None if node.isall else node.name)


def _const_text(node: ast.Node) -> str | None:
    if isinstance(node, ast.A_Const) and not node.isnull:
        value = node.val
        for attr in ("ival", "fval", "sval"):
            if hasattr(value, attr):
                return str(getattr(value, attr))
    return None


_SQL_OBJECT_STATEMENTS = ("PrepareStmt", "ExecuteStmt", "DeclareCursorStmt", "FetchStmt",
                          "ClosePortalStmt", "DeallocateStmt")


def _utility(stmt: Statement, rules: Rules) -> tuple[IdentityAction | None, list[str]]:
    """Allow-listed non-data statements; returns an identity action and channels."""
    node = stmt.node
    if isinstance(node, ast.TransactionStmt):
        if node.kind in (enums.TransactionStmtKind.TRANS_STMT_PREPARE,
                         enums.TransactionStmtKind.TRANS_STMT_COMMIT_PREPARED,
                         enums.TransactionStmtKind.TRANS_STMT_ROLLBACK_PREPARED):
            raise Refused("two-phase commit is not allowed")
        if node.chain:
            raise Unsupported("COMMIT/ROLLBACK AND CHAIN is not supported by tenant-proxy",
                              hint="End the transaction, then BEGIN a new one.")
        return None, []
    if isinstance(node, ast.VariableSetStmt):
        return _setting_plan(node, rules), []
    if isinstance(node, ast.VariableShowStmt):
        if node.name == TENANT_SETTING:
            return IdentityAction("show"), []
        check_show(node)
        return None, []
    if isinstance(node, (ast.ListenStmt, ast.NotifyStmt)):
        return None, [node.conditionname]
    if isinstance(node, (ast.UnlistenStmt, ast.DeallocateStmt, ast.ClosePortalStmt)):
        return None, []
    if isinstance(node, ast.DiscardStmt):
        if node.target == enums.DiscardMode.DISCARD_ALL:
            if not rules.reset_all:
                raise Refused("DISCARD ALL is not allowed",
                              hint="Set session.reset_all: allow in the rules file to let it "
                                   "reset the tenant too.")
            return IdentityAction("reset-all"), []
        return None, []
    if isinstance(node, (ast.PrepareStmt, ast.ExecuteStmt, ast.DeclareCursorStmt,
                         ast.FetchStmt)):
        raise Unsupported(f"SQL-level {stmt.kind.removesuffix('Stmt').upper()} is not "
                          "enabled in the rules file", hint=_CURSOR_HINT)
    if isinstance(node, ast.ExplainStmt):
        raise Unsupported("EXPLAIN is not supported through tenant-proxy",
                          hint="Run EXPLAIN with a migration (bypass) role.")
    if isinstance(node, ast.MergeStmt):
        raise Unsupported("MERGE is not supported by tenant-proxy",
                          hint="Use INSERT ... ON CONFLICT, UPDATE or DELETE.")
    if isinstance(node, ast.DoStmt):
        raise Refused("DO blocks are not allowed")
    what = stmt.kind.removesuffix("Stmt")
    raise Refused(f"{what} statements are not allowed for tenant roles",
                  hint="DDL and administration belong to a bypass (migration) role.",
                  reason="statement_type")


def _copy(stmt: Statement, rules: Rules) -> _Data:
    node = stmt.node
    assert isinstance(node, ast.CopyStmt)
    if node.is_program or node.filename is not None:
        raise Refused("COPY to or from server files or programs is not allowed",
                      hint="Use COPY ... TO STDOUT / FROM STDIN.")
    if node.is_from and node.whereClause is not None:
        rule = rules.table(references(node)[0].qualified)
        if rule is not None and rule.scope == "tenant":
            raise Unsupported("COPY FROM ... WHERE is not supported for tenant-scoped tables")
    if not node.is_from and passes.encrypted_tables(references(node), rules):
        raise Unsupported("COPY ... TO of a table with encrypted columns is not supported",
                          hint="Read encrypted columns with SELECT; the proxy decrypts "
                               "result rows, not COPY data.", reason="encrypted_column")
    return plan_data(stmt, rules)


def plan_statement(sql: str, rules: Rules, *, extended: bool = False) -> Plan:
    """The plan for a whole Query (or Parse) text. Refusals come back inside it."""
    try:
        return _plan(sql, rules, extended)
    except PgError as exc:
        return Plan(error=exc)
    except Exception:  # a bug here must refuse, never forward (I3)
        log.exception("planning failed (a tenant-proxy bug); refusing the statement")
        return Plan(error=Unsupported("tenant-proxy failed to analyze this statement",
                                      hint="This is a tenant-proxy bug; please report it."))


class InvalidEncoding(PgError):
    sqlstate = "22021"
    default_reason = "encoding"


def _plan(sql: str, rules: Rules, extended: bool) -> Plan:
    try:
        sql.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidEncoding("invalid byte sequence for encoding \"UTF8\"") from exc
    statements = split(sql)
    if not statements:
        return Plan()
    kinds = tuple(s.kind for s in statements)
    facts = statement_facts(statements)
    try:
        return replace(_plan_statements(statements, kinds, rules, extended), facts=facts)
    except PgError as exc:
        return Plan(error=exc, kinds=kinds, facts=facts)


def _plan_statements(statements: list[Statement], kinds: tuple[str, ...], rules: Rules,
                     extended: bool) -> Plan:
    if len(statements) > 1:
        if extended:
            raise SyntaxErr("cannot insert multiple commands into a prepared statement")
        if not rules.multi_statement:
            raise Refused("several statements in one query are not allowed",
                          hint="Send them one at a time, or set session.multi_statement: "
                               "allow in the rules file.", reason="multi_statement")
    texts: list[str] = []
    changed = needs_tenant = False
    params: set[int] = set()
    literals: list[str] = []
    channels: list[str] = []
    relations: list[str] = []
    copy_in: CopyFormat | None = None
    sql_object: SqlObject | None = None
    sealing: Sealing | None = None
    for stmt in statements:
        passes.check_reserved(stmt)
        if rules.sql_prepare and stmt.kind in _SQL_OBJECT_STATEMENTS:
            if len(statements) > 1:
                raise Refused(f"{stmt.kind.removesuffix('Stmt').upper()} must be sent on its "
                              "own")
            data, sql_object = _sql_object(stmt, rules)
        elif stmt.kind in DATA_STATEMENTS:
            data = plan_data(stmt, rules)
        elif stmt.kind == "CopyStmt":
            data = _copy(stmt, rules)
        else:
            data = None
        if data is not None:
            texts.append(data.text)
            changed |= data.changed
            needs_tenant |= data.needs_tenant
            params |= data.params
            literals += data.literals
            relations += data.relations
            if data.copy_in is not None and len(statements) > 1:
                raise Refused("COPY ... FROM STDIN into a tenant-scoped table must be sent "
                              "on its own, not in a multi-statement query")
            copy_in = data.copy_in or copy_in
            if data.sealing is not None:
                if len(statements) > 1 or sql_object is not None:
                    raise Unsupported("statements on encrypted columns must be sent on their "
                                      "own, not in a multi-statement query or SQL PREPARE",
                                      reason="encrypted_column")
                sealing = data.sealing
            continue
        identity, found = _utility(stmt, rules)
        if identity is not None:
            if len(statements) > 1:
                raise Refused(f"{TENANT_SETTING} statements must be sent on their own")
            return Plan(identity=identity, kinds=kinds)
        channels += found
        texts.append(stmt.text)
    if not changed:
        parts = None
    else:
        text = "; ".join(texts)
        verify([s.node for s in statements], text, rules)
        parts = tuple(text.split(TENANT_SENTINEL))
    transactions = [s.node.kind for s in statements if isinstance(s.node, ast.TransactionStmt)]
    kinds_of = enums.TransactionStmtKind
    return Plan(parts=parts, needs_tenant=needs_tenant, tenant_params=frozenset(params),
                savepoint=kinds_of.TRANS_STMT_SAVEPOINT in transactions,
                rollback=kinds_of.TRANS_STMT_ROLLBACK in transactions,
                tenant_literals=tuple(literals), channels=tuple(channels), kinds=kinds,
                relations=tuple(relations), copy_in=copy_in, sql_object=sql_object,
                sealing=sealing)


__all__ = ["TENANT_SETTING", "plan_statement"]
