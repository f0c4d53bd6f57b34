"""Side channels between tenants that no row filter closes (issue 12, classes 9
and 10): shared lock and sequence state, catalog statistics, server settings.

Pure checks over pglast nodes; the planner calls them on every data statement
(``check_statement``) and on ``SHOW`` (``check_show``). Each raises Refused
(42501) with a hint, or returns.

Advisory locks are refused, not namespaced. Namespacing cannot be made
airtight: the one-``bigint`` forms use all 64 key bits, so they leave no room
for a tenant prefix; a 32-bit tenant hash in the two-``int4`` forms collides
between tenants (by the birthday bound, likely past ~77,000 tenants);
``pg_locks`` and lock waits show every key to every session; and, above all, a
namespaced lock taken in a predicate still counts the rows the predicate runs
on. Not even PostgreSQL's row-level security limits that to the tenant's rows: a
volatile predicate that reads no column runs before the policy's qual
(tests/test_attack_classes.py, test_class9_rls_alone_does_not_close_counting).

``nextval``/``setval`` have the same counting effect, so they may not appear
where PostgreSQL evaluates them per candidate row (WHERE, JOIN ... ON, HAVING,
ON CONFLICT ... WHERE, at any depth) and must name their sequence with a
constant. Elsewhere (``SELECT nextval('s')``, VALUES, the select list) they run
once per row the statement returns, i.e. per tenant row, and reveal only what
``INSERT ... RETURNING id`` on a serial column reveals under row-level security
too: how many ids all tenants used. ``currval``/``lastval`` read session state.
``txid_current``/``pg_current_xact_id`` reveal the global write rate, as they do
to any role under RLS; kept for outbox patterns. ``has_*_privilege`` with row
data is an error oracle only where predicates run before the tenant filter,
as any cast is (class 8); the PostgreSQL floor (RLS quals are security
barriers) closes it, a function list cannot.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

from pglast import ast

from proxy.errors import Refused
from proxy.sql.builtins import (
    ATTRIBUTE_FUNCTIONS,
    CATALOG_SCHEMAS,
    READABLE_SETTINGS,
    SENSITIVE_CATALOG_COLUMNS,
    SIDE_CHANNEL_PREFIXES,
)
from proxy.sql.scope import references
from proxy.sql.statements import function_name, walk

_SEQUENCE_WRITERS = frozenset({"nextval", "setval"})
_SETTINGS_HINT = ("Readable settings are listed in tenant-proxy's READABLE_SETTINGS; an "
                  "operator can add one under settings.readable in the rules file.")


def check_statement(root: ast.Node, nodes: Sequence[ast.Node],
                    readable: frozenset[str] = frozenset()) -> None:
    """Every side-channel check for one data statement (``nodes`` is ``walk(root)``)."""
    check_side_channel_functions(nodes)
    check_sequence_calls(root)
    check_catalog_reads(root, nodes)
    check_setting_reads(nodes, readable)


# --- functions ---------------------------------------------------------------------


def _builtin_calls(nodes: Iterable[ast.Node]) -> Iterator[tuple[str, ast.FuncCall]]:
    for n in nodes:
        if isinstance(n, ast.FuncCall):
            schema, name = function_name(n)
            if schema in (None, "pg_catalog"):
                yield name, n


def check_side_channel_functions(nodes: Sequence[ast.Node]) -> None:
    """Advisory locks and server statistics, whatever functions.allow says."""
    for name, _ in _builtin_calls(nodes):
        if name.startswith(("pg_advisory_", "pg_try_advisory_")):
            raise Refused(f"function {name}() is not allowed: advisory locks are one key "
                          "space shared by all tenants",
                          hint="Lock the tenant's own rows (SELECT ... FOR UPDATE), or take "
                               "advisory locks from a bypass role.", reason="function")
        if name.startswith(SIDE_CHANNEL_PREFIXES):
            raise Refused(f"function {name}() is not allowed: server statistics count "
                          "every tenant's rows", reason="function")


def _qual_roots(root: ast.Node) -> Iterator[ast.Node]:
    """Expressions PostgreSQL may evaluate on rows before the tenant filter."""
    for n in walk(root):
        if isinstance(n, ast.SelectStmt):
            yield from (q for q in (n.whereClause, n.havingClause) if q is not None)
        elif isinstance(n, ast.JoinExpr) and n.quals is not None:
            yield n.quals
        elif isinstance(n, (ast.UpdateStmt, ast.DeleteStmt, ast.OnConflictClause)) \
                and n.whereClause is not None:
            yield n.whereClause


def _is_constant(node: ast.Node) -> bool:
    while isinstance(node, (ast.TypeCast, ast.NamedArgExpr)):
        node = node.arg
    return isinstance(node, ast.A_Const) and not node.isnull


def check_sequence_calls(root: ast.Node) -> None:
    """``nextval``/``setval`` once per returned row and on a named sequence only."""
    for name, call in _builtin_calls(walk(root)):
        if name in _SEQUENCE_WRITERS and not (call.args and _is_constant(call.args[0])):
            raise Refused(f"{name}() must name its sequence with a constant",
                          hint=f"Write {name}('schema.sequence').", reason="function")
    for qual in _qual_roots(root):
        for name, _ in _builtin_calls(walk(qual)):
            if name in _SEQUENCE_WRITERS:
                raise Refused(f"{name}() is not allowed in WHERE, ON or HAVING: it would "
                              "count rows of other tenants",
                              hint="Call it in the select list or in VALUES.",
                              reason="function")


# --- catalog relations ------------------------------------------------------------------


def _catalog_refs(root: ast.Node) -> Iterator[tuple[ast.RangeVar, str]]:
    """Each catalog relation referenced, with its qualified name, as the scope walker
    resolves it (CTEs shadow catalog names, as they do in PostgreSQL)."""
    for ref in references(root):
        if ref.role != "cte" and ref.qualified.split(".", 1)[0] in CATALOG_SCHEMAS:
            yield ref.node, ref.qualified


def catalog_aliases(root: ast.Node) -> dict[str, str]:
    """Alias (or bare name) -> qualified name of every catalog relation referenced."""
    return {ref.alias.aliasname if ref.alias else ref.relname: qualified
            for ref, qualified in _catalog_refs(root)}


def check_catalog_reads(root: ast.Node, nodes: Sequence[ast.Node]) -> None:
    """Catalog relations are readable column by column: no whole rows, no columns
    that count or locate rows, no renaming those columns away.

    A relation without sensitive columns (SAFE_CATALOG and catalog.allow, less
    SENSITIVE_CATALOG_COLUMNS) may be read whole.
    """
    for ref, qualified in _catalog_refs(root):
        if qualified.split(".", 1)[1].startswith(SIDE_CHANNEL_PREFIXES):
            raise Refused(f"reading {qualified} is not allowed: server statistics count "
                          "every tenant's rows", reason="catalog")
        if qualified in SENSITIVE_CATALOG_COLUMNS and ref.alias and ref.alias.colnames:
            raise Refused(f"column aliases on {qualified} are not allowed",
                          hint="Rename columns in the select list instead.", reason="catalog")
    aliases = {a: q for a, q in catalog_aliases(root).items() if q in SENSITIVE_CATALOG_COLUMNS}
    if not aliases:
        return
    columns = frozenset().union(*(SENSITIVE_CATALOG_COLUMNS[q] for q in aliases.values()))
    for n in nodes:
        if isinstance(n, ast.ColumnRef):
            _check_column_ref(n, aliases, columns)
        elif isinstance(n, ast.A_Indirection):
            _check_names((i.sval for i in n.indirection if isinstance(i, ast.String)),
                         columns)
        elif isinstance(n, ast.JoinExpr):
            _check_join(n, aliases, columns)
        elif isinstance(n, ast.SelectStmt):
            _check_star(n, aliases)


def _check_names(names: Iterable[str], columns: frozenset[str]) -> None:
    for name in names:
        if name in columns:
            raise Refused(f'reading the catalog column "{name}" is not allowed: it reveals '
                          "how many rows all tenants have", reason="catalog")


def _whole_row(alias: str, qualified: str) -> Refused:
    return Refused(f'whole-row references to {qualified} ("{alias}") are not allowed',
                   hint="Name the columns you need.", reason="catalog")


def _check_column_ref(ref: ast.ColumnRef, aliases: Mapping[str, str],
                      columns: frozenset[str]) -> None:
    fields = [f.sval if isinstance(f, ast.String) else "*" for f in ref.fields]
    _check_names(fields, columns)
    relation = fields[-2] if len(fields) > 1 else fields[0]
    if relation not in aliases:
        return
    # c, c.*, c.row_to_json (attribute notation: row_to_json(c)), schema.c.*
    if len(fields) == 1 or fields[-1] == "*" or fields[-1] in ATTRIBUTE_FUNCTIONS:
        raise _whole_row(relation, aliases[relation])


def _check_join(join: ast.JoinExpr, aliases: Mapping[str, str],
                columns: frozenset[str]) -> None:
    _check_names((u.sval for u in join.usingClause or ()), columns)
    if join.isNatural and any(alias in aliases for alias in _from_aliases((join,))):
        raise Refused("NATURAL JOIN with a catalog relation is not allowed",
                      hint="Join with ON and name the columns.", reason="catalog")


def _from_aliases(items: Iterable[ast.Node]) -> Iterator[str]:
    """Aliases of the relations a FROM list names directly (not inside subqueries)."""
    for item in items:
        if isinstance(item, ast.RangeVar):
            yield item.alias.aliasname if item.alias else item.relname
        elif isinstance(item, ast.JoinExpr):
            yield from _from_aliases((item.larg, item.rarg))


def _check_star(select: ast.SelectStmt, aliases: Mapping[str, str]) -> None:
    """A bare ``*`` expands to every column of the relations in its own FROM."""
    stars = [t for t in select.targetList or () if isinstance(t.val, ast.ColumnRef)
             and len(t.val.fields) == 1 and isinstance(t.val.fields[0], ast.A_Star)]
    if not stars:
        return
    for alias in _from_aliases(select.fromClause or ()):
        if alias in aliases:
            raise _whole_row(alias, aliases[alias])


# --- settings ----------------------------------------------------------------------------


def _check_setting(name: str, readable: frozenset[str]) -> None:
    if name.lower() not in READABLE_SETTINGS | readable:
        raise Refused(f'reading the setting "{name}" is not allowed: it is not in the '
                      "proxy's list of readable settings", hint=_SETTINGS_HINT,
                      reason="setting")


def check_show(node: ast.VariableShowStmt, readable: frozenset[str] = frozenset()) -> None:
    """``SHOW name`` for readable settings only; ``SHOW ALL`` is refused."""
    if node.name == "all":
        raise Refused("SHOW ALL is not allowed: it shows the server's configuration",
                      hint="SHOW the settings you need one by one.", reason="setting")
    _check_setting(node.name, readable)


def check_setting_reads(nodes: Sequence[ast.Node], readable: frozenset[str] = frozenset()
                        ) -> None:
    """``current_setting('name'[, missing_ok])`` with a constant, readable name."""
    for name, call in _builtin_calls(nodes):
        if name != "current_setting":
            continue
        first = call.args[0] if call.args else None
        while isinstance(first, (ast.TypeCast, ast.NamedArgExpr)):
            first = first.arg
        if not (isinstance(first, ast.A_Const) and isinstance(first.val, ast.String)):
            raise Refused("current_setting() must name its setting with a constant string",
                          hint=_SETTINGS_HINT, reason="setting")
        _check_setting(first.val.sval, readable)


__all__ = ["catalog_aliases", "check_catalog_reads", "check_sequence_calls",
           "check_setting_reads", "check_show", "check_side_channel_functions",
           "check_statement"]
