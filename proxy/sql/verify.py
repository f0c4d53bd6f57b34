"""What is sent is what was checked (invariant I8).

Before a plan is kept, the SQL it will send is parsed again with
PostgreSQL's grammar and checked against the client's statements on its
own, independently of how the rewriting passes produced it:

- the same number of statements, of the same kinds;
- the same relation references, resolved the same way (so nothing the
  client did not name appears, and nothing became a CTE or stopped being one);
- every read of a tenant-scoped table is the scoping subquery, exactly;
- every write to one carries its tenant enforcement (the WHERE conjunct, the
  filled or checked tenant column, the ON CONFLICT guard);
- COPY still goes to or from the client, never a file or program.

A failure here is a tenant-proxy bug: the statement is refused, logged and
counted, never forwarded.
"""

from __future__ import annotations

import logging
from collections import Counter

import pglast
from pglast import ast, enums

from proxy.errors import Unsupported
from proxy.policy.rules import Rules
from proxy.sql.scope import Reference, references
from proxy.sql.splice import INNER_ALIAS, TENANT_SENTINEL, same_column

log = logging.getLogger("tenant_proxy.sql")


class VerificationFailed(Unsupported):
    """The rewritten statement does not prove what the plan claims (a proxy bug)."""

    sqlstate = "XX000"
    default_reason = "verification"
    default_hint = "This is a tenant-proxy bug; the statement was not sent. Please report it."


def verify(client: list[ast.Node], sent: str, rules: Rules) -> None:
    """Raise VerificationFailed unless ``sent`` is a faithful scoping of ``client``."""
    try:
        parsed = [raw.stmt for raw in pglast.parse_sql(sent)]
    except pglast.parser.ParseError as exc:
        _fail("the rewritten statement does not parse", str(exc))
    if [type(n) for n in parsed] != [type(n) for n in client]:
        _fail("the rewritten text holds other statements than the client's")
    for original, out in zip(client, parsed, strict=True):
        _verify_statement(original, out, rules)


def _fail(why: str, detail: str | None = None) -> None:
    log.error("verification failed: %s (%s)", why, detail or "")
    raise VerificationFailed(f"tenant-proxy could not verify its rewrite: {why}",
                             detail=detail)


def _verify_statement(original: ast.Node, out: ast.Node, rules: Rules) -> None:
    before, after = references(original), references(out)
    if Counter(r.key for r in before) != Counter(r.key for r in after):
        _fail("the rewrite changed the relations the statement references")
    if isinstance(out, ast.CopyStmt):
        assert isinstance(original, ast.CopyStmt)
        if out.is_program or out.filename is not None or out.is_from != original.is_from:
            _fail("the rewritten COPY does not go to or from the client")
    for ref in after:
        if ref.role == "cte":
            continue
        rule = rules.table(ref.qualified)
        if rule is None or rule.scope != "tenant":
            continue
        assert rule.column is not None
        if ref.role == "read" and not _is_wrapper(ref, rule.column):
            _fail(f"a read of {ref.qualified} is not scoped")
        elif ref.role == "target":
            _verify_target(ref, rule.column)
        elif ref.role == "copy-from":
            assert isinstance(ref.writer, ast.CopyStmt)
            if rule.column not in [c.sval for c in ref.writer.attlist or ()]:
                _fail(f"COPY into {ref.qualified} does not name the tenant column")


def _sentinel(node: object) -> bool:
    return isinstance(node, ast.ColumnRef) and len(node.fields) == 1 and isinstance(
        node.fields[0], ast.String) and node.fields[0].sval == TENANT_SENTINEL


def _column(node: object, table: str, column: str) -> bool:
    return isinstance(node, ast.ColumnRef) and [getattr(f, "sval", None)
                                                for f in node.fields] == [table, column]


def _is_predicate(node: object, table: str, column: str) -> bool:
    return isinstance(node, ast.A_Expr) and node.kind == enums.A_Expr_Kind.AEXPR_OP and \
        [n.sval for n in node.name] == ["="] and _column(node.lexpr, table, column) and \
        _sentinel(node.rexpr)


def _is_wrapper(ref: Reference, column: str) -> bool:
    """``(SELECT *[, system columns] FROM T AS _tp WHERE _tp.col = <tenant>)``."""
    if len(ref.path) < 2:
        return False
    select, parent = ref.path[-1], ref.path[-2]
    if not isinstance(select, ast.SelectStmt) or not isinstance(parent, ast.RangeSubselect) \
            or parent.subquery is not select:
        return False
    node = ref.node
    if node.alias is None or node.alias.aliasname != INNER_ALIAS or node.alias.colnames:
        return False
    if select.fromClause != (node,) or not _is_predicate(select.whereClause, INNER_ALIAS,
                                                         column):
        return False
    offset = select.limitOffset
    if offset is not None and not (isinstance(offset, ast.A_Const) and isinstance(
            offset.val, ast.Integer) and offset.val.ival == 0):
        return False
    for name in ("distinctClause", "intoClause", "groupClause", "havingClause",
                 "windowClause", "valuesLists", "sortClause", "limitCount",
                 "lockingClause", "withClause", "larg", "rarg"):
        if getattr(select, name):
            return False
    targets = select.targetList or ()
    if not targets or not isinstance(targets[0].val, ast.ColumnRef) or \
            not isinstance(targets[0].val.fields[-1], ast.A_Star) or \
            len(targets[0].val.fields) != 1:
        return False
    return all(isinstance(t.val, ast.ColumnRef) and len(t.val.fields) == 2
               and getattr(t.val.fields[0], "sval", None) == INNER_ALIAS
               for t in targets[1:])


def _verify_target(ref: Reference, column: str) -> None:
    writer, node = ref.writer, ref.node
    name = node.alias.aliasname if node.alias is not None else node.relname
    if isinstance(writer, (ast.UpdateStmt, ast.DeleteStmt)):
        where = writer.whereClause
        conjuncts = where.args if isinstance(where, ast.BoolExpr) and \
            where.boolop == enums.BoolExprType.AND_EXPR else (where,)
        if not any(_is_predicate(c, name, column) for c in conjuncts):
            _fail(f"a write to {ref.qualified} is not scoped")
        if isinstance(writer, ast.UpdateStmt):
            _verify_assignments(writer.targetList or (), column, (name,))
        return
    if not isinstance(writer, ast.InsertStmt):
        _fail(f"{type(writer).__name__} on {ref.qualified} cannot be verified")
        return
    names = [c.name for c in writer.cols or ()]
    if column not in names:
        _fail(f"an INSERT into {ref.qualified} does not write the tenant column")
    index = names.index(column)
    source = writer.selectStmt
    if not isinstance(source, ast.SelectStmt):
        _fail(f"an INSERT into {ref.qualified} has no checkable source")
        return
    rows = [list(row) for row in source.valuesLists] if source.valuesLists else \
        [[t.val for t in source.targetList or ()]]
    values = [_value_at(row, index, len(names), ref.qualified) for row in rows]
    if not values or not all(_checked_value(v, column) for v in values):
        _fail(f"an INSERT into {ref.qualified} writes an unchecked tenant value")
    conflict = writer.onConflictClause
    if conflict is not None and conflict.action == enums.OnConflictAction.ONCONFLICT_UPDATE:
        guard = conflict.whereClause
        if isinstance(guard, ast.CaseExpr) and guard.args and isinstance(
                guard.args[0].result, ast.CaseExpr):
            guard = guard.args[0].result  # CASE WHEN <client's WHERE> THEN <guard> ...
        if not isinstance(guard, ast.CaseExpr) or not guard.args or \
                not _is_predicate(guard.args[0].expr, name, column):
            _fail(f"ON CONFLICT DO UPDATE on {ref.qualified} is not guarded")
        _verify_assignments(conflict.targetList or (), column, (name, "excluded"))


def _verify_assignments(targets: tuple[ast.Node, ...], column: str,
                        names: tuple[str, ...]) -> None:
    for target in targets:
        if isinstance(target, ast.ResTarget) and target.name == column:
            value = target.val
            if isinstance(value, ast.MultiAssignRef) and isinstance(value.source, ast.RowExpr):
                if any(_expands(v) for v in value.source.args or ()):
                    _fail("a multiple assignment has values of uncertain position")
                value = value.source.args[value.colno - 1]
            if not (same_column(value, column, names) or _checked_value(value, column)):
                _fail(f'an assignment to the tenant column "{column}" is not checked')


def _value_at(row: list[object], index: int, width: int, qualified: str) -> object:
    """The value a row writes into column ``index`` of ``width``. PostgreSQL needs as
    many values as columns, so the last value is the last column's even after a
    ``*`` (the proxy's ``SELECT *, <tenant> FROM (...)``); any other position is
    certain only without expansion."""
    if index == width - 1 and row:
        return row[-1]
    if any(_expands(v) for v in row):
        _fail(f"an INSERT into {qualified} has values of uncertain position")
    return row[index] if index < len(row) else None


def _expands(value: object) -> bool:
    """``x.*`` or ``(x).*``: one item of the parse tree, several values."""
    fields = value.fields if isinstance(value, ast.ColumnRef) else \
        value.indirection if isinstance(value, ast.A_Indirection) else ()
    return bool(fields) and isinstance(fields[-1], ast.A_Star)


def _checked_value(value: object, column: str) -> bool:
    """The tenant itself, a literal or parameter the session checks, or a run-time check."""
    if isinstance(value, ast.TypeCast):
        value = value.arg
    if _sentinel(value) or isinstance(value, (ast.ParamRef, ast.A_Const)):
        return True
    return isinstance(value, ast.CaseExpr) and bool(value.args) and isinstance(
        value.args[0].expr, ast.A_Expr) and _sentinel(value.args[0].expr.rexpr)
