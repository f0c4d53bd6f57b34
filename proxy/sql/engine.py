"""From statement text to a Plan: split and classify with PostgreSQL's grammar,
police utility statements, scope data statements with sqlglot, cross-check.

Pure: text and rules in, a Plan out (or a PgError inside the plan). Nothing
here knows about sessions or tenants; ``proxy.session`` applies plans.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace

import sqlglot
from pglast import ast, enums

from proxy.errors import PgError, Refused, Unsupported
from proxy.policy.rules import Rules, TableRule
from proxy.sql.builtins import SAFE_SETTINGS
from proxy.sql.copyin import CopyFormat
from proxy.sql.facts import statement_facts
from proxy.sql.plan import IdentityAction, Plan, SqlObject
from proxy.sql.relations import check_row_locks, check_sequences, classify
from proxy.sql.scope import Reference, references
from proxy.sql.sealing import Sealing, seal_statement
from proxy.sql.sidechannels import check_show
from proxy.sql.sidechannels import check_statement as check_side_channels
from proxy.sql.splice import TENANT_SENTINEL, Splicer
from proxy.sql.statements import (
    DATA_STATEMENTS,
    Statement,
    SyntaxErr,
    check_functions,
    check_node_types,
    check_pg_class,
    split,
    walk,
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


def _checked_nodes(stmt: Statement) -> list[ast.Node]:
    """The nodes the syntax and function checks see: a PREPARE's or DECLARE's query."""
    node = stmt.node
    if isinstance(node, (ast.PrepareStmt, ast.DeclareCursorStmt)):
        return walk(node.query) + walk(getattr(node, "argtypes", None))
    if isinstance(node, ast.CopyStmt):
        return walk(node.query) + walk(node.relation) + walk(node.attlist) + walk(
            node.whereClause)
    return stmt.nodes


def _encrypted_tables(refs: list[Reference], rules: Rules) -> set[str]:
    if rules.encryption is None or not rules.encryption.columns:
        return set()
    return {r.qualified for r in refs if r.role != "cte"} & set(rules.encryption.columns)


def _sealed(stmt: Statement, kind: type[ast.Node], rules: Rules
            ) -> tuple[Statement, Sealing | None]:
    """The statement with encrypted-column values marked for sealing (sqlglot), and
    what to seal; the statement as it is when it touches no encrypted column."""
    try:
        trees = sqlglot.parse(stmt.text, read="postgres")
    except Exception as exc:  # sqlglot raises more than ParseError on odd input
        raise Unsupported("tenant-proxy cannot analyze this statement for encrypted columns",
                          detail=str(exc).splitlines()[0][:200]) from exc
    if len(trees) != 1 or trees[0] is None:
        raise Unsupported("tenant-proxy cannot analyze this statement for encrypted columns")
    sealing = seal_statement(trees[0], rules)
    if not sealing.params and not sealing.literals:
        return stmt, sealing or None
    (again,) = split(trees[0].sql(dialect="postgres"))
    if not isinstance(again.node, kind):
        raise Unsupported("tenant-proxy cannot analyze this statement for encrypted columns")
    return again, sealing


_RESERVED = "__tenant_proxy_"


def _check_reserved(stmt: Statement) -> None:
    """The names the rewriter writes (the tenant sentinel, sealed placeholders) are
    the client's in no spelling: not in the text, in any case, nor in any name or
    string the parser decoded (U&"..." escapes included)."""
    if _RESERVED in stmt.text.lower() or any(
            isinstance(n, ast.String) and n.sval.lower().startswith(_RESERVED)
            for n in stmt.nodes):
        raise Refused(f"statements may not contain names starting with {_RESERVED}",
                      hint="They are reserved for the proxy's own rewriting.")


def plan_data(stmt: Statement, rules: Rules) -> _Data:
    """Check and scope one data statement (SELECT, INSERT, UPDATE, DELETE, COPY,
    or SQL PREPARE/DECLARE of one): classify every relation reference, then splice
    the tenant in where it is read or written."""
    node = stmt.node
    if isinstance(node, ast.SelectStmt) and node.intoClause is not None:
        raise Refused("SELECT INTO creates a table; DDL is not allowed",
                      hint="Use INSERT INTO ... SELECT into an existing table.")
    if isinstance(node, ast.MergeStmt):
        raise Unsupported("MERGE is not supported by tenant-proxy",
                          hint="Use INSERT ... ON CONFLICT, UPDATE or DELETE.")
    nodes = _checked_nodes(stmt)
    check_node_types(nodes)
    check_functions(nodes, rules)
    check_side_channels(node, nodes)
    refs = references(node)
    for ref in refs:
        classify(rules, ref)
    check_row_locks(rules, refs)
    check_sequences(rules, nodes)
    if any(r.qualified == "pg_catalog.pg_class" and r.role == "read" for r in refs):
        check_pg_class(nodes)
    relations = [r.qualified for r in refs if r.role != "cte"]
    sealing = None
    if _encrypted_tables(refs, rules) and not isinstance(node, ast.CopyStmt):
        stmt, sealing = _sealed(stmt, type(node), rules)
        refs = references(stmt.node)
    splicer = Splicer(stmt.text, stmt.offset, rules, stmt.nodes)
    copy_in = None
    for ref in refs:
        rule = rules.table(ref.qualified) if ref.role != "cte" else None
        if rule is None or rule.scope != "tenant":
            continue
        if ref.role == "read" and isinstance(ref.writer, ast.CopyStmt):
            splicer.scope_copy_to(ref, rule)
        elif ref.role == "read":
            splicer.scope_read(ref, rule)
        elif ref.role == "copy-from":
            copy_in = _copy_in_format(ref, rule, rules, splicer.scope_copy_from(ref, rule))
        elif isinstance(ref.writer, ast.InsertStmt):
            splicer.scope_insert(ref, rule)
        else:
            splicer.scope_update_delete(ref, rule)
    out = splicer.out
    text = splicer.result() if splicer.edits else stmt.text
    changed = text != stmt.text or (sealing is not None and bool(sealing.params
                                                                or sealing.literals))
    return _Data(text, changed, out.needs_tenant, out.tenant_params, out.tenant_literals,
                 relations, copy_in=copy_in, sealing=sealing)


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
    if not node.is_from and _encrypted_tables(references(node), rules):
        raise Unsupported("COPY ... TO of a table with encrypted columns is not supported",
                          hint="Read encrypted columns with SELECT; the proxy decrypts "
                               "result rows, not COPY data.", reason="encrypted_column")
    return plan_data(stmt, rules)


def _copy_in_format(ref: Reference, rule: TableRule, rules: Rules, filled: bool
                    ) -> CopyFormat:
    """How the session checks (or fills) the tenant column of COPY ... FROM rows."""
    node = ref.writer
    assert isinstance(node, ast.CopyStmt)
    opts = {o.defname: o.arg for o in node.options or ()}
    fmt = opts.get("format")
    kind = fmt.sval if isinstance(fmt, ast.String) else "text"
    if kind == "binary":
        raise Unsupported("binary COPY into a tenant-scoped table is not supported",
                          hint="Use COPY ... FROM STDIN in text or CSV format.")
    encoding = opts.get("encoding")
    if encoding is not None and not (isinstance(encoding, ast.String) and re.sub(
            r"[^a-z0-9]", "", encoding.sval.lower()) in ("utf8", "unicode")):
        raise Unsupported("COPY into a tenant-scoped table must use the UTF8 encoding",
                          hint="The proxy checks rows as UTF-8; another encoding would "
                               "split them differently from the server.")
    header = opts.get("header")
    if isinstance(header, ast.String) and header.sval.lower() == "match":
        raise Unsupported("COPY ... HEADER MATCH is not supported for tenant-scoped tables")

    def text_opt(name: str, default: str) -> str:
        arg = opts.get(name)
        return arg.sval if isinstance(arg, ast.String) else default

    forced = [name for name in ("force_null", "force_not_null", "default") if name in opts]
    if forced:
        raise Unsupported(f"COPY option {forced[0].upper()} is not supported for "
                          "tenant-scoped tables",
                          hint="It changes which fields read as NULL, so the proxy's check "
                               "of the tenant column could see another value than the "
                               "server stores.")
    columns = [c.sval for c in node.attlist or ()]
    csv = kind == "csv"
    quote = text_opt("quote", '"')
    encrypted = rules.encryption.columns.get(ref.qualified, {}) if rules.encryption else {}
    sealed = tuple((i, encrypted[c]) for i, c in enumerate(columns) if c in encrypted)
    if sealed and any(name in opts for name in ("null", "force_null", "force_not_null",
                                                "default")):
        raise Unsupported("COPY options NULL, DEFAULT, FORCE_NULL and FORCE_NOT_NULL are not "
                          "supported with encrypted columns", reason="encrypted_column")
    return CopyFormat(
        csv=csv, delimiter=text_opt("delimiter", "," if csv else "\t"), quote=quote,
        escape=text_opt("escape", quote), header=_copy_flag(opts, "header"),
        tenant_index=None if filled else columns.index(rule.column or ""), sealed=sealed,
        null=text_opt("null", "") if "null" in opts else None)


def _copy_flag(opts: dict[str, object], name: str) -> bool:
    """A boolean COPY option: present without a value means true."""
    if name not in opts:
        return False
    arg = opts[name]
    if isinstance(arg, ast.Boolean):
        return bool(arg.boolval)
    if isinstance(arg, ast.Integer):
        return arg.ival != 0
    if isinstance(arg, ast.String):
        return arg.sval.lower() in ("true", "on", "1")
    return True


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
        _check_reserved(stmt)
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
    return Plan(parts=parts, needs_tenant=needs_tenant, tenant_params=frozenset(params),
                tenant_literals=tuple(literals), channels=tuple(channels), kinds=kinds,
                relations=tuple(relations), copy_in=copy_in, sql_object=sql_object,
                sealing=sealing)


__all__ = ["TENANT_SETTING", "plan_statement"]
