"""The encryption pass over one data statement (sqlglot, before tenant scoping).

It finds every reference to an encrypted column and allows only what gives
the same answer on ciphertext as on plaintext: reading the column out (the
session decrypts it, found by the result's column origin), writing a literal
or parameter into it, ``=``/``<>``/``IN`` against literals or parameters and
equi-joins for deterministic columns, ``IS [NOT] NULL``, ``count``, and
GROUP BY/DISTINCT for deterministic columns. Everything else (LIKE, ranges,
ORDER BY, functions, casts) is refused, never answered wrongly.

Values are marked, not encrypted, here: the plan is shared by every tenant
and the key is the tenant's. A parameter keeps its ``$n`` and is sealed at
Bind; a literal becomes a placeholder the session replaces per execution.
An equality operand becomes ``= ANY(<bytea[]>)`` so that it can carry one
ciphertext per live key version, and so still find rows that ``keys
reencrypt`` has not reached after a rotation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlglot import exp

from proxy.errors import Unsupported
from proxy.policy.rules import EncryptedColumn, Rules

SEALED_PREFIX = "__tenant_proxy_sealed_"
_SEALED = re.compile(SEALED_PREFIX + r"(\d+)__")
_HINT = ("Encrypted columns can be read, written with literals or parameters, tested with "
         "IS NULL and, when deterministic, compared with = / IN or joined on.")
_DT = exp.DataType.Type
#: Casts an ORM may put on a parameter (SQLAlchemy's asyncpg dialect writes $1::VARCHAR)
#: that leave the value as the column's logical type.
_CASTS: dict[str, frozenset[exp.DataType.Type]] = {
    "text": frozenset({_DT.TEXT, _DT.VARCHAR}),
    "smallint": frozenset({_DT.SMALLINT, _DT.INT, _DT.BIGINT}),
    "integer": frozenset({_DT.SMALLINT, _DT.INT, _DT.BIGINT}),
    "bigint": frozenset({_DT.SMALLINT, _DT.INT, _DT.BIGINT}),
    "numeric": frozenset({_DT.DECIMAL, _DT.SMALLINT, _DT.INT, _DT.BIGINT}),
    "boolean": frozenset({_DT.BOOLEAN}),
    "date": frozenset({_DT.DATE}),
    "timestamptz": frozenset({_DT.TIMESTAMPTZ}),
    "jsonb": frozenset({_DT.JSONB, _DT.JSON}),
    "bytea": frozenset({_DT.VARBINARY}),
}


@dataclass(frozen=True, slots=True)
class SealedValue:
    """One value to encrypt: written into ``column``, or searched for in it."""

    column: EncryptedColumn
    search: bool


@dataclass
class Sealing:
    #: $n -> how to seal that parameter at Bind.
    params: dict[int, SealedValue] = field(default_factory=dict)
    #: Placeholder number -> (how to seal, the literal's SQL text).
    literals: dict[int, tuple[SealedValue, str]] = field(default_factory=dict)
    #: Tables with encrypted columns the statement touches (their result columns
    #: are found by origin, so the session must know their OIDs).
    tables: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.params or self.literals or self.tables)


def placeholder(number: int) -> str:
    return f"{SEALED_PREFIX}{number}__"


def placeholders(text: str) -> list[int]:
    return [int(n) for n in _SEALED.findall(text)]


def _refuse(column: EncryptedColumn, what: str) -> Unsupported:
    return Unsupported(f'{what} on encrypted column "{column.qualified}" is not supported',
                       hint=_HINT, reason="encrypted_column")


def _name(ident: exp.Expression | None) -> str | None:
    if not isinstance(ident, exp.Identifier):
        return None
    return ident.this if ident.quoted else ident.this.lower()


#: The encrypted columns a FROM item exposes, by output name (a base table's,
#: or those a subquery or CTE passes through unchanged).
Columns = Mapping[str, EncryptedColumn]


@dataclass
class _Scope:
    sources: dict[str, Columns] = field(default_factory=dict)
    #: Output names of the SELECT list that are encrypted (ORDER BY may name them).
    outputs: dict[str, EncryptedColumn] = field(default_factory=dict)
    positions: list[EncryptedColumn | None] = field(default_factory=list)


class _Sealer:
    def __init__(self, rules: Rules) -> None:
        assert rules.encryption is not None
        self.enc = rules.encryption
        self.out = Sealing()

    # --- resolving column references ---------------------------------------

    def resolve(self, column: exp.Column, scopes: list[_Scope]) -> EncryptedColumn | None:
        name = _name(column.this)
        if name is None:
            return None
        table = _name(column.args.get("table"))
        for depth, scope in enumerate(reversed(scopes)):
            if table is not None:
                if table in scope.sources:
                    return scope.sources[table].get(name)
                continue
            found = [cols[name] for cols in scope.sources.values() if name in cols]
            if len(found) > 1:  # PostgreSQL too finds it ambiguous
                raise _refuse(found[0], "an ambiguous reference")
            if found:
                if depth > 0 and scopes[-1].sources:
                    # An outer encrypted column, unless a table of this scope has a
                    # column of that name: the proxy cannot tell, so it asks.
                    raise Unsupported(f'the reference to "{name}" may mean encrypted column '
                                      f'"{found[0].qualified}" of an outer query',
                                      hint="Qualify it with its table name or alias.",
                                      reason="encrypted_column")
                return found[0]
        if table is None:
            for scope in reversed(scopes):
                columns = scope.sources.get(name)
                if columns:  # a whole-row reference: its fields cannot be decrypted
                    raise _refuse(next(iter(columns.values())),
                                  f'the whole-row reference "{name}"')
        return None

    def encrypted(self, node: exp.Expression, scopes: list[_Scope]) -> EncryptedColumn | None:
        return self.resolve(node, scopes) if isinstance(node, exp.Column) else None

    # --- queries -------------------------------------------------------------

    def query(self, node: exp.Expression, scopes: list[_Scope],
              ctes: dict[str, Columns]) -> list[EncryptedColumn | None]:
        """Check a query; return its output columns' encryption by position."""
        if isinstance(node, exp.Subquery):
            return self.query(node.this, scopes, ctes)
        ctes = self.with_(node, scopes, ctes)
        if isinstance(node, exp.SetOperation):
            left = self.query(node.this, scopes, ctes)
            right = self.query(node.expression, scopes, ctes)
            column = next((c for c in left + right if c is not None), None)
            if column is not None:
                raise _refuse(column, f"{type(node).__name__.upper()} of results")
            return []
        if isinstance(node, exp.Values):
            for row in node.expressions:
                self.expression(row, scopes)
            return []
        if isinstance(node, exp.Select):
            return self.select(node, scopes, ctes)
        if isinstance(node, exp.Insert):
            self.insert(node, scopes, ctes)
        elif isinstance(node, (exp.Update, exp.Delete)):
            self.update_or_delete(node, scopes, ctes)
        else:
            raise Unsupported(f"cannot analyze a {type(node).__name__} for encrypted columns")
        return []

    def with_(self, node: exp.Expression, scopes: list[_Scope],
              ctes: dict[str, Columns]) -> dict[str, Columns]:
        with_ = node.args.get("with_")
        if not isinstance(with_, exp.With):
            return ctes
        ctes = dict(ctes)
        for cte in with_.expressions:
            name = _name(cte.args["alias"].this)
            outputs = self.query(cte.this, scopes, ctes)
            if name is not None:
                ctes[name] = self.named(cte.this, outputs, cte.args["alias"])
        return ctes

    @staticmethod
    def named(query: exp.Expression, outputs: list[EncryptedColumn | None],
              alias: exp.Expression | None) -> Columns:
        """A subquery's encrypted outputs by the names its alias or SELECT list gives."""
        names: list[str | None] = []
        columns = alias.args.get("columns") if isinstance(alias, exp.TableAlias) else None
        if columns:
            names = [_name(c) for c in columns]
        elif isinstance(query, exp.Subquery):
            query = query.this
        if not names and isinstance(query, exp.Select):
            names = [e.alias_or_name for e in query.expressions]
        return {n: c for n, c in zip(names, outputs, strict=False) if n and c is not None}

    def sources(self, node: exp.Expression, scopes: list[_Scope], ctes: dict[str, Columns],
                scope: _Scope) -> None:
        items: list[exp.Expression] = []
        from_ = node.args.get("from_")
        if isinstance(from_, exp.From):
            items.append(from_.this)
        for key in ("joins", "using"):
            for item in node.args.get(key) or []:
                items.append(item.this if isinstance(item, exp.Join) else item)
        for item in items:
            self.source(item, scopes, ctes, scope)

    def source(self, item: exp.Expression, scopes: list[_Scope], ctes: dict[str, Columns],
               scope: _Scope) -> None:
        alias = item.args.get("alias")
        alias_name = _name(alias.this) if isinstance(alias, exp.TableAlias) else None
        if isinstance(item, exp.Table) and isinstance(item.this, exp.Identifier):
            schema, name = _name(item.args.get("db")), _name(item.this)
            assert name is not None
            if schema is None and name in ctes:
                columns: Columns = ctes[name]
            else:
                qualified = f"{schema or 'public'}.{name}"
                columns = self.enc.columns.get(qualified, {})
                if columns:
                    self.out.tables.add(qualified)
            scope.sources[alias_name or name] = columns
            return
        if isinstance(item, exp.Subquery):
            lateral = [*scopes, scope] if item.args.get("lateral") else scopes
            outputs = self.query(item.this, lateral, ctes)
            scope.sources[alias_name or ""] = self.named(item.this, outputs, alias)
            return
        if isinstance(item, exp.Lateral):
            self.expression(item.this, [*scopes, scope])
            scope.sources[alias_name or ""] = {}
            return
        # A function in FROM (generate_series, unnest, ...): its arguments are expressions.
        self.expression(item, [*scopes, scope])
        scope.sources[alias_name or ""] = {}

    def select(self, node: exp.Select, scopes: list[_Scope],
               ctes: dict[str, Columns]) -> list[EncryptedColumn | None]:
        scope = _Scope()
        self.sources(node, scopes, ctes, scope)
        inner = [*scopes, scope]
        for join in node.args.get("joins") or []:
            self.join(join, inner, scope)
        for item in node.expressions:
            scope.positions += self.projection(item, inner, scope)
        distinct = node.args.get("distinct")
        if distinct is not None:
            if distinct.args.get("on") is not None:
                self.grouping(distinct.args["on"].expressions, inner, scope, "DISTINCT ON")
            else:
                random = next((c for c in scope.positions if c and not c.deterministic), None)
                if random is not None:
                    raise _refuse(random, "DISTINCT")
        for key in ("where", "having", "qualify"):
            if node.args.get(key) is not None:
                self.expression(node.args[key].this, inner)
        group = node.args.get("group")
        if group is not None:
            self.grouping(group.expressions, inner, scope, "GROUP BY")
        order = node.args.get("order")
        if order is not None:
            for ordered in order.expressions:
                self.ordering(ordered.this, inner, scope)
        for key in ("limit", "offset", "locks"):
            value = node.args.get(key)
            for child in value if isinstance(value, list) else [value]:
                if isinstance(child, exp.Expression):
                    self.expression(child, inner)
        for window in node.args.get("windows") or []:
            self.expression(window, inner)
        return scope.positions

    def join(self, join: exp.Join, scopes: list[_Scope], scope: _Scope) -> None:
        on = join.args.get("on")
        if on is not None:
            self.expression(on, scopes)
        for ident in join.args.get("using") or []:
            name = _name(ident.this if isinstance(ident, exp.Column) else ident)
            found = [cols[name] for cols in scope.sources.values() if name in cols]
            if found and not (len(found) == 2 and found[0].deterministic
                              and found[0].domain == found[1].domain):
                raise _refuse(found[0], "JOIN USING with a column of another domain")

    def projection(self, item: exp.Expression, scopes: list[_Scope],
                   scope: _Scope) -> list[EncryptedColumn | None]:
        value = item.this if isinstance(item, exp.Alias) else item
        if isinstance(value, exp.Star):
            return [c for cols in scope.sources.values() for c in cols.values()] or [None]
        if isinstance(value, exp.Column) and isinstance(value.this, exp.Star):
            cols = scope.sources.get(_name(value.args.get("table")) or "", {})
            return list(cols.values()) or [None]
        column = self.encrypted(value, scopes)
        if column is not None:
            scope.outputs[item.alias_or_name] = column
            return [column]
        self.expression(value, scopes)
        return [None]

    def grouping(self, items: list[exp.Expression], scopes: list[_Scope], scope: _Scope,
                 what: str) -> None:
        for item in items:
            column = self.encrypted(item, scopes) or self.output(item, scope, any_=False)
            if column is not None:
                if not column.deterministic:
                    raise _refuse(column, what)
                continue
            self.expression(item, scopes)

    def ordering(self, item: exp.Expression, scopes: list[_Scope], scope: _Scope) -> None:
        column = self.encrypted(item, scopes) or self.output(item, scope, any_=True)
        if column is not None:
            raise _refuse(column, "ORDER BY")
        self.expression(item, scopes)

    @staticmethod
    def output(item: exp.Expression, scope: _Scope, *, any_: bool) -> EncryptedColumn | None:
        """An ORDER BY / GROUP BY item naming a SELECT-list entry by name or number.

        A parameter may be the slot of a literal in a plan shared by statements that
        differ only in literals (``ORDER BY 1`` and ``ORDER BY 2``): it is taken to name
        any encrypted output (``any_``), or any randomized one.
        """
        if isinstance(item, exp.Parameter):
            return next((c for c in scope.positions
                         if c is not None and (any_ or not c.deterministic)), None)
        if isinstance(item, exp.Literal) and not item.is_string and item.this.isdigit():
            n = int(item.this)
            return scope.positions[n - 1] if 0 < n <= len(scope.positions) else None
        if isinstance(item, exp.Column) and item.args.get("table") is None:
            return scope.outputs.get(item.name)
        return None

    # --- expressions ---------------------------------------------------------

    def expression(self, node: exp.Expression, scopes: list[_Scope]) -> None:
        if isinstance(node, exp.Column):
            column = self.resolve(node, scopes)
            if column is not None:
                raise _refuse(column, f"{_context(node)}")
            return
        if isinstance(node, (exp.Select, exp.SetOperation, exp.Subquery)):
            outputs = self.query(node, scopes, {})
            column = next((c for c in outputs if c is not None), None)
            if column is not None and not isinstance(node.parent, exp.Exists):
                raise _refuse(column, "returning it from a subquery")
            return
        if isinstance(node, (exp.EQ, exp.NEQ)) and self.comparison(node, scopes):
            return
        if isinstance(node, exp.In) and self.membership(node, scopes):
            return
        if isinstance(node, exp.Is) and isinstance(node.expression, exp.Null) and \
                self.encrypted(node.this, scopes) is not None:
            return
        if isinstance(node, exp.Count) and self.counted(node, scopes):
            return
        for child in node.iter_expressions():
            self.expression(child, scopes)

    def comparison(self, node: exp.EQ | exp.NEQ, scopes: list[_Scope]) -> bool:
        left, right = node.this, node.expression
        lcol, rcol = self.encrypted(left, scopes), self.encrypted(right, scopes)
        if lcol is None and rcol is None:
            return False
        if lcol is not None and rcol is not None:
            if lcol.deterministic and lcol.domain == rcol.domain:
                return True
            raise _refuse(lcol, f"comparing it with {rcol.qualified} (another key domain)")
        column = lcol or rcol
        assert column is not None
        value = right if lcol is not None else left
        if not column.deterministic:
            raise _refuse(column, "comparison (it is randomized: make it deterministic to "
                          "search it)")
        if isinstance(value, exp.Null):
            return True
        operand = self.operand(value, column)
        op_column = left if lcol is not None else right
        if isinstance(node, exp.EQ):
            node.replace(exp.EQ(this=op_column.copy(), expression=exp.Any(
                this=exp.paren(operand, copy=False))))
        else:
            node.replace(exp.NEQ(this=op_column.copy(), expression=exp.Anonymous(
                this="ALL", expressions=[operand])))
        return True

    def membership(self, node: exp.In, scopes: list[_Scope]) -> bool:
        column = self.encrypted(node.this, scopes)
        if column is None:
            return False
        if node.args.get("query") is not None or not node.expressions:
            raise _refuse(column, "IN with a subquery")
        if not column.deterministic:
            raise _refuse(column, "IN (it is randomized: make it deterministic to search it)")
        operands = [exp.Array(expressions=[exp.cast(exp.Null(), "bytea")])
                    if isinstance(v, exp.Null) else self.operand(v, column)
                    for v in node.expressions]
        combined = operands[0]
        for operand in operands[1:]:
            combined = exp.DPipe(this=combined, expression=operand)
        negated = isinstance(node.parent, exp.Not)
        target = node.parent if negated else node
        if negated:
            target.replace(exp.NEQ(this=node.this.copy(), expression=exp.Anonymous(
                this="ALL", expressions=[combined])))
        else:
            target.replace(exp.EQ(this=node.this.copy(), expression=exp.Any(
                this=exp.paren(combined, copy=False))))
        return True

    def counted(self, node: exp.Count, scopes: list[_Scope]) -> bool:
        arg = node.this
        distinct = isinstance(arg, exp.Distinct)
        if distinct:
            if len(arg.expressions) != 1:
                return False
            arg = arg.expressions[0]
        column = self.encrypted(arg, scopes)
        if column is None:
            return False
        if distinct and not column.deterministic:
            raise _refuse(column, "count(DISTINCT ...)")
        return True

    # --- values ----------------------------------------------------------------

    def operand(self, value: exp.Expression, column: EncryptedColumn) -> exp.Expression:
        """A searched-for value as a bytea[] of its ciphertexts (one per key version)."""
        sealed = self.value(value, column, search=True)
        return exp.cast(sealed, exp.DataType.build("bytea[]", dialect="postgres"))

    def value(self, value: exp.Expression, column: EncryptedColumn, *,
              search: bool) -> exp.Expression:
        """Mark ``value`` for sealing; return what stands in for it in the SQL."""
        bare = value
        if isinstance(bare, exp.Cast):
            if bare.to.this not in _CASTS[column.type]:
                raise _refuse(column, f"a cast to {bare.to.sql('postgres')}")
            bare = bare.this
        sealed = SealedValue(column, search)
        if isinstance(bare, exp.Parameter) and isinstance(bare.this, exp.Literal):
            number = int(bare.this.this)
            previous = self.out.params.setdefault(number, sealed)
            if previous != sealed:
                raise _refuse(column, f"using parameter ${number} in two different ways")
            return exp.Parameter(this=exp.Literal.number(number))
        text = _literal_text(bare)
        if text is None:
            raise _refuse(column, f"the value {value.sql('postgres')[:60]} (only literals and "
                          "parameters can be encrypted)")
        number = len(self.out.literals)
        self.out.literals[number] = (sealed, text)
        return exp.Var(this=placeholder(number))

    # --- DML -------------------------------------------------------------------

    def target(self, node: exp.Expression) -> tuple[str, Columns]:
        table = node.this.this if isinstance(node.this, exp.Schema) else node.this
        if not isinstance(table, exp.Table):
            raise Unsupported("cannot analyze the target of this statement")
        schema, name = _name(table.args.get("db")), _name(table.this)
        qualified = f"{schema or 'public'}.{name}"
        columns = self.enc.columns.get(qualified, {})
        if columns:
            self.out.tables.add(qualified)
        alias = table.args.get("alias")
        return (_name(alias.this) if isinstance(alias, exp.TableAlias) else None) or \
            name or "", columns

    def insert(self, node: exp.Insert, scopes: list[_Scope], ctes: dict[str, Columns]) -> None:
        ref, columns = self.target(node)
        names = [_name(c) for c in node.this.expressions] \
            if isinstance(node.this, exp.Schema) else []
        targets = [columns.get(n or "") for n in names]
        source = node.expression
        if isinstance(source, exp.Values):
            for row in source.expressions:
                values = row.expressions if isinstance(row, exp.Tuple) else [row]
                for i, value in enumerate(values):
                    column = targets[i] if i < len(targets) else None
                    if column is None:
                        self.expression(value, scopes)
                    elif not _null_or_default(value):
                        value.replace(self.value(value, column, search=False))
        elif source is not None:
            if any(targets) and not isinstance(source, exp.Select):
                raise _refuse(next(c for c in targets if c), "INSERT from this query")
            self.insert_select(source, targets, scopes, ctes)
        scope = _Scope(sources={ref: columns, "excluded": columns})
        conflict = node.args.get("conflict")
        if isinstance(conflict, exp.OnConflict):
            for key in conflict.args.get("conflict_keys") or []:
                key = key.this if isinstance(key, exp.Ordered) else key
                column = columns.get(_name(key.this if isinstance(key, exp.Column) else key)
                                     or "")
                if column is not None and not column.deterministic:
                    raise _refuse(column, "ON CONFLICT (a randomized column is never equal)")
            self.assignments(conflict.expressions, [*scopes, scope], columns)
            if conflict.args.get("where") is not None:
                self.expression(conflict.args["where"].this, [*scopes, scope])
        self.returning(node, [*scopes, _Scope(sources={ref: columns})])

    def insert_select(self, source: exp.Expression, targets: list[EncryptedColumn | None],
                      scopes: list[_Scope], ctes: dict[str, Columns]) -> None:
        assert isinstance(source, exp.Select)
        for i, column in enumerate(targets):
            if column is None or i >= len(source.expressions):
                continue
            item = source.expressions[i]
            value = item.this if isinstance(item, exp.Alias) else item
            if isinstance(value, exp.Null):
                continue
            if _literal_text(value.this if isinstance(value, exp.Cast) else value) is not None \
                    or isinstance(value, exp.Parameter):
                value.replace(self.value(value, column, search=False))
        outputs = self.query(source, scopes, ctes)
        for column, output in zip(targets, outputs, strict=False):
            if output is not None and (column is None or column.domain != output.domain):
                raise _refuse(output, "copying it into another column")

    def update_or_delete(self, node: exp.Expression, scopes: list[_Scope],
                         ctes: dict[str, Columns]) -> None:
        ref, columns = self.target(node)
        scope = _Scope(sources={ref: columns})
        self.sources(node, scopes, ctes, scope)
        inner = [*scopes, scope]
        for join in node.args.get("joins") or []:
            self.join(join, inner, scope)
        if isinstance(node, exp.Update):
            self.assignments(node.expressions, inner, columns)
        if node.args.get("where") is not None:
            self.expression(node.args["where"].this, inner)
        self.returning(node, inner)

    def assignments(self, items: list[exp.Expression], scopes: list[_Scope],
                    columns: Columns) -> None:
        for item in items:
            if not isinstance(item, exp.EQ):
                raise Unsupported("cannot analyze this SET clause")
            target = item.this
            if isinstance(target, exp.Tuple):
                if any(isinstance(t, exp.Column) and t.name in columns
                       for t in target.expressions):
                    raise _refuse(columns[next(t.name for t in target.expressions
                                               if t.name in columns)],
                                  "a multiple-column SET")
                self.expression(item.expression, scopes)
                continue
            column = columns.get(_name(target.this) or "") if isinstance(target, exp.Column) \
                else None
            value = item.expression
            if column is None:
                self.expression(value, scopes)
                continue
            source = self.encrypted(value, scopes)
            if source is not None:
                if source.domain != column.domain:
                    raise _refuse(source, "copying it into another column")
                continue
            if not _null_or_default(value):
                value.replace(self.value(value, column, search=False))

    def returning(self, node: exp.Expression, scopes: list[_Scope]) -> None:
        returning = node.args.get("returning")
        if returning is None:
            return
        scope = scopes[-1]
        for item in returning.expressions:
            self.projection(item, scopes, scope)


def _context(node: exp.Expression) -> str:
    parent = node.parent
    while isinstance(parent, (exp.Paren, exp.Alias)):
        parent = parent.parent
    if isinstance(parent, exp.Cast):
        return f"a cast to {parent.to.sql('postgres')}"
    if isinstance(parent, (exp.Like, exp.ILike)):
        return "LIKE"
    if isinstance(parent, (exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Between)):
        return "a range comparison"
    if isinstance(parent, exp.Func):
        return f"the function {parent.sql_name().lower()}()"
    return f"the expression {parent.sql('postgres')[:60]}" if parent is not None \
        else "this use"


def _null_or_default(node: exp.Expression) -> bool:
    return isinstance(node, exp.Null) or (isinstance(node, exp.Var)
                                          and node.name.upper() == "DEFAULT")


def _literal_text(node: exp.Expression) -> str | None:
    """A literal's value as text (what a text-format parameter would carry)."""
    if isinstance(node, exp.Literal):
        return node.this
    if isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal) and \
            not node.this.is_string:
        return f"-{node.this.this}"
    if isinstance(node, exp.Boolean):
        return "true" if node.this else "false"
    return None


def seal_statement(tree: exp.Expression, rules: Rules) -> Sealing:
    """Mark and check encrypted-column values in ``tree`` (in place)."""
    if rules.encryption is None or not rules.encryption.columns:
        return Sealing()
    sealer = _Sealer(rules)
    try:
        sealer.query(tree, [], {})
    except (KeyError, AttributeError, TypeError, IndexError) as exc:
        raise Unsupported(f"cannot analyze this statement for encrypted columns "
                          f"({type(exc).__name__})") from exc
    return sealer.out


__all__ = ["SEALED_PREFIX", "SealedValue", "Sealing", "placeholder", "placeholders",
           "seal_statement"]
