"""The passes one data statement goes through, in order, over one context.

Each pass does one job and either refuses the statement (a PgError) or adds to
the context; ``run`` applies them all. The order matters only where a pass
reads what an earlier one found (resolution before classification, sealing
before scoping).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import sqlglot
from pglast import ast

from proxy.errors import Refused, Unsupported
from proxy.policy.rules import Rules
from proxy.sql.copyin import CopyFormat
from proxy.sql.copyplan import copy_in_format
from proxy.sql.relations import check_row_locks, check_sequences, classify
from proxy.sql.scope import Reference, references
from proxy.sql.sealing import Sealing, seal_statement
from proxy.sql.sidechannels import check_statement as check_side_channels
from proxy.sql.splice import Splicer
from proxy.sql.statements import (
    Statement,
    check_field_selection,
    check_functions,
    check_node_types,
    check_pg_class,
    split,
    walk,
)


@dataclass
class Context:
    """One data statement on its way through the passes."""

    stmt: Statement
    rules: Rules
    #: The nodes the syntax and function checks see.
    nodes: list[ast.Node] = field(default_factory=list)
    #: Every relation reference, resolved as PostgreSQL resolves it.
    refs: list[Reference] = field(default_factory=list)
    relations: list[str] = field(default_factory=list)
    sealing: Sealing | None = None
    splicer: Splicer | None = None
    copy_in: CopyFormat | None = None


def _checked_nodes(stmt: Statement) -> list[ast.Node]:
    """The nodes the syntax and function checks see: a PREPARE's or DECLARE's query."""
    node = stmt.node
    if isinstance(node, (ast.PrepareStmt, ast.DeclareCursorStmt)):
        return walk(node.query) + walk(getattr(node, "argtypes", None))
    if isinstance(node, ast.CopyStmt):
        return walk(node.query) + walk(node.relation) + walk(node.attlist) + walk(
            node.whereClause)
    return stmt.nodes


def encrypted_tables(refs: list[Reference], rules: Rules) -> set[str]:
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


def check_reserved(stmt: Statement) -> None:
    """The names the rewriter writes (the tenant sentinel, sealed placeholders) are
    the client's in no spelling: not in the text, in any case, nor in any name or
    string the parser decoded (U&"..." escapes included)."""
    if _RESERVED in stmt.text.lower() or any(
            isinstance(n, ast.String) and n.sval.lower().startswith(_RESERVED)
            for n in stmt.nodes):
        raise Refused(f"statements may not contain names starting with {_RESERVED}",
                      hint="They are reserved for the proxy's own rewriting.")


def statement_kind(ctx: Context) -> None:
    node = ctx.stmt.node
    if isinstance(node, ast.SelectStmt) and node.intoClause is not None:
        raise Refused("SELECT INTO creates a table; DDL is not allowed",
                      hint="Use INSERT INTO ... SELECT into an existing table.")
    if isinstance(node, ast.MergeStmt):
        raise Unsupported("MERGE is not supported by tenant-proxy",
                          hint="Use INSERT ... ON CONFLICT, UPDATE or DELETE.")


def syntax(ctx: Context) -> None:
    ctx.nodes = _checked_nodes(ctx.stmt)
    check_node_types(ctx.nodes)
    check_field_selection(ctx.nodes)


def functions(ctx: Context) -> None:
    check_functions(ctx.nodes, ctx.rules)


def side_channels(ctx: Context) -> None:
    check_side_channels(ctx.stmt.node, ctx.nodes)


def resolve(ctx: Context) -> None:
    ctx.refs = references(ctx.stmt.node)
    ctx.relations = [r.qualified for r in ctx.refs if r.role != "cte"]


def classify_references(ctx: Context) -> None:
    for ref in ctx.refs:
        classify(ctx.rules, ref)
    check_row_locks(ctx.rules, ctx.refs)
    check_sequences(ctx.rules, ctx.nodes)
    if any(r.qualified == "pg_catalog.pg_class" and r.role == "read" for r in ctx.refs):
        check_pg_class(ctx.nodes)


def seal(ctx: Context) -> None:
    """Encrypted-column values marked; the scoping pass then works on that text."""
    node = ctx.stmt.node
    if encrypted_tables(ctx.refs, ctx.rules) and not isinstance(node, ast.CopyStmt):
        ctx.stmt, ctx.sealing = _sealed(ctx.stmt, type(node), ctx.rules)
        ctx.refs = references(ctx.stmt.node)


def scope(ctx: Context) -> None:
    """The tenant spliced in wherever a tenant-scoped table is read or written."""
    rules = ctx.rules
    splicer = ctx.splicer = Splicer(ctx.stmt.text, ctx.stmt.offset, rules, ctx.stmt.nodes)
    for ref in ctx.refs:
        rule = rules.table(ref.qualified) if ref.role != "cte" else None
        if rule is None or rule.scope != "tenant":
            continue
        if ref.role == "read" and isinstance(ref.writer, ast.CopyStmt):
            splicer.scope_copy_to(ref, rule)
        elif ref.role == "read":
            splicer.scope_read(ref, rule)
        elif ref.role == "copy-from":
            ctx.copy_in = copy_in_format(ref, rule, rules, splicer.scope_copy_from(ref, rule))
        elif isinstance(ref.writer, ast.InsertStmt):
            splicer.scope_insert(ref, rule)
        else:
            splicer.scope_update_delete(ref, rule)


PASSES: tuple[Callable[[Context], None], ...] = (
    statement_kind, syntax, functions, side_channels, resolve, classify_references, seal,
    scope)


def run(stmt: Statement, rules: Rules) -> Context:
    ctx = Context(stmt, rules)
    for step in PASSES:
        step(ctx)
    return ctx
