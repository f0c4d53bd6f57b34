"""Every relation reference of a statement, resolved as PostgreSQL resolves it.

One walker visits every field of every node (no clause is special-cased by
omission), so a reference in a position nobody thought of is still seen.
What it knows of PostgreSQL's name resolution:

- the target of INSERT, UPDATE, DELETE, MERGE and COPY is always a table,
  never a CTE of the same name, wherever the statement stands (top level or
  a data-modifying CTE);
- a CTE is visible to its statement's body and to the CTEs after it, or with
  RECURSIVE to all of its WITH list; inner WITH lists shadow outer ones;
- an unqualified name resolves in ``pg_catalog`` first when it starts with
  ``pg_`` (every catalog relation does), else in ``public`` (the proxy pins
  ``search_path`` to that upstream);
- ``FOR UPDATE OF x`` names a FROM item, not a relation.
"""

from __future__ import annotations

from dataclasses import dataclass

from pglast import ast

_DML = (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)
_WITH_OWNERS = (ast.SelectStmt, *_DML)


@dataclass(frozen=True, slots=True)
class Reference:
    """One relation-shaped name and what PostgreSQL makes of it there."""

    node: ast.RangeVar
    #: "cte", "read" (rows are read), "target" (rows are written) or "copy-from".
    role: str
    #: The schema-qualified relation (or the CTE's name).
    qualified: str
    #: The nodes from the statement root down to the reference's parent.
    path: tuple[ast.Node, ...]
    #: For targets: the statement that writes (InsertStmt, UpdateStmt, ...).
    writer: ast.Node | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.role, self.qualified


def qualified_name(node: ast.RangeVar) -> str:
    schema = node.schemaname
    if node.catalogname:
        schema = f"{node.catalogname}.{schema}"
    if schema is None:
        schema = "pg_catalog" if node.relname.startswith("pg_") else "public"
    return f"{schema}.{node.relname}"


def references(root: ast.Node) -> list[Reference]:
    """Every RangeVar under ``root`` with its role, in source order."""
    out: list[Reference] = []
    _visit(root, frozenset(), (), out)
    return out


def _visit(node: object, ctes: frozenset[str], path: tuple[ast.Node, ...],
           out: list[Reference]) -> None:
    if isinstance(node, tuple):
        for item in node:
            _visit(item, ctes, path, out)
        return
    if not isinstance(node, ast.Node):
        return
    if isinstance(node, ast.RangeVar):
        if node.schemaname is None and node.catalogname is None and node.relname in ctes:
            out.append(Reference(node, "cte", node.relname, path))
        else:
            out.append(Reference(node, "read", qualified_name(node), path))
        return
    here = (*path, node)
    with_clause = node.withClause if isinstance(node, _WITH_OWNERS) else None
    if with_clause is not None:
        names = [cte.ctename for cte in with_clause.ctes or ()]
        where = (*here, with_clause)
        for i, cte in enumerate(with_clause.ctes or ()):
            visible = names if with_clause.recursive else names[:i]
            _visit(cte, ctes | frozenset(visible), where, out)
        ctes = ctes | frozenset(names)
    for name in node:
        value = getattr(node, name)
        if name == "withClause" and with_clause is not None:
            continue
        if name == "relation" and isinstance(value, ast.RangeVar) and isinstance(
                node, (*_DML, ast.CopyStmt)):
            role = "target" if isinstance(node, _DML) else (
                "copy-from" if node.is_from else "read")
            out.append(Reference(value, role, qualified_name(value), here, node))
            continue
        if name == "lockedRels" and isinstance(node, ast.LockingClause):
            continue
        _visit(value, ctes, here, out)
