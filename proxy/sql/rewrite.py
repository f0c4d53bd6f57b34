"""The tenant-scoping pass over one data statement (sqlglot, postgres dialect).

Every reference to a tenant-scoped table in a FROM/JOIN/USING position, in any
scope, becomes ``(SELECT * FROM schema.table AS _tp WHERE _tp.col = <tenant>)``
under the reference's own alias. That is exactly what row-level security
``USING (col = tenant)`` shows a query (the table seems to hold only the
tenant's rows), so outer joins, set operations, LATERAL, subqueries and CTEs
all come out right without special cases, and PostgreSQL pulls the subquery
up so plans are unchanged. DML targets get the predicate added to their WHERE,
INSERT rows are filled or checked, and assignments to the tenant column are
refused (WITH CHECK). The tenant is a sentinel in the output, so the result is
a template that serves every tenant.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from sqlglot import exp

from proxy.errors import PgError, Refused, Unsupported
from proxy.policy.rules import Rules
from proxy.sql.builtins import SAFE_CATALOG, SENSITIVE_CATALOG

TENANT_SENTINEL = "__tenant_proxy_tenant__"
INNER_ALIAS = "_tp"
CATALOG_SCHEMAS = ("pg_catalog", "information_schema")

_DML = (exp.Insert, exp.Update, exp.Delete)
_SYSTEM_COLUMNS = frozenset({"ctid", "tableoid", "xmin", "xmax", "cmin", "cmax"})
#: Casts that leave a tenant literal or parameter's value as it is.
_PLAIN_CASTS = {exp.DataType.Type.INT, exp.DataType.Type.BIGINT, exp.DataType.Type.SMALLINT,
                exp.DataType.Type.TEXT, exp.DataType.Type.VARCHAR, exp.DataType.Type.UUID}


@dataclass
class Rewrite:
    """What the pass found and did, for the plan and for metrics."""

    #: Qualified names of relations read or written, in order of appearance.
    relations: list[str] = field(default_factory=list)
    needs_tenant: bool = False
    #: $n parameters that must equal the tenant (checked at Bind).
    tenant_params: set[int] = field(default_factory=set)
    #: Literal values that must equal the tenant (checked per execution).
    tenant_literals: list[str] = field(default_factory=list)
    #: (schema, name) of every relation-shaped reference, for the pglast cross-check.
    references: Counter[tuple[str | None, str]] = field(default_factory=Counter)


def _name(ident: exp.Expression | None) -> str | None:
    if ident is None:
        return None
    if isinstance(ident, exp.Identifier):
        return ident.this if ident.quoted else ident.this.lower()
    raise Unsupported(f"cannot analyze the name {ident.sql('postgres')!r}")


def _ident(name: str) -> exp.Identifier:
    return exp.to_identifier(name, quoted=True)


def _relation(table: exp.Table) -> tuple[str | None, str]:
    if table.args.get("catalog") is not None:
        raise Refused("cross-database references are not allowed")
    return _name(table.args.get("db")), _name(table.this)  # type: ignore[return-value]


def _raise(message: exp.Expression) -> exp.Expression:
    """An expression that fails at run time with ``message`` (a cast error).

    ``message`` must depend on the row, so PostgreSQL cannot fold it while planning.
    """
    return exp.Is(this=exp.cast(message, "int"), expression=exp.Null())


def _guard(column: exp.Expression, why: str, then: exp.Expression) -> exp.Expression:
    """``then`` for the tenant's rows; an error, not a silent false, for any other
    (one CASE, so the tenant test is sure to run first)."""
    sentinel = exp.Var(this=TENANT_SENTINEL)
    # Row-dependent (so not folded while planning) but empty: the other tenant's
    # id must not show in the error.
    nothing = exp.Anonymous(this="left", expressions=[exp.cast(column.copy(), "text"),
                                                      exp.Literal.number(0)])
    message = exp.DPipe(this=exp.Literal.string(f"tenant-proxy: {why}"), expression=nothing)
    return exp.Case(ifs=[exp.If(this=exp.EQ(this=column.copy(), expression=sentinel),
                                true=exp.paren(then))], default=_raise(message))


def _checked(value: exp.Expression) -> exp.Expression:
    """``value`` if it is the tenant, else a run-time error (RLS's WITH CHECK).

    Used for INSERT ... SELECT values that come from a column: they cannot be
    checked before execution. The error arm depends on the row, so PostgreSQL
    cannot fold it at plan time; NULL also fails, as under WITH CHECK.
    """
    sentinel = exp.Var(this=TENANT_SENTINEL)
    message = exp.DPipe(this=exp.DPipe(
        this=exp.Literal.string("tenant-proxy: tenant value "),
        expression=exp.Coalesce(this=exp.cast(value.copy(), "text"),
                                expressions=[exp.Literal.string("NULL")])),
        expression=exp.Literal.string(" is not this session's tenant"))
    fail = exp.Case(ifs=[exp.If(this=_raise(message), true=value.copy())],
                    default=value.copy())
    return exp.Case(ifs=[exp.If(this=exp.EQ(this=value.copy(), expression=sentinel),
                                true=value.copy())], default=fail)


def _column_named(node: exp.Expression, column: str) -> bool:
    return isinstance(node, exp.Column) and _name(node.this) == column


def classify_relation(rules: Rules, schema: str | None, name: str, position: str) -> str:
    """The qualified name of a relation reference, or a refusal (I3)."""
    if schema is None and name.startswith("pg_"):
        schema = "pg_catalog"
    if schema in CATALOG_SCHEMAS:
        qualified = f"{schema}.{name}"
        if qualified in SENSITIVE_CATALOG:
            raise Refused(f"reading {qualified} is not allowed: "
                          f"{SENSITIVE_CATALOG[qualified]}", reason="catalog")
        if position != "source":
            raise Refused(f"writing to the system catalog ({qualified}) is not allowed")
        if qualified not in SAFE_CATALOG and qualified not in rules.catalog_allow:
            raise Refused(f"catalog relation {qualified} is not in the allow-list",
                          hint="Add it to catalog.allow in the rules file if it holds "
                               "no tenant data.", reason="catalog")
        return qualified
    qualified = f"{schema or 'public'}.{name}"
    rule = rules.table(qualified)
    if rule is None:
        raise Refused(f'relation "{qualified}" is not in the rules file',
                      hint="Unknown relations are refused; list it under tables: "
                           "with a scope.", reason="unknown_relation")
    if rule.scope == "deny":
        raise Refused(f'access to relation "{qualified}" is denied by the rules file',
                      reason="denied_relation")
    if position == "target" and not rule.writable:
        raise Refused(f'relation "{qualified}" is read-only for tenants', reason="read_only")
    return qualified


class _Scoper:
    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self.out = Rewrite()
        self._wraps: list[tuple[exp.Table, str, str]] = []

    # --- walking ------------------------------------------------------------

    def visit(self, node: exp.Expression, ctes: frozenset[str]) -> None:
        with_ = node.args.get("with_")
        if isinstance(with_, exp.With):
            names = [_name(cte.args["alias"].this) for cte in with_.expressions]
            for i, cte in enumerate(with_.expressions):
                visible = names if with_.args.get("recursive") else names[:i]
                self.visit(cte.this, ctes | frozenset(n for n in visible if n))
            ctes = ctes | frozenset(n for n in names if n)
        for key, value in node.args.items():
            if key == "with_":
                continue
            for child in value if isinstance(value, list) else [value]:
                if isinstance(child, exp.Table):
                    self.table(child, key, node, ctes)
                elif isinstance(child, exp.Expression):
                    self.visit(child, ctes)
        if isinstance(node, _DML):
            self.dml(node)

    def table(self, table: exp.Table, key: str, parent: exp.Expression,
              ctes: frozenset[str]) -> None:
        for key2, value in table.args.items():  # e.g. function arguments, sample sizes
            if key2 in ("this", "db", "catalog", "alias"):
                continue
            for child in value if isinstance(value, list) else [value]:
                if isinstance(child, exp.Expression):
                    self.visit(child, ctes)
        if not isinstance(table.this, exp.Identifier):
            self.visit(table.this, ctes)  # a function in FROM: generate_series(...)
            return
        schema, name = _relation(table)
        self.out.references[(schema, name)] += 1
        if isinstance(parent, exp.Lock):
            return  # FOR UPDATE OF <alias>: names a FROM item, not a new source
        if schema is None and name in ctes:
            return  # a CTE, already walked where it is defined
        position = self._position(table, key, parent)
        qualified = classify_relation(self.rules, schema, name, position)
        self.out.relations.append(qualified)
        rule = self.rules.table(qualified)
        if position == "source" and rule is not None and rule.scope == "tenant":
            assert rule.column is not None
            self._wraps.append((table, qualified, rule.column))
            self.out.needs_tenant = True

    def _position(self, table: exp.Table, key: str, parent: exp.Expression) -> str:
        if isinstance(parent, (exp.From, exp.Join)) or (isinstance(parent, exp.Delete)
                                                          and key == "using"):
            return "source"
        if isinstance(parent, (exp.Update, exp.Delete)) and key == "this":
            return "target"
        if isinstance(parent, exp.Schema) and isinstance(parent.parent, exp.Insert):
            return "target"
        if isinstance(parent, exp.Insert) and key == "this":
            return "target"
        if isinstance(parent, exp.Into):
            raise Refused("SELECT INTO creates a table; DDL is not allowed",
                          hint="Use INSERT INTO ... SELECT into an existing table.")
        raise Unsupported(f"cannot analyze a table reference in this position "
                          f"({type(parent).__name__})")

    # --- DML targets -------------------------------------------------------------

    def dml(self, node: exp.Expression) -> None:
        target = node.this.this if isinstance(node.this, exp.Schema) else node.this
        if not isinstance(target, exp.Table) or not isinstance(target.this, exp.Identifier):
            raise Unsupported("cannot analyze the target of this statement")
        schema, name = _relation(target)
        rule = self.rules.table(f"{schema or 'public'}.{name}")
        if rule is None or rule.scope != "tenant":
            return  # shared (writability already checked)
        assert rule.column is not None
        self.out.needs_tenant = True
        alias = target.args.get("alias")
        ref = _name(alias.this) if alias is not None and alias.this is not None else name
        predicate = exp.EQ(this=exp.column(rule.column, table=ref, quoted=True),
                           expression=exp.Var(this=TENANT_SENTINEL))
        if isinstance(node, exp.Insert):
            self.insert(node, rule.column, predicate)
        else:
            self._check_assignments(node.expressions, rule.column)
            self._and_where(node, predicate)

    def _check_assignments(self, assignments: list[exp.Expression], column: str) -> None:
        """SET may name the tenant column only to assign the tenant itself (as ORMs that
        write every column do); anything else would move a row to another tenant."""
        for assignment in assignments:
            if not isinstance(assignment, exp.EQ):
                raise Unsupported("cannot analyze this SET clause")
            targets = assignment.this.expressions if isinstance(assignment.this, exp.Tuple) \
                else [assignment.this]
            if not any(_column_named(t, column) for t in targets):
                continue
            value = assignment.expression
            if isinstance(assignment.this, exp.Tuple):
                values = value.expressions if isinstance(value, exp.Tuple) else None
                if values is None or len(values) != len(targets):
                    raise Refused(f'changing the tenant column "{column}" is not allowed',
                                  hint="Rows cannot move between tenants.",
                                  reason="tenant_change")
                value = values[[_column_named(t, column) for t in targets].index(True)]
            if not self._is_checkable(value):
                raise Refused(f'changing the tenant column "{column}" is not allowed',
                              hint="Rows cannot move between tenants.", reason="tenant_change")
            self._check_tenant_value(value, column)

    @staticmethod
    def _is_checkable(value: exp.Expression) -> bool:
        if isinstance(value, exp.Cast) and value.to.this in _PLAIN_CASTS:
            value = value.this
        return isinstance(value, exp.Literal) or (
            isinstance(value, exp.Parameter) and isinstance(value.this, exp.Literal))

    @staticmethod
    def _and_where(node: exp.Expression, predicate: exp.Expression) -> None:
        where = node.args.get("where")
        if where is None:
            node.set("where", exp.Where(this=predicate))
        else:
            node.set("where", exp.Where(this=exp.and_(exp.paren(where.this), predicate)))

    def insert(self, node: exp.Insert, column: str, predicate: exp.Expression) -> None:
        if not isinstance(node.this, exp.Schema):
            raise Refused("INSERT into a tenant-scoped table needs a column list",
                          hint=f'Name the columns, with or without "{column}".')
        columns = [_name(c) for c in node.this.expressions]
        source = node.expression
        if column in columns:
            index = columns.index(column)
            for value in self._column_values(source, index, len(columns)):
                column_ref = value.this if isinstance(value, exp.Cast) else value
                if isinstance(column_ref, exp.Column) and not isinstance(source, exp.Values):
                    value.replace(_checked(value.copy()))
                else:
                    self._check_tenant_value(value, column)
        else:
            node.this.append("expressions", _ident(column))
            self._fill_tenant(node, source)
        conflict = node.args.get("conflict")
        if isinstance(conflict, exp.OnConflict) and conflict.expressions:
            # The conflicting row is locked before any WHERE runs, so filtering it
            # out would leave another tenant's row locked: fail as RLS does instead.
            self._check_assignments(conflict.expressions, column)
            where = conflict.args.get("where")
            conflict.set("where", exp.Where(this=_guard(
                predicate.this, "the conflicting row belongs to another tenant",
                then=where.this if where is not None else exp.true())))

    def _column_values(self, source: exp.Expression | None, index: int,
                       width: int) -> list[exp.Expression]:
        if isinstance(source, exp.Values):
            rows = [row.expressions if isinstance(row, exp.Tuple) else [row]
                    for row in source.expressions]
            if any(len(row) != width for row in rows):
                raise Unsupported("VALUES rows do not match the column list")
            return [row[index] for row in rows]
        if isinstance(source, exp.Select) and not any(
                isinstance(e, exp.Star) for e in source.expressions[:index + 1]):
            stars = any(isinstance(e, exp.Star) for e in source.expressions)
            if not stars and len(source.expressions) != width:
                raise Unsupported("INSERT ... SELECT does not match the column list")
            value = source.expressions[index]
            return [value.this if isinstance(value, exp.Alias) else value]
        raise Refused("the tenant column's value cannot be checked in this INSERT",
                      hint="Use VALUES, or a plain SELECT list, with the tenant id.")

    def _check_tenant_value(self, value: exp.Expression, column: str) -> None:
        if isinstance(value, exp.Cast) and value.to.this in _PLAIN_CASTS:
            value = value.this  # $1::INTEGER, as ORMs write it
        if isinstance(value, exp.Parameter) and isinstance(value.this, exp.Literal):
            self.out.tenant_params.add(int(value.this.this))
            return
        if isinstance(value, exp.Literal):
            self.out.tenant_literals.append(value.this)
            return
        raise Refused(f'the value of the tenant column "{column}" must be the tenant id '
                      "as a literal or a parameter",
                      hint="Or leave the column out and the proxy fills it in.")

    def _fill_tenant(self, node: exp.Insert, source: exp.Expression | None) -> None:
        sentinel = exp.Var(this=TENANT_SENTINEL)
        if isinstance(source, exp.Values):
            for row in source.expressions:
                if not isinstance(row, exp.Tuple):
                    raise Unsupported("cannot analyze this VALUES row")
                row.append("expressions", sentinel.copy())
        elif isinstance(source, (exp.Select, exp.SetOperation, exp.Subquery)):
            # The original subtree moves (not copied): its tables are already queued
            # for wrapping.
            inner = source.this if isinstance(source, exp.Subquery) else source
            rows = exp.Subquery(this=inner, alias=exp.TableAlias(this=_ident("_tp_rows")))
            node.set("expression", exp.Select(expressions=[exp.Star(), sentinel],
                                              from_=exp.From(this=rows)))
        else:
            raise Refused("INSERT into a tenant-scoped table needs VALUES or a SELECT")

    # --- applying ------------------------------------------------------------------

    def apply(self) -> None:
        system = self._system_columns()
        for table, qualified, column in self._wraps:
            schema, name = qualified.split(".", 1)
            inner = exp.Table(this=_ident(name), db=_ident(schema),
                              alias=exp.TableAlias(this=_ident(INNER_ALIAS)))
            for arg in ("only", "sample"):
                if table.args.get(arg) is not None:
                    inner.set(arg, table.args[arg])
            outputs = [exp.Star(), *(exp.alias_(exp.column(c, table=INNER_ALIAS), c)
                                     for c in system)]
            query = exp.select(*outputs).from_(inner).where(exp.EQ(
                this=exp.column(column, table=INNER_ALIAS, quoted=True),
                expression=exp.Var(this=TENANT_SENTINEL)))
            alias = table.args.get("alias")
            if alias is None or alias.this is None:
                alias = exp.TableAlias(this=table.this.copy(),
                                       columns=alias.columns if alias else None)
                self._unqualify_columns(table, schema, name)
            table.replace(exp.Subquery(this=query, alias=alias.copy()))

    def _system_columns(self) -> list[str]:
        """System columns (ctid, tableoid, ...) the statement reads: the wrapper passes
        them through, since ``SELECT *`` does not."""
        if not self._wraps:
            return []
        root = self._wraps[0][0].root()
        names = sorted({c.name.lower() for c in root.find_all(exp.Column)
                        if c.name.lower() in _SYSTEM_COLUMNS})
        if names and any(isinstance(s, exp.Star) for s in root.find_all(exp.Star)):
            raise Unsupported("system columns together with * are not supported",
                              hint="Name the columns you need.")
        return names

    def _unqualify_columns(self, table: exp.Table, schema: str, name: str) -> None:
        """``public.users.id`` names a FROM item that is now the subquery ``users``."""
        root = table.root()
        for column in root.find_all(exp.Column):
            db = column.args.get("db")
            if db is not None and _name(db) == schema and _name(column.args.get("table")) \
                    == name:
                column.set("db", None)
                column.set("catalog", None)


def scope_statement(tree: exp.Expression, rules: Rules) -> Rewrite:
    """Scope ``tree`` in place for tenant-scoped tables and return what was found.

    Raises PgError (Refused/Unsupported) when the statement is not allowed.
    """
    if isinstance(tree, exp.Merge):
        raise Unsupported("MERGE is not supported by tenant-proxy",
                          hint="Use INSERT ... ON CONFLICT, UPDATE or DELETE.")
    scoper = _Scoper(rules)
    try:
        scoper.visit(tree, frozenset())
    except (KeyError, AttributeError, TypeError, ValueError) as exc:
        raise Unsupported(f"cannot analyze this statement ({type(exc).__name__})") from exc
    scoper.apply()
    return scoper.out


__all__ = ["TENANT_SENTINEL", "PgError", "Rewrite", "scope_statement"]
