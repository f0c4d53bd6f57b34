"""From statement text to a Plan: split and classify with PostgreSQL's grammar,
police utility statements, scope data statements with sqlglot, cross-check.

Pure: text and rules in, a Plan out (or a PgError inside the plan). Nothing
here knows about sessions or tenants; ``pipeline`` applies plans.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace

import pglast
import pglast.stream
import sqlglot
from pglast import ast, enums
from sqlglot import exp
from sqlglot.errors import SqlglotError

from proxy.errors import PgError, Refused, Unsupported
from proxy.policy.rules import Rules
from proxy.sql.builtins import SAFE_SETTINGS
from proxy.sql.copyin import CopyFormat
from proxy.sql.facts import statement_facts
from proxy.sql.plan import IdentityAction, Plan, SqlObject
from proxy.sql.rewrite import TENANT_SENTINEL, classify_relation, scope_statement
from proxy.sql.sealing import Sealing, seal_statement
from proxy.sql.statements import (
    DATA_STATEMENTS,
    Statement,
    SyntaxErr,
    check_functions,
    check_node_types,
    check_pg_class,
    range_vars,
    split,
)

log = logging.getLogger("tenant_proxy.sql")

TENANT_SETTING = "tenant_proxy.tenant"

_SQLGLOT_KINDS: dict[str, tuple[type[exp.Expression], ...]] = {
    "SelectStmt": (exp.Select, exp.SetOperation, exp.Subquery, exp.Values),
    "InsertStmt": (exp.Insert,),
    "UpdateStmt": (exp.Update,),
    "DeleteStmt": (exp.Delete,),
}

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


def _reads_scoped_table(stmt: Statement, rules: Rules) -> bool:
    """Whether a statement needs the scoping pass; every relation it names is
    checked either way. Catalog and shared-table reads (driver introspection)
    go out exactly as written, without sqlglot."""
    if stmt.kind != "SelectStmt":
        return True
    for ref, is_cte in stmt.refs:
        if is_cte:
            continue
        if ref.catalogname:
            return True  # the scoping pass refuses it with a reason
        qualified = classify_relation(rules, ref.schemaname, ref.relname, "source")
        rule = rules.table(qualified)
        if rule is not None and rule.scope == "tenant":
            return True
    return False


def plan_data(stmt: Statement, rules: Rules) -> _Data:
    if TENANT_SENTINEL in stmt.text:
        raise Refused(f"statements may not contain the reserved word {TENANT_SENTINEL}")
    if isinstance(stmt.node, ast.SelectStmt) and stmt.node.intoClause is not None:
        raise Refused("SELECT INTO creates a table; DDL is not allowed",
                      hint="Use INSERT INTO ... SELECT into an existing table.")
    check_node_types(stmt.nodes)
    check_functions(stmt.nodes, rules)
    if any(r.relname == "pg_class" and r.schemaname in (None, "pg_catalog")
           for r, is_cte in stmt.refs if not is_cte):
        check_pg_class(stmt.nodes)
    if not _reads_scoped_table(stmt, rules):
        relations = [f"{r.schemaname or 'public'}.{r.relname}"
                     for r, is_cte in stmt.refs if not is_cte]
        return _Data(stmt.text, False, False, set(), [], relations)
    if any(token.name == "UIDENT" for token in pglast.parser.scan(stmt.text)):
        raise Unsupported('Unicode-escaped identifiers (U&"...") in statements on '
                          "tenant-scoped tables are not supported",
                          hint="Write the identifier plainly or quoted.")
    try:
        trees = sqlglot.parse(stmt.text, read="postgres")
    except Exception as exc:  # sqlglot raises more than ParseError on odd input
        raise Unsupported("tenant-proxy cannot analyze this statement",
                          detail=str(exc).splitlines()[0][:200],
                          hint="Statements the proxy cannot prove safe are refused.") from exc
    if len(trees) != 1 or trees[0] is None or not isinstance(trees[0],
                                                             _SQLGLOT_KINDS[stmt.kind]):
        raise Unsupported("tenant-proxy cannot analyze this statement",
                          detail=f"its parsers disagree on what it is ({stmt.kind})")
    tree = trees[0]
    sealing = seal_statement(tree, rules)
    result = scope_statement(tree, rules)
    if result.references != range_vars(stmt.nodes):
        raise Unsupported("tenant-proxy cannot analyze this statement",
                          detail="its parsers disagree on the relations it references")
    changed = result.needs_tenant
    try:
        text = tree.sql(dialect="postgres", copy=False) if changed else stmt.text
    except (SqlglotError, ValueError) as exc:
        raise Unsupported("tenant-proxy cannot rewrite this statement",
                          detail=str(exc).splitlines()[0][:200]) from exc
    if changed:
        try:
            pglast.parse_sql(text.replace(TENANT_SENTINEL, "0"))
        except pglast.parser.ParseError as exc:
            raise Unsupported("tenant-proxy cannot rewrite this statement",
                              detail=str(exc)) from exc
    return _Data(text, changed, result.needs_tenant, result.tenant_params,
                 result.tenant_literals, result.relations, sealing=sealing or None)


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


def _inner_text(stmt: Statement, inner: ast.Node, keyword: str) -> tuple[str, str]:
    """Split ``PREPARE p AS <query>`` / ``DECLARE c CURSOR FOR <query>`` into the
    prefix and the query text, confirmed by parsing the query part again."""
    for match in re.finditer(rf"\b{keyword}\b", stmt.text, re.IGNORECASE):
        rest = stmt.text[match.end():]
        try:
            parsed = pglast.parse_sql(rest)
        except pglast.parser.ParseError:
            continue
        if len(parsed) == 1 and parsed[0].stmt == inner:
            return stmt.text[:match.end()], rest.strip()
    raise Unsupported(f"tenant-proxy cannot find the query of this {stmt.kind}")


def _sql_object(stmt: Statement, rules: Rules) -> tuple[_Data, SqlObject]:
    """SQL-level PREPARE/EXECUTE and DECLARE/FETCH/CLOSE: bodies are scoped like
    any statement; the session ties each name to the tenant it was made for."""
    node = stmt.node
    if isinstance(node, (ast.PrepareStmt, ast.DeclareCursorStmt)):
        prepare = isinstance(node, ast.PrepareStmt)
        prefix, text = _inner_text(stmt, node.query, "AS" if prepare else "FOR")
        inner = Statement(type(node.query).__name__, text, node.query)
        if inner.kind not in DATA_STATEMENTS or (not prepare and inner.kind != "SelectStmt"):
            raise Unsupported(f"{stmt.kind} of a {inner.kind} is not supported")
        data = plan_data(inner, rules)
        data.text = f"{prefix} {data.text}"
        hold = not prepare and bool(node.options & _CURSOR_OPT_HOLD)
        name = node.name if prepare else node.portalname
        return data, SqlObject("prepare" if prepare else "declare", name, hold=hold)
    if isinstance(node, ast.ExecuteStmt):
        args = tuple(_const_text(a) for a in node.params or ())
        return _Data(stmt.text, False, False, set(), [], []), SqlObject("execute", node.name,
                                                                         args)
    if isinstance(node, ast.FetchStmt):
        return _Data(stmt.text, False, False, set(), [], []), SqlObject("fetch",
                                                                         node.portalname)
    if isinstance(node, ast.ClosePortalStmt):
        return _Data(stmt.text, False, False, set(), [], []), SqlObject("close",
                                                                         node.portalname)
    assert isinstance(node, ast.DeallocateStmt)
    return _Data(stmt.text, False, False, set(), [], []), SqlObject(
        "deallocate", None if node.isall else node.name)


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
        return (IdentityAction("show") if node.name == TENANT_SETTING else None), []
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
    if node.is_from:
        return _copy_in(stmt, node, rules)
    if node.relation is not None:
        rel = node.relation
        name = f'"{rel.schemaname}".' if rel.schemaname else ""
        cols = ", ".join(f'"{c.sval}"' for c in node.attlist or ()) or "*"
        query_text = f'SELECT {cols} FROM {"ONLY " if not rel.inh else ""}{name}"{rel.relname}"'
    else:
        query_text = pglast.stream.RawStream()(node.query)
    (inner,) = split(query_text)
    data = plan_data(inner, rules)
    if data.sealing is not None and data.sealing.tables:
        raise Unsupported("COPY ... TO of a table with encrypted columns is not supported",
                          hint="Read encrypted columns with SELECT; the proxy decrypts "
                               "result rows, not COPY data.", reason="encrypted_column")
    options = _copy_options(node.options or ())
    return _Data(f"COPY ({data.text}) TO STDOUT{options}", True, data.needs_tenant,
                 data.params, data.literals, data.relations)


def _copy_in(stmt: Statement, node: ast.CopyStmt, rules: Rules) -> _Data:
    rel = node.relation
    qualified = classify_relation(rules, rel.schemaname, rel.relname, "target")
    rule = rules.table(qualified)
    if rule is None or rule.scope != "tenant":
        return _Data(stmt.text, False, False, set(), [], [qualified])
    if node.whereClause is not None:
        raise Unsupported("COPY FROM ... WHERE is not supported for tenant-scoped tables")
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

    columns = [c.sval for c in node.attlist or ()]
    if not columns:
        raise Refused("COPY into a tenant-scoped table needs a column list",
                      hint=f'Name the columns, with or without "{rule.column}".')
    csv = kind == "csv"
    quote = text_opt("quote", '"')
    encrypted = rules.encryption.columns.get(qualified, {}) if rules.encryption else {}
    sealed = tuple((i, encrypted[c]) for i, c in enumerate(columns) if c in encrypted)
    if sealed and any(name in opts for name in ("null", "force_null", "force_not_null",
                                                "default")):
        raise Unsupported("COPY options NULL, DEFAULT, FORCE_NULL and FORCE_NOT_NULL are not "
                          "supported with encrypted columns", reason="encrypted_column")
    layout = CopyFormat(
        csv=csv, delimiter=text_opt("delimiter", "," if csv else "\t"), quote=quote,
        escape=text_opt("escape", quote), header=_copy_flag(opts, "header"),
        tenant_index=columns.index(rule.column) if rule.column in columns else None,
        sealed=sealed)
    text = stmt.text
    if layout.tenant_index is None:
        schema, name = qualified.split(".", 1)
        cols = ", ".join(f'"{c}"' for c in [*columns, rule.column or ""])
        text = f'COPY "{schema}"."{name}" ({cols}) FROM STDIN{_copy_options(node.options or ())}'
    return _Data(text, True, True, set(), [], [qualified], layout)


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


def _copy_options(options: tuple[ast.DefElem, ...]) -> str:
    rendered = []
    for opt in options:
        arg = opt.arg
        if arg is None:
            rendered.append(opt.defname)
        elif isinstance(arg, ast.String):
            rendered.append(f"{opt.defname} '{arg.sval.replace(chr(39), chr(39) * 2)}'")
        elif isinstance(arg, ast.Integer):
            rendered.append(f"{opt.defname} {arg.ival}")
        elif isinstance(arg, ast.Boolean):
            rendered.append(f"{opt.defname} {'true' if arg.boolval else 'false'}")
        elif isinstance(arg, ast.A_Star):
            rendered.append(f"{opt.defname} *")
        elif isinstance(arg, tuple):
            rendered.append(f"{opt.defname} (" + ", ".join(f'"{a.sval}"' for a in arg) + ")")
        else:
            raise Unsupported(f"COPY option {opt.defname} is not supported")
    return f" WITH ({', '.join(rendered)})" if rendered else ""


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
    parts = tuple("; ".join(texts).split(TENANT_SENTINEL)) if changed else None
    return Plan(parts=parts, needs_tenant=needs_tenant, tenant_params=frozenset(params),
                tenant_literals=tuple(literals), channels=tuple(channels), kinds=kinds,
                relations=tuple(relations), copy_in=copy_in, sql_object=sql_object,
                sealing=sealing)


__all__ = ["TENANT_SETTING", "plan_statement"]
