"""Shape facts about a statement, read once at planning time and cached with
the plan, for the anomaly model (which must not parse anything again).

They describe how a statement looks, not whether it is allowed: a refused
statement has facts too, since refusals are themselves a signal. (Comments
are not here: plans are shared by statements whose comments differ.)
"""

from __future__ import annotations

from dataclasses import dataclass

from pglast import ast, enums

from proxy.sql.statements import Statement, function_name

#: Parse-tree statement node -> the kind used in metrics, audit and anomaly features.
STATEMENT_KINDS = {"SelectStmt": "select", "InsertStmt": "insert", "UpdateStmt": "update",
                   "DeleteStmt": "delete", "CopyStmt": "copy", "VariableSetStmt": "set",
                   "TransactionStmt": "transaction"}
TIME_FUNCTIONS = frozenset({"pg_sleep", "pg_sleep_for", "pg_sleep_until"})


@dataclass(frozen=True, slots=True)
class StatementFacts:
    kinds: tuple[str, ...] = ()
    relations: tuple[str, ...] = ()
    tautology: bool = False
    union: bool = False
    catalog_probe: bool = False
    time_function: bool = False

    @property
    def stacked(self) -> bool:
        return len(self.kinds) > 1


def _constant(node: object) -> bool:
    return isinstance(node, (ast.A_Const, ast.ParamRef))


def _always_true(node: object) -> bool:
    """``1 = 1``, ``'a' = 'a'``, ``x = x`` and ``true`` (what injections append)."""
    if isinstance(node, ast.A_Const) and isinstance(node.val, ast.Boolean):
        return bool(node.val.boolval)
    if isinstance(node, ast.A_Expr) and node.kind == enums.A_Expr_Kind.AEXPR_OP and \
            len(node.name) == 1 and node.name[0].sval == "=":
        if _constant(node.lexpr) and _constant(node.rexpr):
            return True
        return isinstance(node.lexpr, ast.ColumnRef) and node.lexpr == node.rexpr
    return False


def statement_facts(statements: list[Statement]) -> StatementFacts:
    relations: list[str] = []
    tautology = union = time_function = False
    for stmt in statements:
        for node in stmt.nodes:
            if isinstance(node, ast.RangeVar):
                schema = node.schemaname or ("pg_catalog" if node.relname.startswith("pg_")
                                             else "public")
                relations.append(f"{schema}.{node.relname}")
            elif isinstance(node, ast.BoolExpr) and node.boolop == enums.BoolExprType.OR_EXPR:
                tautology = tautology or any(_always_true(arg) for arg in node.args)
            elif isinstance(node, ast.SelectStmt) and node.op != enums.SetOperation.SETOP_NONE:
                union = True
            elif isinstance(node, ast.FuncCall):
                time_function = time_function or function_name(node)[1] in TIME_FUNCTIONS
    return StatementFacts(
        kinds=tuple(s.kind for s in statements), relations=tuple(dict.fromkeys(relations)),
        tautology=tautology, union=union,
        catalog_probe=any(r.startswith(("pg_catalog.", "information_schema."))
                          for r in relations),
        time_function=time_function)
