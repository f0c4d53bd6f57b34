"""Whether a statement's conditions could leak other tenants' rows through errors.

PostgreSQL flattens the scoping subquery into the query around it, so a
condition the client wrote may be evaluated on a row before the tenant test
rejects it. Comparisons of columns with constants cannot fail, so that order
shows nothing; a function, cast or arithmetic on a column can fail, and its
error (``invalid input syntax for type integer: "222-22-1111"``) would show
another tenant's value. RLS avoids this with security barriers and leakproof
functions; the proxy, alone, fences the scoping subqueries (``OFFSET 0``)
and orders the tenant test first in writes when any condition is not plainly
safe. Conservative on purpose: anything not known to be safe counts as unsafe.
"""

from __future__ import annotations

from pglast import ast, enums

from proxy.sql.statements import walk

_COMPARISONS = frozenset({"=", "<>", "!=", "<", ">", "<=", ">="})
_SAFE_KINDS = frozenset({enums.A_Expr_Kind.AEXPR_OP, enums.A_Expr_Kind.AEXPR_IN,
                         enums.A_Expr_Kind.AEXPR_DISTINCT,
                         enums.A_Expr_Kind.AEXPR_NOT_DISTINCT})
#: Nodes that evaluate nothing that can fail (or only structure queries).
_INERT = (ast.ColumnRef, ast.A_Const, ast.ParamRef, ast.BoolExpr, ast.NullTest,
          ast.BooleanTest, ast.String, ast.Integer, ast.Float, ast.Boolean, ast.A_Star,
          ast.SubLink, ast.SelectStmt, ast.ResTarget, ast.RangeVar, ast.Alias,
          ast.JoinExpr, ast.RangeSubselect)
_OPERANDS = (ast.ColumnRef, ast.A_Const, ast.ParamRef, ast.SubLink)


def _qual_roots(nodes: list[ast.Node]) -> list[ast.Node]:
    roots: list[ast.Node] = []
    for node in nodes:
        if isinstance(node, (ast.SelectStmt, ast.UpdateStmt, ast.DeleteStmt,
                             ast.OnConflictClause)) and node.whereClause is not None:
            roots.append(node.whereClause)
        if isinstance(node, ast.SelectStmt) and node.havingClause is not None:
            roots.append(node.havingClause)
        if isinstance(node, ast.JoinExpr) and node.quals is not None:
            roots.append(node.quals)
    return roots


def _safe(node: ast.Node) -> bool:
    if isinstance(node, ast.A_Expr):
        return node.kind in _SAFE_KINDS and all(
            n.sval in _COMPARISONS for n in node.name or ()) and all(
            _operand(side) for side in (node.lexpr, node.rexpr))
    if isinstance(node, ast.TypeCast):
        return isinstance(node.arg, (ast.A_Const, ast.ParamRef))
    return isinstance(node, (*_INERT, ast.TypeName))


def _operand(node: object) -> bool:
    if isinstance(node, tuple):  # an IN list
        return all(_operand(item) for item in node)
    if isinstance(node, ast.TypeCast):
        return isinstance(node.arg, (ast.A_Const, ast.ParamRef))
    return node is None or isinstance(node, _OPERANDS)


def conditions_can_fail(nodes: list[ast.Node]) -> bool:
    """True when some WHERE, JOIN ... ON or HAVING condition could raise an error
    that depends on a row's values."""
    return any(not _safe(n) for root in _qual_roots(nodes) for n in walk(root))
