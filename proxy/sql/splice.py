"""The tenant-scoping pass: minimal text edits at the parser's locations.

The statement sent upstream is the client's own text with edits only where
the tenant is enforced, so output column names, spellings, literals and
comments stay as written. The edits, for a tenant-scoped table ``T``:

- every reference that reads ``T`` (any clause, any depth, COPY's query)
  becomes ``(SELECT * FROM T AS _tp WHERE _tp.col = <tenant>) AS <its name>``:
  what row-level security ``USING (col = tenant)`` shows a query, so joins,
  set operations, LATERAL and subqueries need no special case (fenced with
  ``OFFSET 0`` when a condition could fail on a row: see ``barrier``);
- an UPDATE or DELETE of ``T`` gets ``<target>.col = <tenant> AND`` first in
  its WHERE (wherever the statement stands, data-modifying CTEs included);
- an INSERT into ``T`` gets the tenant filled in, or each written value
  checked: literals and parameters by the session, values from columns at run
  time; ON CONFLICT DO UPDATE fails on another tenant's row, as under RLS;
- SET of the tenant column is allowed only to the tenant itself.

The tenant is written as ``TENANT_SENTINEL`` (an identifier no client
statement may contain), so the result is a template for every tenant. The
result is then verified by ``verify`` from a fresh parse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from pglast import ast, enums

from proxy.errors import Refused, Unsupported
from proxy.policy.rules import Rules, TableRule
from proxy.quoting import ident, qualified
from proxy.sql.barrier import conditions_can_fail
from proxy.sql.scope import Reference
from proxy.sql.tokens import CLOSE_PAREN, COMMA, DOT, OPEN_PAREN, STAR, Tokens

TENANT_SENTINEL = "__tenant_proxy_tenant__"
INNER_ALIAS = "_tp"
ROWS_ALIAS = "_tp_rows"
SYSTEM_COLUMNS = frozenset({"ctid", "tableoid", "xmin", "xmax", "cmin", "cmax"})
#: Casts that leave a tenant literal or parameter's value as it is.
PLAIN_CASTS = frozenset({"int2", "int4", "int8", "integer", "bigint", "smallint", "int",
                         "text", "varchar", "uuid"})
#: Where a SELECT's target list can end (at its own depth).
_TARGETS_END = ("FROM", "INTO", "WHERE", "GROUP_P", "HAVING", "WINDOW", "ORDER", "LIMIT",
                "OFFSET", "FETCH", "FOR", "UNION", "INTERSECT", "EXCEPT", "ON", "RETURNING")
_TENANT_CHANGE_HINT = "Rows cannot move between tenants."


@dataclass(frozen=True, slots=True)
class Edit:
    start: int
    end: int
    text: str


@dataclass
class Scoping:
    """What the pass did, for the plan."""

    needs_tenant: bool = False
    #: $n parameters that must equal the tenant (checked at Bind).
    tenant_params: set[int] = field(default_factory=set)
    #: Literal texts that must equal the tenant (checked per execution).
    tenant_literals: list[str] = field(default_factory=list)


def raise_expr(why: str, row_value: str) -> str:
    """A boolean that fails at run time with ``tenant-proxy: <why>``.

    ``row_value`` makes it depend on the row, so PostgreSQL cannot fold it
    while planning, and shows nothing of it (``left(..., 0)``). The session
    turns the cast error into 42501, the error RLS gives.
    """
    return (f"((('tenant-proxy: {why}' || left(coalesce(({row_value})::text, ''), 0))::int)"
            " IS NULL)")


def type_name(node: ast.TypeName) -> str:
    return node.names[-1].sval if node.names else ""


def target_name(node: ast.RangeVar) -> str:
    """How a write target's columns are qualified: its alias, else its name."""
    return node.alias.aliasname if node.alias is not None else node.relname


def same_column(value: object, column: str | None, names: tuple[str, ...]) -> bool:
    """``value`` is the tenant column itself (``col``, ``t.col``, ``excluded.col``)."""
    if not isinstance(value, ast.ColumnRef):
        return False
    fields = [getattr(f, "sval", None) for f in value.fields]
    return fields[-1] == column and (len(fields) == 1 or (
        len(fields) == 2 and fields[0] in names))


class Splicer:
    """Edits for one statement text; ``base`` is its offset in the parsed text."""

    def __init__(self, text: str, base: int, rules: Rules, nodes: list[ast.Node]) -> None:
        self.text, self.base, self.rules = text, base, rules
        self.toks = Tokens(text)
        self.edits: list[Edit] = []
        self.out = Scoping()
        self.nodes = nodes

    @cached_property
    def columns(self) -> list[ast.ColumnRef]:
        return [n for n in self.nodes if isinstance(n, ast.ColumnRef)]

    @cached_property
    def fence(self) -> bool:
        """Conditions that can fail on a row's values: keep them off other tenants'
        rows (asked only where the tenant is enforced)."""
        return conditions_can_fail(self.nodes)

    def system_columns(self, name: str) -> list[str]:
        """The system columns (ctid, xmin, ...) read through FROM item ``name``: its
        scoping subquery passes them on, since ``SELECT *`` does not. They would
        widen the item's whole row, so whole-row references to it are refused."""
        wanted, whole = set(), False
        for column in self.columns:
            fields = [f.sval if isinstance(f, ast.String) else "*" for f in column.fields]
            if fields[-1] in SYSTEM_COLUMNS and (len(fields) == 1 or fields[-2] == name):
                wanted.add(fields[-1])
            whole |= fields in (["*"], [name], [name, "*"])
        if wanted and whole:
            raise Unsupported(f'system columns together with whole rows of "{name}" (or *) '
                              "are not supported", hint="Name the columns you need.")
        return sorted(wanted)

    # --- edits -------------------------------------------------------------------

    def tok(self, location: int | None) -> int:
        if location is None or location < 0:
            raise Unsupported("tenant-proxy cannot analyze this statement",
                              detail="a node has no location")
        return self.toks.at(location - self.base)

    def insert(self, offset: int, text: str) -> None:
        self.edits.append(Edit(offset, offset, text))

    def replace(self, start: int, end: int, text: str) -> None:
        self.edits.append(Edit(start, end, text))

    def result(self) -> str:
        ordered = sorted(enumerate(self.edits), key=lambda p: (p[1].start, p[1].end, p[0]))
        position, out = 0, []
        for _, edit in ordered:
            if edit.start < position:
                raise Unsupported("tenant-proxy cannot rewrite this statement",
                                  detail="its edits overlap")
            out += [self.text[position:edit.start], edit.text]
            position = edit.end
        out.append(self.text[position:])
        return "".join(out)

    # --- reads ---------------------------------------------------------------------

    def scope_read(self, ref: Reference, rule: TableRule) -> None:
        """The reference becomes the tenant's rows of the table, under its own name."""
        node = ref.node
        if ref.path and isinstance(ref.path[-1], ast.RangeTableSample):
            raise Unsupported("TABLESAMPLE on a tenant-scoped table is not supported")
        first, last = self._name_span(node)
        toks = self.toks
        if not node.inh:
            if toks.name(first - 1) == "ONLY":
                first -= 1
            elif toks.name(first - 1) == OPEN_PAREN and toks.name(first - 2) == "ONLY" \
                    and toks.match.get(first - 1) == last + 1:
                first, last = first - 2, last + 1
            else:
                raise Unsupported("tenant-proxy cannot analyze this ONLY clause")
        elif toks.name(last + 1) == STAR:
            last += 1  # the legacy ``table *``
        schema, name = ref.qualified.split(".", 1)
        alias = "" if node.alias is not None else f" AS {ident(node.relname)}"
        scoped = self.wrapper(schema, name, rule, target_name(node), node.inh) + alias
        if toks.name(first - 1) == "TABLE":  # TABLE t is SELECT * FROM t
            first, scoped = first - 1, f"SELECT * FROM {scoped}"
        self.replace(toks.start(first), toks.end(last), scoped)
        self.out.needs_tenant = True
        if node.alias is None and node.schemaname is not None:
            self._unqualify_columns(node.schemaname, node.relname)

    def _unqualify_columns(self, schema: str, name: str) -> None:
        """``public.users.id`` named the table that is now the subquery ``users``."""
        for column in self.columns:
            parts = [getattr(f, "sval", None) for f in column.fields]
            if len(parts) == 3 and parts[:2] == [schema, name]:
                first = self.tok(column.location)
                self.replace(self.toks.start(first), self.toks.start(first + 2), "")

    def wrapper(self, schema: str, name: str, rule: TableRule, alias: str,
                inh: bool = True) -> str:
        assert rule.column is not None
        extra = "".join(f", {ident(INNER_ALIAS)}.{ident(c)} AS {ident(c)}"
                        for c in self.system_columns(alias))
        only = "" if inh else "ONLY "
        fence = " OFFSET 0" if self.fence else ""
        return (f"(SELECT *{extra} FROM {only}{qualified(schema, name)} AS {ident(INNER_ALIAS)}"
                f" WHERE {ident(INNER_ALIAS)}.{ident(rule.column)} = {TENANT_SENTINEL}{fence})")

    def _name_span(self, node: ast.RangeVar) -> tuple[int, int]:
        """Token indexes of the first and last token of a (qualified) relation name."""
        first = self.tok(node.location)
        parts = sum(1 for p in (node.catalogname, node.schemaname, node.relname) if p)
        last = first + 2 * parts - 2
        for k in range(first + 1, last + 1, 2):
            if self.toks.name(k) != DOT:
                raise Unsupported("tenant-proxy cannot analyze this relation name")
        return first, last

    # --- writes ----------------------------------------------------------------------

    def statement_range(self, ref: Reference) -> tuple[int, int, int]:
        """Token range and depth of the statement that writes ``ref``."""
        parent = ref.path[-2] if len(ref.path) > 1 else None
        toks = self.toks
        if parent is None or isinstance(parent, (ast.PrepareStmt, ast.DeclareCursorStmt)):
            return 0, len(toks), 0
        if isinstance(parent, ast.CommonTableExpr):
            name = self.tok(parent.location)
            depth = toks.depth[name]
            as_ = toks.find(["AS"], name, len(toks), depth)
            opener = toks.find([OPEN_PAREN], as_ or name, len(toks), depth)
        elif isinstance(parent, ast.CopyStmt):
            depth, opener = 0, toks.find([OPEN_PAREN], 0, len(toks), 0)
        else:
            raise Unsupported(f"tenant-proxy cannot analyze a write inside "
                              f"{type(parent).__name__}")
        if opener is None:
            raise Unsupported("tenant-proxy cannot find this statement's boundaries")
        return opener + 1, toks.match[opener], depth + 1

    def predicate(self, ref: Reference, rule: TableRule) -> str:
        assert rule.column is not None
        node = ref.node
        name = node.alias.aliasname if node.alias is not None else node.relname
        return f"{ident(name)}.{ident(rule.column)} = {TENANT_SENTINEL}"

    def scope_update_delete(self, ref: Reference, rule: TableRule) -> None:
        writer = ref.writer
        if isinstance(writer, ast.UpdateStmt):
            self.check_assignments(writer.targetList or (), rule, (target_name(ref.node),))
        lo, hi, depth = self.statement_range(ref)
        self.and_where(lo, hi, depth, self.predicate(ref, rule), after=lo)
        self.out.needs_tenant = True

    def and_where(self, lo: int, hi: int, depth: int, predicate: str, after: int) -> None:
        """``predicate`` ANDed to the WHERE at ``depth`` after token ``after``, or added."""
        toks = self.toks
        where = toks.find(["WHERE"], after, hi, depth)
        returning = toks.find(["RETURNING"], where if where is not None else after, hi, depth)
        stop = returning if returning is not None else hi
        if where is not None:
            if where + 1 >= stop:
                raise Unsupported("tenant-proxy cannot analyze this WHERE clause")
            # The tenant test first: PostgreSQL keeps the written order among conditions
            # of equal cost, and with conditions that can fail, a CASE makes it certain.
            if self.fence:
                self.insert(toks.start(where + 1), f"{predicate} AND CASE WHEN {predicate} "
                                                   "THEN (")
                self.insert(toks.end(stop - 1), ") ELSE false END")
            else:
                self.insert(toks.start(where + 1), f"{predicate} AND (")
                self.insert(toks.end(stop - 1), ")")
        elif returning is not None:
            self.insert(toks.start(returning), f"WHERE {predicate} ")
        else:
            self.insert(toks.end(hi - 1), f" WHERE {predicate}")

    def check_assignments(self, targets: tuple[ast.Node, ...], rule: TableRule,
                          names: tuple[str, ...]) -> None:
        """SET may name the tenant column only to assign the tenant itself (ORMs write
        every column), or the column's own value (``names``: the target's name, and
        ``excluded`` in ON CONFLICT, whose tenant value is checked as inserted);
        anything else would move a row to another tenant."""
        for target in targets:
            if not isinstance(target, ast.ResTarget) or target.name != rule.column:
                continue
            if target.indirection:
                raise Refused(f'changing the tenant column "{rule.column}" is not allowed',
                              hint=_TENANT_CHANGE_HINT, reason="tenant_change")
            value = target.val
            if isinstance(value, ast.MultiAssignRef):
                source = value.source
                if not isinstance(source, ast.RowExpr) or not source.args or \
                        len(source.args) < value.colno:
                    raise Refused(f'changing the tenant column "{rule.column}" is not allowed',
                                  hint=_TENANT_CHANGE_HINT, reason="tenant_change")
                value = source.args[value.colno - 1]
            if not (same_column(value, rule.column, names) or self.check_value(value)):
                raise Refused(f'changing the tenant column "{rule.column}" is not allowed',
                              hint=_TENANT_CHANGE_HINT, reason="tenant_change")

    def check_value(self, value: ast.Node) -> bool:
        """Record a literal or parameter that must be the tenant; False for anything else."""
        if isinstance(value, ast.TypeCast) and type_name(value.typeName) in PLAIN_CASTS \
                and not value.typeName.arrayBounds:
            value = value.arg
        if isinstance(value, ast.ParamRef):
            self.out.tenant_params.add(value.number)
            return True
        if isinstance(value, ast.A_Const) and not value.isnull:
            val = value.val
            text = str(getattr(val, "ival", None) if isinstance(val, ast.Integer) else
                       getattr(val, "sval", None) if isinstance(val, ast.String) else
                       getattr(val, "fval", None) if isinstance(val, ast.Float) else None)
            if text == "None":
                return False
            self.out.tenant_literals.append(text)
            return True
        return False

    # --- INSERT ----------------------------------------------------------------------

    def scope_insert(self, ref: Reference, rule: TableRule) -> None:
        writer = ref.writer
        assert isinstance(writer, ast.InsertStmt) and rule.column is not None
        column = rule.column
        self.out.needs_tenant = True
        if writer.selectStmt is None and not writer.cols:  # DEFAULT VALUES
            self._default_values(ref, column)
            return
        if not writer.cols:
            raise Refused("INSERT into a tenant-scoped table needs a column list",
                          hint=f'Name the columns, with or without "{column}".')
        names = [c.name for c in writer.cols]
        if any(c.indirection for c in writer.cols if c.name == column):
            raise Refused(f'writing part of the tenant column "{column}" is not allowed')
        lo, hi, depth = self.statement_range(ref)
        source = writer.selectStmt
        if not isinstance(source, ast.SelectStmt):
            raise Refused("INSERT into a tenant-scoped table needs VALUES or a SELECT")
        last_col = self.tok(writer.cols[-1].location)
        cols_close = self.toks.closing(last_col)
        if column in names:
            self._check_source(source, names.index(column), len(names), column,
                               cols_close + 1, hi, depth)
        else:
            self.insert(self.toks.start(cols_close), f", {ident(column)}")
            self._fill_source(source, cols_close + 1, hi, depth)
        conflict = writer.onConflictClause
        if conflict is not None and conflict.action == enums.OnConflictAction.ONCONFLICT_UPDATE:
            self.check_assignments(conflict.targetList or (), rule,
                                   (target_name(ref.node), "excluded"))
            self._guard_conflict(ref, rule, lo, hi, depth)

    def _default_values(self, ref: Reference, column: str) -> None:
        """``DEFAULT VALUES`` becomes ``(<tenant column>) VALUES (<tenant>)``."""
        lo, hi, depth = self.statement_range(ref)
        default = self.toks.find(["DEFAULT"], lo, hi, depth)
        if default is None or self.toks.name(default + 1) != "VALUES":
            raise Unsupported("tenant-proxy cannot analyze this INSERT")
        self.replace(self.toks.start(default), self.toks.end(default + 1),
                     f"({ident(column)}) VALUES ({TENANT_SENTINEL})")

    def _rows(self, lo: int, hi: int, depth: int, count: int) -> list[int]:
        """The opening parenthesis of each VALUES row of an INSERT's source."""
        toks = self.toks
        end = self._source_end(lo, hi, depth)
        values = toks.find(["VALUES"], lo, end, depth)
        rows = [] if values is None else [
            i for i in range(values, end) if toks.depth[i] == depth and toks.name(i) ==
            OPEN_PAREN]
        if len(rows) != count:
            raise Unsupported("tenant-proxy cannot analyze this VALUES list")
        return rows

    def _item(self, opener: int, index: int) -> tuple[int, int]:
        """First and last token of item ``index`` of the list in parenthesis ``opener``."""
        toks = self.toks
        depth, close = toks.depth[opener] + 1, toks.match[opener]
        commas = [i for i in range(opener + 1, close) if toks.depth[i] == depth
                  and toks.name(i) == COMMA]
        bounds = [opener, *commas, close]
        return bounds[index] + 1, bounds[index + 1] - 1

    def _check_source(self, source: ast.SelectStmt, index: int, width: int,
                      column: str, lo: int, hi: int, depth: int) -> None:
        if source.valuesLists:
            rows = self._rows(lo, hi, depth, len(source.valuesLists))
            for opener, row in zip(rows, source.valuesLists, strict=True):
                if len(row) != width:
                    raise Unsupported("VALUES rows do not match the column list")
                if isinstance(row[index], ast.SetToDefault):
                    # DEFAULT for the tenant column: the tenant, as when it is left out.
                    first, last = self._item(opener, index)
                    if first != last or self.toks.name(first) != "DEFAULT":
                        raise Unsupported("tenant-proxy cannot analyze this VALUES row")
                    self.replace(self.toks.start(first), self.toks.end(last),
                                 TENANT_SENTINEL)
                    continue
                if not self.check_value(row[index]):
                    raise Refused(f'the value of the tenant column "{column}" must be the '
                                  "tenant id as a literal or a parameter",
                                  hint="Or leave the column out and the proxy fills it in.")
            return
        targets = source.targetList or ()
        if source.op != enums.SetOperation.SETOP_NONE or len(targets) != width or any(
                isinstance(t.val, ast.ColumnRef) and isinstance(t.val.fields[-1], ast.A_Star)
                for t in targets):
            raise Refused("the tenant column's value cannot be checked in this INSERT",
                          hint="Use VALUES, or a plain SELECT list, with the tenant id.")
        value = targets[index].val
        if self.check_value(value):
            return
        column_ref = value.arg if isinstance(value, ast.TypeCast) else value
        if not isinstance(column_ref, ast.ColumnRef):
            raise Refused(f'the value of the tenant column "{column}" must be the tenant id '
                          "as a literal, a parameter or a column",
                          hint="Or leave the column out and the proxy fills it in.")
        first = self.tok(column_ref.location)
        last = first + 2 * len(column_ref.fields) - 2
        sql = self.text[self.toks.start(first):self.toks.end(last)]
        self.replace(self.toks.start(first), self.toks.end(last), (
            f"(CASE WHEN {sql} = {TENANT_SENTINEL} THEN {sql} WHEN "
            f"{raise_expr('a new row belongs to another tenant', sql)} THEN {sql} END)"))

    def _fill_source(self, source: ast.SelectStmt, lo: int, hi: int, depth: int) -> None:
        toks = self.toks
        end = self._source_end(lo, hi, depth)
        if source.valuesLists:
            for opener in self._rows(lo, hi, depth, len(source.valuesLists)):
                self.insert(toks.start(toks.match[opener]), f", {TENANT_SENTINEL}")
            return
        first, last, inner = lo, end, depth
        while toks.name(first) == OPEN_PAREN and toks.match.get(first) == last - 1:
            first, last, inner = first + 1, last - 1, inner + 1  # (SELECT ...)
        if source.op == enums.SetOperation.SETOP_NONE and source.withClause is None and \
                toks.name(first) == "SELECT" and source.targetList:
            # Appended in place: a subquery would type its unknown literals as text.
            stop = self._targets_end(first + 1, last, inner)
            self.insert(toks.end(stop - 1), f", {TENANT_SENTINEL}")
            return
        self.insert(toks.start(lo), f"SELECT *, {TENANT_SENTINEL} FROM (")
        self.insert(toks.end(end - 1), f") AS {ident(ROWS_ALIAS)}")

    def _source_end(self, lo: int, hi: int, depth: int) -> int:
        """Where an INSERT's source ends: ``ON CONFLICT``, RETURNING or the end."""
        toks = self.toks
        for i in range(lo, hi):
            if toks.depth[i] != depth:
                continue
            if toks.name(i) == "RETURNING" or (toks.name(i) == "ON"
                                               and toks.name(i + 1) == "CONFLICT"):
                return i
        return hi

    def _targets_end(self, lo: int, hi: int, depth: int) -> int:
        toks = self.toks
        for i in range(lo, hi):
            if toks.depth[i] == depth and toks.name(i) in _TARGETS_END and not (
                    toks.name(i) == "GROUP_P" and toks.name(i - 1) == "WITHIN"):
                return i
        return hi

    def _guard_conflict(self, ref: Reference, rule: TableRule, lo: int, hi: int,
                        depth: int) -> None:
        """A conflicting row of another tenant fails the statement, as under RLS, and
        in RLS's order: PostgreSQL evaluates the DO UPDATE ... WHERE on the existing
        row first (false: the row is skipped), then the policy (an error)."""
        toks = self.toks
        conflict = toks.find(["CONFLICT"], lo, hi, depth)
        do = toks.find(["DO"], conflict or lo, hi, depth)
        if do is None:
            raise Unsupported("tenant-proxy cannot analyze this ON CONFLICT clause")
        target = ref.node
        name = target.alias.aliasname if target.alias is not None else target.relname
        assert rule.column is not None
        column = f"{ident(name)}.{ident(rule.column)}"
        fail = raise_expr("the conflicting row belongs to another tenant", column)
        where = toks.find(["WHERE"], do, hi, depth)
        returning = toks.find(["RETURNING"], where or do, hi, depth)
        stop = returning if returning is not None else hi
        guard = f"CASE WHEN {column} = {TENANT_SENTINEL} THEN true ELSE {fail} END"
        if where is not None:
            self.insert(toks.start(where + 1), "CASE WHEN (")
            self.insert(toks.end(stop - 1), f") THEN {guard} ELSE false END")
        elif returning is not None:
            self.insert(toks.start(returning), f"WHERE {guard} ")
        else:
            self.insert(toks.end(hi - 1), f" WHERE {guard}")

    # --- COPY --------------------------------------------------------------------------

    def scope_copy_to(self, ref: Reference, rule: TableRule) -> None:
        """``COPY t (cols) TO`` becomes ``COPY (SELECT cols FROM <t scoped>) TO``."""
        copy = ref.writer
        assert isinstance(copy, ast.CopyStmt)
        first, last = self._name_span(ref.node)
        toks = self.toks
        if not ref.node.inh:
            raise Unsupported("COPY ONLY of a tenant-scoped table is not supported")
        if copy.attlist:
            last = toks.match.get(last + 1, -1)
            if last < 0:
                raise Unsupported("tenant-proxy cannot analyze this COPY column list")
        columns = ", ".join(ident(c.sval) for c in copy.attlist or ()) or "*"
        schema, name = ref.qualified.split(".", 1)
        self.replace(toks.start(first), toks.end(last),
                     f"(SELECT {columns} FROM {self.wrapper(schema, name, rule, name)} AS "
                     f"{ident(name)})")
        self.out.needs_tenant = True

    def scope_copy_from(self, ref: Reference, rule: TableRule) -> bool:
        """The tenant column added to ``COPY t (cols) FROM``; True if it was added."""
        copy = ref.writer
        assert isinstance(copy, ast.CopyStmt) and rule.column is not None
        self.out.needs_tenant = True
        columns = [c.sval for c in copy.attlist or ()]
        if not columns:
            raise Refused("COPY into a tenant-scoped table needs a column list",
                          hint=f'Name the columns, with or without "{rule.column}".')
        if rule.column in columns:
            return False
        _first, last = self._name_span(ref.node)
        opener = last + 1
        if self.toks.name(opener) != OPEN_PAREN:
            raise Unsupported("tenant-proxy cannot analyze this COPY column list")
        close = self.toks.match[opener]
        if self.toks.name(close) != CLOSE_PAREN or self.toks.name(close - 1) == COMMA:
            raise Unsupported("tenant-proxy cannot analyze this COPY column list")
        self.insert(self.toks.start(close), f", {ident(rule.column)}")
        return True


__all__ = ["INNER_ALIAS", "TENANT_SENTINEL", "Scoping", "Splicer", "raise_expr"]
