"""Statement boundaries, kinds and function calls, read with PostgreSQL's own
grammar (pglast, which wraps libpg_query): the proxy reads every statement
as the server will, and never with a second parser that could disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import pglast
from pglast import ast
from pglast.parser import ParseError

from proxy.errors import PgError, Refused, Unsupported
from proxy.policy.rules import Rules
from proxy.sql.builtins import DENIED_FUNCTIONS, SAFE_FUNCTIONS


class SyntaxErr(PgError):
    sqlstate = "42601"
    default_reason = "syntax"


#: The statements the planner's passes check and scope.
DATA_STATEMENTS = ("SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt")


@dataclass(frozen=True)
class Statement:
    kind: str
    text: str
    node: ast.Node
    #: Where ``text`` starts in the text that was parsed (node locations count from there).
    offset: int = 0

    @cached_property
    def nodes(self) -> list[ast.Node]:
        """Every node of the statement, walked once for all the checks."""
        return walk(self.node)


def split(sql: str) -> list[Statement]:
    """The statements of a message, as PostgreSQL would split them."""
    try:
        raw = pglast.parse_sql(sql)
    except ParseError as exc:
        raise SyntaxErr(str(exc).split(", at index")[0] or "syntax error") from exc
    out = []
    for stmt in raw:
        start = stmt.stmt_location or 0
        text = sql[start:start + stmt.stmt_len] if stmt.stmt_len else sql[start:]
        lead = len(text) - len(text.lstrip())
        out.append(Statement(type(stmt.stmt).__name__, text.strip(), stmt.stmt, start + lead))
    return out


#: Node types a data statement may contain (PostgreSQL's raw grammar). Anything
#: else (XMLTABLE, WHERE CURRENT OF, newer syntax) is refused, not guessed at.
ALLOWED_NODES = frozenset("""
A_ArrayExpr A_Const A_Expr A_Indices A_Indirection A_Star Alias BitString BoolExpr Boolean
BooleanTest CTECycleClause CTESearchClause CaseExpr CaseWhen CoalesceExpr CollateClause
ColumnDef ColumnRef CommonTableExpr DeleteStmt Float FuncCall GroupingFunc GroupingSet
IndexElem InferClause InsertStmt Integer JoinExpr LockingClause MinMaxExpr MultiAssignRef
NamedArgExpr NullTest OnConflictClause ParamRef RangeFunction RangeSubselect RangeTableSample
RangeVar ResTarget ReturningClause RowExpr SQLValueFunction SelectStmt SetToDefault SortBy
String SubLink TypeCast TypeName UpdateStmt WindowDef WithClause
""".split())


def check_node_types(nodes: Sequence[ast.Node]) -> None:
    for n in nodes:
        name = type(n).__name__
        if name not in ALLOWED_NODES:
            raise Unsupported(f"{name} syntax is not supported by tenant-proxy",
                              hint="Statements the proxy cannot prove safe are refused.")


def walk(root: object) -> list[ast.Node]:
    """Every node under ``root``, parents before children, in source order."""
    out: list[ast.Node] = []
    stack = [root]
    node_type = ast.Node
    while stack:
        node = stack.pop()
        if isinstance(node, node_type):
            out.append(node)
            stack.extend(reversed([getattr(node, name) for name in node]))
        elif isinstance(node, tuple):
            stack.extend(reversed(node))
    return out


#: pg_class columns that count or locate every tenant's rows.
SENSITIVE_PG_CLASS = frozenset({"reltuples", "relpages", "relallvisible", "relfrozenxid",
                                "relminmxid", "relfilenode"})


def check_pg_class(nodes: Sequence[ast.Node]) -> None:
    """pg_class is readable for introspection, but not its size statistics."""
    for n in nodes:
        if isinstance(n, ast.ColumnRef):
            for field in n.fields:
                if isinstance(field, ast.String) and field.sval in SENSITIVE_PG_CLASS:
                    raise Refused(f"reading pg_class.{field.sval} is not allowed: it reveals "
                                  "how many rows all tenants have")
                if isinstance(field, ast.A_Star):
                    raise Refused("SELECT * is not allowed on queries that read pg_class",
                                  hint="Name the columns you need.")


def function_name(call: ast.FuncCall) -> tuple[str | None, str]:
    parts = [p.sval for p in call.funcname]
    return (parts[0] if len(parts) > 1 else None), parts[-1]


def check_functions(nodes: Sequence[ast.Node], rules: Rules) -> None:
    """Refuse any function call that is not known to be safe (I3)."""
    for n in nodes:
        if not isinstance(n, ast.FuncCall):
            continue
        schema, name = function_name(n)
        qualified = f"{schema}.{name}" if schema else name
        if name in DENIED_FUNCTIONS and schema in (None, "pg_catalog"):
            raise Refused(f"function {qualified}() is not allowed: {DENIED_FUNCTIONS[name]}",
                          reason="function")
        if qualified in rules.functions_deny or name in rules.functions_deny:
            raise Refused(f"function {qualified}() is denied by the rules file",
                          reason="function")
        if qualified in rules.functions_allow:
            continue
        if schema in (None, "pg_catalog") and (name in SAFE_FUNCTIONS
                                               or name in rules.functions_allow):
            continue
        raise Refused(f"function {qualified}() is not allowed",
                      hint="User-defined functions must be listed under functions.allow "
                           "in the rules file.", reason="function")


#: Functions that, called in attribute notation (``x.nextval``), must be refused
#: like their ordinary calls: the allow-list only sees FuncCall nodes.
_ATTRIBUTE_CALLS = frozenset({"nextval", "setval", "currval"}) | frozenset(DENIED_FUNCTIONS)


def check_field_selection(nodes: Sequence[ast.Node]) -> None:
    """``(x).f`` and ``x.y.f`` may be PostgreSQL's attribute notation for the call
    ``f(x)``, and ``(x).*`` expands to a number of values the proxy cannot count:
    both are refused, so every call is a FuncCall the function checks see and every
    list of values has the length its parse tree shows. (``t.col`` and
    ``schema.t.col`` name columns; only denied functions are refused by name there.)"""
    relations = {(n.schemaname, n.relname) for n in nodes if isinstance(n, ast.RangeVar)}
    for n in nodes:
        if isinstance(n, ast.A_Indirection) and any(
                isinstance(i, (ast.String, ast.A_Star)) for i in n.indirection):
            raise Unsupported("field selection on an expression, (x).name or (x).*, is not "
                              "supported by tenant-proxy",
                              hint="Call functions as f(x); name the values you need.")
        if isinstance(n, ast.ColumnRef):
            names = [getattr(f, "sval", None) for f in n.fields]
            if len(names) > 3 or (len(names) == 3 and (names[0], names[1]) not in relations):
                raise Unsupported(f"the name {'.'.join(str(x) for x in names)} is not "
                                  "supported by tenant-proxy",
                                  hint="Use table.column or schema.table.column.")
            if len(names) >= 2 and names[-1] in _ATTRIBUTE_CALLS:
                raise Refused(f"{names[-1]}() is not allowed, in any notation",
                              reason="function")
