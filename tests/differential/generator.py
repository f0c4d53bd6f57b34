"""Random statements over the corpus schema for the differential fuzzer.

Pure and seeded: ``Generator(seed).statement()`` always gives the same
sequence. Each statement is labelled with the (position, kind, scope) cells it
covers: a relation of scope class ``scope`` is referenced at clause
``position`` of a statement of ``kind``, or (for the clause positions group-by,
having, order-by, window, filter) that clause works over such a relation.

Literals in predicates are written twice: inline (simple protocol) and as
typed parameters ``$n::type`` (extended protocol), so both forms mean the same.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.differential.schema import (
    ARR,
    BY_NAME,
    CATALOG,
    DENIED,
    INT,
    JSON,
    NUM,
    SCOPES,
    SHARED_RO,
    SHARED_RW,
    TABLES,
    TENANT_SCOPE,
    TEXT,
    TS,
    UNKNOWN,
    WRITABLE_TENANT,
    Table,
)

KINDS = ("select", "setop", "insert-values", "insert-select", "insert-default",
         "insert-conflict-nothing", "insert-conflict-update", "update", "delete",
         "dml-cte", "copy")
POSITIONS = ("from", "join-inner", "join-left", "join-right", "join-full", "join-cross",
             "lateral", "from-subquery", "select-scalar", "where-exists", "where-in",
             "where-not-in", "where-any", "where-scalar", "group-by", "having", "order-by",
             "window", "filter", "cte", "cte-recursive", "cte-shadow", "cte-shadow-target",
             "setop-arm", "values", "dml-target", "set-expr", "update-from", "delete-using",
             "conflict-where", "returning", "copy")
KIND_WEIGHTS = (25, 8, 8, 6, 3, 5, 7, 12, 9, 8, 6)
SCOPE_WEIGHTS = {TENANT_SCOPE: 62, SHARED_RO: 9, SHARED_RW: 9, DENIED: 6, UNKNOWN: 5,
                 CATALOG: 9}
CASTS = {INT: "int", NUM: "numeric", TEXT: "text", TS: "timestamptz"}
TEXT_VALUES = ("Alice", "Dave", "Grace", "alice@acme.test", "dave@globex.test",
               "111-11-1111", "222-22-1111", "SKU-A", "SKU-X", "US", "DE", "system",
               "login", "users", "public", "", "A%", "%e%")
MARK = re.compile("\x01(\\d+)\x01")
Cell = tuple[str, str, str]


@dataclass(frozen=True)
class Statement:
    """One generated statement in both forms, with what it covers."""

    sql: str
    param_sql: str
    params: tuple[str | None, ...]
    kind: str
    cells: frozenset[Cell]
    ordered: bool = False
    writes: bool = False


@dataclass(frozen=True)
class Rel:
    """A from-item the current query level can refer to."""

    alias: str
    columns: dict[str, str]
    key: str | None = None
    table: Table | None = None

    def cols(self, typ: str | None = None) -> list[str]:
        return [c for c, t in self.columns.items() if typ is None or t == typ]


@dataclass
class _State:
    kind: str = "select"
    cells: set[tuple[str, str]] = field(default_factory=set)
    lits: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    ctes: list[tuple[str, Rel, str | None]] = field(default_factory=list)
    aliases: int = 0
    params: bool = True


class Generator:
    """Seeded statement generator; see the module docstring."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.st = _State()

    # ------------------------------------------------------------------ helpers
    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def pick(self, seq):  # type: ignore[no-untyped-def]
        return self.rng.choice(list(seq))

    def use(self, pos: str, scope: str | None) -> None:
        if scope:
            self.st.cells.add((pos, scope))

    def alias(self) -> str:
        self.st.aliases += 1
        n = self.st.aliases
        return self.rng.choice([f"t{n}", f"t{n}", f"T{n}", f'"t{n}"'])

    def col(self, rel: Rel, name: str) -> str:
        quoted = f'"{name}"' if self.chance(0.1) else name
        return f"{rel.alias}.{quoted}"

    def scope_table(self, scopes: tuple[str, ...] = SCOPES,
                    need: Callable[[Table], bool] | None = None) -> Table:
        weights = [SCOPE_WEIGHTS[s] for s in scopes]
        while True:
            scope = self.rng.choices(scopes, weights)[0]
            found = [t for t in TABLES if t.scope == scope and (need is None or need(t))]
            if found:
                return self.pick(found)

    def table_name(self, t: Table) -> str:
        """The table as written, in one of the spellings PostgreSQL accepts (rarely
        one it does not: a quoted mixed-case name)."""
        r = self.rng.random()
        if t.schema != "public":
            if r < 0.15:
                return f'"{t.schema}"."{t.name}"'
            if r < 0.25:
                return t.qualified.upper()
            if r < 0.5 and t.schema == "pg_catalog":
                return t.name
            return t.qualified
        if r < 0.55:
            return t.name
        if r < 0.7:
            return t.qualified
        if r < 0.8:
            return f'"{t.name}"'
        if r < 0.86:
            return f'"public"."{t.name}"'
        if r < 0.98:
            return t.name.upper() if self.chance(0.5) else f"Public.{t.name.title()}"
        return f'"{t.name.title()}"'

    def lit(self, typ: str, value: object = None) -> str:
        """A literal of ``typ``, written as a parameter in the extended form."""
        if value is None:
            value = self.value(typ)
        if value == "NULL":
            sql, param = f"NULL::{CASTS.get(typ, 'text')}", None
        elif typ in (INT, NUM):
            sql, param = str(value), str(value)
        else:
            text = str(value)
            sql = "'" + text.replace("'", "''") + "'"
            param = text
            if typ == TS:
                sql = f"timestamptz {sql}"
        self.st.lits.append((sql, param, CASTS.get(typ) if self.st.params else None))
        return f"\x01{len(self.st.lits) - 1}\x01"

    def value(self, typ: str) -> object:
        if self.chance(0.04):
            return "NULL"
        if typ == INT:
            return self.rng.choice([0, 1, 2, 3, 4, 5, 7, 8, 10, 100])
        if typ == NUM:
            return self.rng.choice(["0", "25.50", "42", "100.00", "310", "999.99", "1500"])
        if typ == TS:
            return self.rng.choice(["2024-01-06", "2024-02-15", "2024-03-01 00:00+00"])
        return self.pick(TEXT_VALUES)

    # --------------------------------------------------------------- predicates
    def pred(self, rels: list[Rel], depth: int) -> str:
        r = self.rng.random()
        if r < 0.12 and depth < 2:
            return self.sub_pred(rels, depth)
        if r < 0.2:
            op = self.pick(["AND", "OR"])
            return f"({self.pred(rels, depth + 1)} {op} {self.pred(rels, depth + 1)})"
        if r < 0.23:
            return f"NOT ({self.simple_pred(self.pick(rels))})"
        return self.simple_pred(self.pick(rels))

    def simple_pred(self, rel: Rel) -> str:
        if not rel.columns:
            return "true"
        name = self.pick(rel.cols())
        typ = rel.columns[name]
        c = self.col(rel, name)
        makers = {INT: self.int_pred, NUM: self.num_pred, TEXT: self.text_pred,
                  TS: self.ts_pred, JSON: self.json_pred, ARR: self.arr_pred}
        if self.chance(0.08):
            return f"{c} IS {self.pick(['NULL', 'NOT NULL'])}"
        return makers[typ](c)

    def int_pred(self, c: str) -> str:
        r = self.rng.random()
        if r < 0.45:
            return f"{c} {self.pick(['=', '<>', '<', '>=', '<='])} {self.lit(INT)}"
        if r < 0.6:
            vals = ", ".join(self.lit(INT) for _ in range(self.rng.randint(1, 3)))
            return f"{c} {self.pick(['IN', 'NOT IN'])} ({vals})"
        if r < 0.72:  # division: fails on the row where c = k (non-leakproof)
            return f"100 / ({c} - {self.rng.randint(1, 8)}) {self.pick(['>', '<>'])} 0"
        if r < 0.8:
            return f"{c} BETWEEN {self.lit(INT)} AND {self.lit(INT)}"
        if r < 0.88:
            return f"({c} % 2) = {self.lit(INT, self.rng.randint(0, 1))}"
        return (f"CASE WHEN {c} > {self.lit(INT)} THEN 'a' ELSE 'b' END = "
                f"{self.lit(TEXT, self.pick('ab'))}")

    def num_pred(self, c: str) -> str:
        if self.chance(0.2):
            return f"{c} / {self.pick(['2', '0', '(' + c + ' - 25.50)'])} > {self.lit(NUM)}"
        return f"{c} {self.pick(['=', '<>', '<', '>'])} {self.lit(NUM)}"

    def text_pred(self, c: str) -> str:
        r = self.rng.random()
        if r < 0.25:
            return f"{c} {self.pick(['=', '<>', '<', '>'])} {self.lit(TEXT)}"
        if r < 0.35:
            return f"{c} LIKE {self.lit(TEXT, self.pick(['A%', '%e%', '%1%', 'S%']))}"
        if r < 0.47:
            n = self.lit(INT, self.rng.randint(0, 12))
            return f"length({c}) {self.pick(['>', '<', '='])} {n}"
        if r < 0.55:  # a cast that fails on non-numeric text (non-leakproof)
            return f"{c}::int > {self.lit(INT)}"
        if r < 0.62:
            return f"split_part({c}, '-', 1)::int {self.pick(['>', '='])} {self.lit(INT, 150)}"
        if r < 0.72:
            return f"coalesce({c}, 'none') <> {self.lit(TEXT)}"
        if r < 0.8:
            return f"upper({c}) = upper({self.lit(TEXT)})"
        if r < 0.88:
            return f"substr({c}, 1, 3) = {self.lit(TEXT, self.pick(['111', '222', 'SKU', 'ali']))}"
        return (f"CASE WHEN {c} IS NULL THEN {self.lit(TEXT, 'x')} "
                f"ELSE left({c}, 1) END = {self.lit(TEXT, self.pick(['A', 'D', 'x', 'S']))}")

    def ts_pred(self, c: str) -> str:
        return f"{c} {self.pick(['<', '>='])} {self.lit(TS)}"

    def json_pred(self, c: str) -> str:
        key = self.pick(["title", "status", "secret", "tenant"])
        if self.chance(0.3):
            return f"{c} ? {self.lit(TEXT, key)}"
        return f"({c} ->> {self.lit(TEXT, key)}) IS NOT NULL"

    def arr_pred(self, c: str) -> str:
        return f"{self.lit(TEXT, self.pick(['plan', 'secret', 'q1']))} = ANY ({c})"

    # ---------------------------------------------------------------- subqueries
    def inner_rel(self, pos: str, depth: int) -> tuple[str, Rel, list[str]]:
        """A table (or a CTE in scope) for a subquery: (from sql, rel, guards)."""
        if self.st.ctes and self.chance(0.12):
            name, rel, scope = self.pick(self.st.ctes)
            alias = self.alias()
            self.use(pos, scope)
            return f"{name} {alias}", Rel(alias, rel.columns, rel.key), []
        t = self.scope_table()
        return self.table_item(t, pos)

    def table_item(self, t: Table, pos: str) -> tuple[str, Rel, list[str]]:
        self.use(pos, t.scope)
        alias = self.alias()
        guards = [t.guard.format(a=alias)] if t.guard else []
        return f"{self.table_name(t)} {self.pick(['', 'AS '])}{alias}", \
            Rel(alias, dict(t.columns), t.key, t), guards

    def correlate(self, inner: Rel, outers: list[Rel]) -> str | None:
        """An equality between an inner and an outer column of the same type."""
        pairs = [(i, o, oc) for o in outers for i, t in inner.columns.items()
                 for oc, ot in o.columns.items() if t == ot and t in (INT, TEXT)]
        if not pairs:
            return None
        i, o, oc = self.pick(pairs)
        return f"{self.col(inner, i)} = {self.col(o, oc)}"

    def sub_where(self, inner: Rel, guards: list[str], outers: list[Rel], depth: int,
                  correlated: float = 0.6) -> str:
        parts = list(guards)
        if outers and self.chance(correlated):
            corr = self.correlate(inner, outers)
            if corr:
                parts.append(corr)
        if self.chance(0.5):
            parts.append(self.pred([inner], depth + 1))
        return f" WHERE {' AND '.join(parts)}" if parts else ""

    def sub_pred(self, outers: list[Rel], depth: int) -> str:
        r = self.rng.random()
        if r < 0.3:
            pos = "where-exists"
            sql, inner, guards = self.inner_rel(pos, depth)
            neg = "NOT " if self.chance(0.3) else ""
            where = self.sub_where(inner, guards, outers, depth)
            return f"{neg}EXISTS (SELECT 1 FROM {sql}{where})"
        if r < 0.75:
            pos = self.pick(["where-in", "where-in", "where-not-in", "where-any"])
            outer = self.pick(outers)
            typ = self.pick([t for t in (INT, TEXT) if outer.cols(t)] or [None])
            if typ is None:
                return "true"
            sub = self.typed_subquery(typ, pos, outers, depth)
            c = self.col(outer, self.pick(outer.cols(typ)))
            if pos == "where-in":
                return f"{c} IN ({sub})"
            if pos == "where-not-in":
                return f"{c} NOT IN ({sub})"
            return f"{c} {self.pick(['= ANY', '<> ALL', '> ANY', '<= ALL'])} ({sub})"
        outer = self.pick(outers)
        if not outer.cols(INT):
            return "true"
        sql, inner, guards = self.inner_rel("where-scalar", depth)
        agg = self.agg_int(inner)
        return (f"{self.col(outer, self.pick(outer.cols(INT)))} {self.pick(['>', '<=', '='])} "
                f"(SELECT {agg} FROM {sql}{self.sub_where(inner, guards, [outer], depth)})")

    def typed_subquery(self, typ: str, pos: str, outers: list[Rel], depth: int) -> str:
        """A one-column subquery of ``typ`` (a set operation now and then)."""
        if self.chance(0.12):
            arms = [self.typed_subquery(typ, "setop-arm", outers, depth + 1) for _ in range(2)]
            return f" {self.pick(['UNION', 'UNION ALL', 'EXCEPT', 'INTERSECT'])} ".join(arms)
        if self.chance(0.08):
            vals = ", ".join(f"({self.lit(typ)})" for _ in range(2))
            self.use("values", None)
            return f"VALUES {vals}"
        sql, inner, guards = self.inner_rel(pos, depth)
        return f"SELECT {self.expr_of(inner, typ)} FROM {sql}" \
               f"{self.sub_where(inner, guards, outers, depth, 0.3)}"

    def expr_of(self, rel: Rel, typ: str) -> str:
        """A value of ``typ`` from ``rel``'s row."""
        cols = rel.cols(typ)
        if cols and self.chance(0.85):
            return self.col(rel, self.pick(cols))
        if typ == INT:
            texts = rel.cols(TEXT)
            return f"length({self.col(rel, self.pick(texts))})" if texts else "1"
        if typ == TEXT and rel.columns:
            return f"{self.col(rel, self.pick(rel.cols()))}::text"
        return f"NULL::{CASTS.get(typ, 'text')}"

    def agg_int(self, rel: Rel) -> str:
        ints = rel.cols(INT)
        if ints and self.chance(0.5):
            return f"{self.pick(['max', 'min', 'sum'])}({self.col(rel, self.pick(ints))})"
        return "count(*)"

    def scalar_sub(self, pos: str, outers: list[Rel], depth: int, typ: str | None = None
                   ) -> str:
        """A correlated (or not) one-row subquery, of ``typ`` when given."""
        sql, inner, guards = self.inner_rel(pos, depth)
        if typ == TEXT or (typ is None and self.chance(0.3) and inner.cols(TEXT)):
            agg = f"max({self.expr_of(inner, TEXT)})"
        else:
            agg = self.agg_int(inner)
            if typ == INT:
                agg += "::int"
        return f"(SELECT {agg} FROM {sql}{self.sub_where(inner, guards, outers, depth)})"

    # -------------------------------------------------------------- FROM clause
    def from_item(self, pos: str, depth: int) -> tuple[str, list[Rel], list[str]]:
        r = self.rng.random()
        if r < 0.08 and depth < 2:
            return self.derived(depth)
        if r < 0.13:
            return self.values_item(depth)
        if r < 0.3 and self.st.ctes:
            name, rel, scope = self.pick(self.st.ctes)
            self.use(pos, scope)
            alias = self.alias() if self.chance(0.6) else name
            written = f"{name} {alias}" if alias != name else name
            return written, [Rel(alias, rel.columns, rel.key)], []
        sql, rel, guards = self.table_item(self.scope_table(), pos)
        return sql, [rel], guards

    def derived(self, depth: int) -> tuple[str, list[Rel], list[str]]:
        types = [self.pick([INT, TEXT]) for _ in range(self.rng.randint(1, 2))]
        body, _ = self.core(depth + 1, types, pos="from-subquery")
        alias = self.alias()
        names = [f"c{i}" for i in range(len(types))]
        rel = Rel(alias, dict(zip(names, types, strict=True)))
        return f"({body}) AS {alias}({', '.join(names)})", [rel], []

    def values_item(self, depth: int) -> tuple[str, list[Rel], list[str]]:
        rows = []
        for _ in range(self.rng.randint(1, 3)):
            first = self.lit(INT) if not self.chance(0.3) else \
                self.scalar_sub("values", [], depth + 1, INT)
            rows.append(f"({first}, {self.lit(TEXT)})")
        alias = self.alias()
        return f"(VALUES {', '.join(rows)}) AS {alias}(n, s)", \
            [Rel(alias, {"n": INT, "s": TEXT})], []

    def from_clause(self, depth: int, pos: str = "from") -> tuple[str, list[Rel], list[str]]:
        sql, rels, guards = self.from_item(pos, depth)
        r = self.rng.random()
        if r < 0.3:
            kind = self.pick(["inner", "left", "right", "full", "cross"])
            rsql, rrels, rguards = self.from_item(f"join-{kind}", depth)
            if kind == "cross":
                sql = f"{sql} {self.pick(['CROSS JOIN', ','])} {rsql}"
            else:
                on = self.correlate(rrels[0], rels) or "true"
                if self.chance(0.3):
                    on += f" AND {self.pred(rrels, depth + 1)}"
                word = {"inner": self.pick(["JOIN", "INNER JOIN"]), "left": "LEFT JOIN",
                        "right": "RIGHT JOIN", "full": "FULL JOIN"}[kind]
                sql = f"{sql} {word} {rsql} ON {on}"
            rels, guards = rels + rrels, guards + rguards
        elif r < 0.4 and depth < 2:
            isql, inner, iguards = self.inner_rel("lateral", depth)
            item = self.expr_of(inner, INT)
            where = self.sub_where(inner, iguards, rels, depth, 0.9)
            alias = self.alias()
            sub = f"(SELECT {item} AS v FROM {isql}{where})"
            sql += self.pick([f", LATERAL {sub} AS {alias}",
                              f" CROSS JOIN LATERAL {sub} AS {alias}",
                              f" LEFT JOIN LATERAL {sub} AS {alias} ON true"])
            rels = [*rels, Rel(alias, {"v": INT})]
        return sql, rels, guards

    # ------------------------------------------------------------------ SELECT
    def core(self, depth: int, types: list[str] | None = None, pos: str = "from"
             ) -> tuple[str, bool]:
        """A SELECT without WITH: (sql, whether its row order is total)."""
        sql, rels, guards = self.from_clause(depth, pos)
        shape = "rows" if types else self.pick(["rows", "rows", "rows", "agg", "group"])
        scopes = self.scopes_of(rels)
        where = list(guards)
        if self.chance(0.7):
            where.append(self.pred(rels, depth))
        tail, ordered = "", False
        if shape == "group" or (types and self.chance(0.15)):
            items, tail, ordered = self.grouped(rels, depth, types, scopes)
        elif shape == "agg":
            items = [self.aggregate(rels, depth, scopes) for _ in range(self.rng.randint(1, 2))]
            ordered = True
        else:
            items = self.row_items(rels, depth, types, scopes)
            if not types and self.chance(0.3):
                tail, ordered = self.order_by(rels, depth, scopes)
        text = f"SELECT {', '.join(items)} FROM {sql}"
        if where:
            text += " WHERE " + " AND ".join(where)
        return text + tail, ordered

    def scopes_of(self, rels: list[Rel]) -> list[str]:
        return [r.table.scope for r in rels if r.table is not None]

    def label(self, pos: str, scopes: list[str]) -> None:
        for s in scopes:
            self.use(pos, s)

    def row_items(self, rels: list[Rel], depth: int, types: list[str] | None,
                  scopes: list[str]) -> list[str]:
        if types:
            return [f"{self.expr_of(self.pick(rels), t)} AS c{i}" for i, t in enumerate(types)]
        if self.chance(0.08):
            return ["*" if self.chance(0.5) else f"{self.pick(rels).alias}.*"]
        items = []
        for _ in range(self.rng.randint(1, 3)):
            rel = self.pick(rels)
            r = self.rng.random()
            if r < 0.12 and depth < 2:
                item = self.scalar_sub("select-scalar", rels, depth + 1)
            elif r < 0.22:
                item = self.window(rels, depth, scopes)
            elif r < 0.45 and rel.columns:
                item = self.expression(rel)
            elif rel.columns:
                item = self.col(rel, self.pick(rel.cols()))
            else:
                item = "1"
            if self.chance(0.2):
                item += self.pick([" AS c", " AS \"Label\"", " x", " AS total"])
            items.append(item)
        return items

    def expression(self, rel: Rel) -> str:
        """A computed column; most leave PostgreSQL to name the output column."""
        options = []
        for c, t in rel.columns.items():
            ref = self.col(rel, c)
            if t == TEXT:
                options += [f"upper({ref})", f"substr({ref}, 1, 2)", f"length({ref})",
                            f"coalesce({ref}, 'none')", f"left({ref}, 3)", f"{ref} || '!'"]
            elif t == INT:
                options += [f"{ref} + 1", f"CASE WHEN {ref} > 2 THEN 'big' ELSE 'small' END",
                            f"{ref}::text", f"abs({ref})"]
            elif t == NUM:
                options += [f"{ref} * 2", f"round({ref})"]
            elif t == JSON:
                options += [f"{ref} ->> 'title'", f"jsonb_typeof({ref})"]
            elif t == TS:
                options += [f"date_trunc('month', {ref})", f"extract(month FROM {ref})"]
            elif t == ARR:
                options += [f"array_length({ref}, 1)", f"cardinality({ref})"]
        return self.pick(options) if options else "1"

    def window(self, rels: list[Rel], depth: int, scopes: list[str]) -> str:
        self.label("window", scopes)
        rel = self.pick(rels)
        cols = rel.cols()
        if depth < 2 and self.chance(0.25):
            order = self.scalar_sub("window", rels, depth + 1)
        elif cols:
            order = self.col(rel, self.pick(cols))
        else:
            order = "1"
        part = f"PARTITION BY {self.col(rel, self.pick(cols))}" if cols and self.chance(0.5) else ""
        return self.pick([f"count(*) OVER ({part})", f"rank() OVER ({part} ORDER BY {order})",
                          f"dense_rank() OVER (ORDER BY {order})"])

    def aggregate(self, rels: list[Rel], depth: int, scopes: list[str]) -> str:
        rel = self.pick(rels)
        base = self.pick(["count(*)", f"count({self.col(rel, self.pick(rel.cols()))})"
                          if rel.columns else "count(*)"])
        if rel.cols(INT) and self.chance(0.3):
            base = f"{self.pick(['sum', 'max', 'min'])}({self.col(rel, self.pick(rel.cols(INT)))})"
        if self.chance(0.35):
            self.label("filter", scopes)
            if depth < 2 and self.chance(0.4):
                cond = self.sub_pred_at("filter", rels, depth + 1)
            else:
                cond = self.pred(rels, depth + 1)
            base += f" FILTER (WHERE {cond})"
        return base

    def sub_pred_at(self, pos: str, rels: list[Rel], depth: int) -> str:
        sql, inner, guards = self.inner_rel(pos, depth)
        return f"EXISTS (SELECT 1 FROM {sql}{self.sub_where(inner, guards, rels, depth)})"

    def grouped(self, rels: list[Rel], depth: int, types: list[str] | None,
                scopes: list[str]) -> tuple[list[str], str, bool]:
        self.label("group-by", scopes)
        rel = self.pick(rels)
        saved, self.st.params = self.st.params, False
        if types:
            keys = [self.expr_of(rel, types[0])]
        elif depth < 2 and self.chance(0.2) and rel.cols(INT):
            keys = [f"({self.col(rel, self.pick(rel.cols(INT)))} IN "
                    f"({self.typed_subquery(INT, 'group-by', [], depth + 1)}))"]
        else:
            keys = [self.col(r, self.pick(r.cols())) for r in rels[:2] if r.columns] or ["1"]
        self.st.params = saved
        if types:
            items = [f"{keys[0]} AS c0"] + [f"count(*)::{CASTS[t]} AS c{i + 1}"
                                             for i, t in enumerate(types[1:])]
        else:
            items = [*keys, self.aggregate(rels, depth, scopes)]
        tail = " GROUP BY " + ", ".join(keys)
        if self.chance(0.35):
            self.label("having", scopes)
            if depth < 2 and self.chance(0.5):
                tail += f" HAVING count(*) {self.pick(['>=', '<'])} " + \
                        self.scalar_sub("having", [], depth + 1)
            else:
                tail += f" HAVING count(*) > {self.lit(INT, self.rng.randint(0, 2))}"
        ordered = False
        if not types and self.chance(0.4):
            self.label("order-by", scopes)
            tail += " ORDER BY " + ", ".join(keys)
            ordered = True
        return items, tail, ordered

    def order_by(self, rels: list[Rel], depth: int, scopes: list[str]) -> tuple[str, bool]:
        self.label("order-by", scopes)
        keys = []
        if depth < 2 and self.chance(0.3):
            keys.append(self.scalar_sub("order-by", rels, depth + 1))
        total = all(r.key for r in rels)
        keys += [self.col(r, r.key) + self.pick(["", " DESC"]) for r in rels if r.key]
        if not keys:
            keys = ["1"]
        tail = " ORDER BY " + ", ".join(keys)
        if total and self.chance(0.4):
            tail += f" LIMIT {self.rng.randint(1, 4)}"
            if self.chance(0.3):
                tail += f" OFFSET {self.rng.randint(1, 2)}"
        return tail, total

    def with_clause(self, depth: int, target: Table | None = None) -> str:
        """Plain, recursive or table-shadowing CTEs; they join ``self.st.ctes``."""
        parts, recursive = [], False
        for _ in range(self.rng.randint(1, 2)):
            r = self.rng.random()
            if r < 0.2:
                recursive = True
                parts.append(self.recursive_cte(depth))
                continue
            types = [self.pick([INT, TEXT]) for _ in range(self.rng.randint(1, 2))]
            if target is not None and r < 0.45:
                name, shadow = target.name, target
                self.use("cte-shadow-target", target.scope)
            elif r < 0.45:
                shadow = self.pick([t for t in TABLES if t.schema != "information_schema"])
                name = shadow.name
                self.use("cte-shadow", shadow.scope)
            else:
                name, shadow = f"c{len(self.st.ctes)}", None
            if any(n == name for n, _, _ in self.st.ctes):
                continue
            body, _ = self.core(depth + 1, types, pos="cte")
            names = [f"x{i}" for i in range(len(types))]
            scope = shadow.scope if shadow else None
            self.st.ctes.append((name, Rel(name, dict(zip(names, types, strict=True))), scope))
            parts.append(f"{name}({', '.join(names)}) AS ({body})")
        if not parts:
            return ""
        return "WITH " + ("RECURSIVE " if recursive else "") + ", ".join(parts) + " "

    def recursive_cte(self, depth: int) -> str:
        name = f"r{len(self.st.ctes)}"
        t = self.scope_table()
        sql, rel, guards = self.table_item(t, "cte-recursive")
        typ = self.pick([INT, TEXT])
        cast = CASTS[typ]
        start = f"SELECT 1, ({self.expr_of(rel, typ)})::{cast} FROM {sql}" + \
            self.sub_where(rel, guards, [], depth, 0)
        if self.chance(0.5):
            t2 = self.scope_table()
            sql2, rel2, guards2 = self.table_item(t2, "cte-recursive")
            cond = " AND ".join([*guards2, f"{name}.n < 3"])
            step = (f"SELECT {name}.n + 1, ({self.expr_of(rel2, typ)})::{cast} FROM {name} "
                    f"JOIN {sql2} ON {self.correlate(rel2, [Rel(name, {'v': typ})]) or 'true'} "
                    f"WHERE {cond}")
        else:
            step = f"SELECT n + 1, v FROM {name} WHERE n < 3"
        self.st.ctes.append((name, Rel(name, {"n": INT, "v": typ}), t.scope))
        return f"{name}(n, v) AS ({start} UNION ALL {step})"

    # ------------------------------------------------------------ statements
    def select_stmt(self) -> tuple[str, bool]:
        prefix = self.with_clause(0) if self.chance(0.25) else ""
        body, ordered = self.core(0)
        return prefix + body, ordered

    def setop_stmt(self) -> tuple[str, bool]:
        prefix = self.with_clause(0) if self.chance(0.15) else ""
        types = [self.pick([INT, TEXT]) for _ in range(self.rng.randint(1, 2))]
        arms = []
        for _ in range(self.rng.randint(2, 3)):
            body, _ = self.core(1, types, pos="setop-arm")
            arms.append(f"({body})" if self.chance(0.3) else body)
        sql = arms[0]
        for arm in arms[1:]:
            op = self.pick(["UNION", "INTERSECT", "EXCEPT"]) + self.pick(["", " ALL"])
            sql += f" {op} {arm}"
        if self.chance(0.3):
            sql += " ORDER BY 1"
        return prefix + sql, False

    def target(self) -> Table:
        t = self.scope_table()
        if t.scope == TENANT_SCOPE and not t.writable and self.chance(0.8):
            return self.pick(WRITABLE_TENANT)
        return t

    def target_guard(self, t: Table, alias: str) -> list[str]:
        """Catalog targets: a predicate no row matches, so even a write the proxy
        let through changes nothing."""
        if t.scope != CATALOG:
            return []
        first = next(iter(t.columns))
        return [f"{alias}.{first} = 'fuzz-no-such-row'"]

    def dml_target(self, t: Table) -> tuple[str, Rel]:
        self.use("dml-target", t.scope)
        if self.chance(0.3):  # no alias: columns are qualified by the table name
            return self.table_name(t), Rel(t.name, dict(t.columns), t.key, t)
        alias = self.alias()
        return f"{self.table_name(t)} {self.pick(['', 'AS '])}{alias}", \
            Rel(alias, dict(t.columns), t.key, t)

    def returning(self, rel: Rel, depth: int) -> str:
        if not self.chance(0.6):
            return ""
        r = self.rng.random()
        if r < 0.3:
            return " RETURNING *"
        items = [self.col(rel, c) for c in rel.cols()[:2]] or ["1"]
        if r < 0.55 and depth < 2:
            items.append(self.scalar_sub("returning", [rel], depth + 1))
        elif r < 0.8 and rel.columns:
            items.append(self.expression(rel))
        return " RETURNING " + ", ".join(items)

    def set_clause(self, rel: Rel, t: Table, depth: int) -> str:
        cols = [c for c in t.columns if c != t.key] or list(t.columns)
        out = []
        for c in self.rng.sample(cols, min(len(cols), self.rng.randint(1, 2))):
            typ = t.columns[c]
            ref = c
            if c == t.tenant_col:
                value = self.pick([c, c, "1", "2"])
            elif depth < 2 and self.chance(0.25) and typ in (INT, NUM, TEXT):
                sub = self.scalar_sub("set-expr", [rel], depth + 1, TEXT if typ == TEXT else INT)
                value = f"{sub}::{CASTS[typ]}"
            else:
                value = self.set_value(ref, typ)
            out.append(f"{c} = {value}")
        return ", ".join(out)

    def set_value(self, ref: str, typ: str) -> str:
        return {INT: self.pick([f"{ref} + 1", ref, "7"]),
                NUM: self.pick([f"{ref} * 2", ref, "0"]),
                TEXT: self.pick([f"upper({ref})", ref, f"{ref} || 'x'", "'fz'"]),
                TS: f"{ref} + interval '1 day'",
                JSON: f"{ref} || '{{\"fz\": 1}}'",
                ARR: f"{ref} || ARRAY['fz']"}[typ]

    def update_stmt(self, depth: int = 0, t: Table | None = None) -> str:
        t = t or self.target()
        target, rel = self.dml_target(t)
        sql = f"UPDATE {target} SET {self.set_clause(rel, t, depth)}"
        rels, where = [rel], self.target_guard(t, rel.alias)
        if self.chance(0.3):
            fsql, frels, fguards = self.from_item("update-from", depth + 1)
            sql += f" FROM {fsql}"
            where += [*fguards, self.correlate(frels[0], [rel]) or "true"]
            rels += frels
        if self.chance(0.85):
            where.append(self.pred(rels, depth))
        if where:
            sql += " WHERE " + " AND ".join(where)
        return sql + self.returning(rel, depth)

    def delete_stmt(self, depth: int = 0, t: Table | None = None) -> str:
        t = t or self.target()
        target, rel = self.dml_target(t)
        sql = f"DELETE FROM {target}"
        rels, where = [rel], self.target_guard(t, rel.alias)
        if self.chance(0.3):
            usql, urels, uguards = self.from_item("delete-using", depth + 1)
            sql += f" USING {usql}"
            where += [*uguards, self.correlate(urels[0], [rel]) or "true"]
            rels += urels
        if self.chance(0.9):
            where.append(self.pred(rels, depth))
        if where:
            sql += " WHERE " + " AND ".join(where)
        return sql + self.returning(rel, depth)

    def insert_value(self, t: Table, col: str, depth: int) -> str:
        """A value for ``col`` of a new row (tenant 1 mostly, sometimes another)."""
        typ = t.columns[col]
        if col == t.tenant_col:
            return self.pick(["1", "1", "1", "2", "NULL", "DEFAULT"])
        if depth < 2 and typ == INT and self.chance(0.15):
            return self.scalar_sub("values", [], depth + 1, INT)
        n = self.rng.randint(0, 99999)
        makers: dict[str, str] = {
            "email": f"'fz{n}@x.test'", "name": self.pick(["'Fz'", "NULL", "'Alice'"]),
            "ssn": self.pick(["'999-99-9999'", "NULL"]), "user_id": self.pick(["1", "4", "NULL"]),
            "total": self.pick(["5", "12.50"]), "order_id": self.pick(["1", "3", "5"]),
            "sku": "'SKU-FZ'", "qty": str(self.rng.randint(1, 9)), "body": "'{\"title\": \"fz\"}'",
            "code": self.pick(["'US'", "'ZZ'"]), "bid": self.pick(["1", str(100 + n % 50)]),
            "bbalance": "0", "tid": self.pick(["1", "200"]), "tbalance": "0",
            "actor": "'fz'", "action": "'fz'",
        }
        if col in makers:
            return makers[col]
        if col == "id" and t.name == "tenants":
            return self.pick(["1", "9"])
        return "'fz'" if typ == TEXT else "1"

    def insert_cols(self, t: Table) -> list[str]:
        cols = list(t.insert_cols)
        if t.tenant_col in cols and t.writable and self.chance(0.3):
            cols.remove(t.tenant_col)  # the tenant column is filled in
        return cols

    def insert_head(self, t: Table, cols: list[str]) -> tuple[str, Rel]:
        self.use("dml-target", t.scope)
        name = self.table_name(t)
        if self.chance(0.2):
            alias = self.alias()
            return f"INSERT INTO {name} AS {alias} ({', '.join(cols)})", \
                Rel(alias, dict(t.columns), t.key, t)
        return f"INSERT INTO {name} ({', '.join(cols)})", Rel(t.name, dict(t.columns), t.key, t)

    def insert_stmt(self, variant: str, depth: int = 0) -> str:
        need = (lambda t: t.key is not None) if variant.startswith("insert-conflict") else None
        t = self.scope_table(need=need)
        if t.scope == TENANT_SCOPE and not t.writable and self.chance(0.8):
            t = self.pick(WRITABLE_TENANT)
        if variant == "insert-default":
            self.use("dml-target", t.scope)
            rel = Rel(t.name, dict(t.columns), t.key, t)
            return f"INSERT INTO {self.table_name(t)} DEFAULT VALUES{self.returning(rel, depth)}"
        cols = self.insert_cols(t)
        if variant.startswith("insert-conflict") and t.key not in cols:
            cols = [t.key, *cols]
        head, rel = self.insert_head(t, cols)
        if variant == "insert-select":
            return head + " " + self.insert_select(t, cols, depth) + self.returning(rel, depth)
        rows = [f"({', '.join(self.conflict_value(t, c, depth) for c in cols)})"
                for _ in range(1 if variant.startswith("insert-conflict")
                               else self.rng.randint(1, 2))]
        sql = f"{head} VALUES {', '.join(rows)}"
        if variant == "insert-conflict-nothing":
            sql += f" ON CONFLICT ({t.key}) DO NOTHING"
        elif variant == "insert-conflict-update":
            sql += self.conflict_update(t, rel, cols, depth)
        return sql + self.returning(rel, depth)

    def conflict_value(self, t: Table, col: str, depth: int) -> str:
        if col == t.key and t.columns[col] == INT:
            return self.pick(["1", "2", "4", "7", str(300 + self.rng.randint(0, 99))])
        return self.insert_value(t, col, depth)

    def conflict_update(self, t: Table, rel: Rel, cols: list[str], depth: int) -> str:
        settable = [c for c in cols if c != t.key] or cols
        c = self.pick(settable)
        sql = f" ON CONFLICT ({t.key}) DO UPDATE SET {c} = EXCLUDED.{c}"
        if self.chance(0.7):
            self.use("conflict-where", t.scope)
            cond = self.sub_pred_at("conflict-where", [rel], depth + 1) if self.chance(0.5) \
                else self.pred([rel], depth + 1)
            sql += f" WHERE {cond}"
        return sql

    def insert_select(self, t: Table, cols: list[str], depth: int) -> str:
        sql, rels, guards = self.from_clause(depth + 1)
        src = self.pick(rels)
        items = []
        for c in cols:
            typ = t.columns[c]
            if c == t.tenant_col and src.cols(INT) and "tenant_id" in src.columns \
                    and self.chance(0.5):
                items.append(self.col(src, "tenant_id"))
            elif c == t.tenant_col:
                items.append(self.pick(["1", "1", "2"]))
            elif c == "email":
                items.append(f"'fz' || {self.expr_of(src, TEXT)} || '@x.test'")
            elif c in ("bid", "tid", "code"):
                items.append(self.insert_value(t, c, depth))
            else:
                items.append(self.expr_of(src, typ) if typ in (INT, TEXT) and src.cols(typ)
                             else self.insert_value(t, c, depth))
        where = list(guards)
        if self.chance(0.8):
            where.append(self.pred(rels, depth + 1))
        tail = f" WHERE {' AND '.join(where)}" if where else ""
        select = f"SELECT {', '.join(items)} FROM {sql}{tail}"
        # Sources the proxy cannot append the tenant to in place (it wraps them).
        return self.pick([select, select, select, f"({select})",
                          f"{select} UNION ALL {select}",
                          f"WITH src AS ({select}) SELECT * FROM src"])

    def dml_cte_stmt(self) -> tuple[str, bool]:
        inner_kind = self.pick(["update", "delete", "insert"])
        if inner_kind == "update":
            dml = self.update_stmt(1)
        elif inner_kind == "delete":
            dml = self.delete_stmt(1)
        else:
            dml = self.insert_stmt(self.pick(["insert-values", "insert-select"]), 1)
        if " RETURNING " not in dml:
            dml += " RETURNING 1 AS one"
        dml = re.sub(r" RETURNING .*$", " RETURNING 1 AS one", dml) if self.chance(0.5) else dml
        rest = self.pick(["SELECT count(*) FROM w", "SELECT * FROM w",
                          "SELECT count(*) FROM w, countries c WHERE c.code = 'US'"])
        return f"WITH w AS ({dml}) {rest}", False

    def copy_stmt(self) -> tuple[str, bool]:
        self.st.params = False
        fmt = self.pick(["", " WITH (FORMAT csv)", " (FORMAT text)", " CSV HEADER"])
        if self.chance(0.3):
            t = self.scope_table()
            self.use("copy", t.scope)
            cols = f" ({', '.join(t.cols_of(INT)[:2])})" if t.cols_of(INT) and \
                self.chance(0.4) else ""
            return f"COPY {self.table_name(t)}{cols} TO STDOUT{fmt}", False
        body, _ = self.core(0, pos="copy") if self.chance(0.5) else self.core(0)
        return f"COPY ({body}) TO STDOUT{fmt}", False

    def statement(self) -> Statement:
        """The next statement."""
        kind = self.rng.choices(KINDS, KIND_WEIGHTS)[0]
        self.st = _State(kind=kind, params=self.chance(0.6))
        ordered = False
        if kind == "select":
            sql, ordered = self.select_stmt()
        elif kind == "setop":
            sql, ordered = self.setop_stmt()
        elif kind in ("update", "delete"):
            t = self.target()
            make = self.update_stmt if kind == "update" else self.delete_stmt
            sql = self.dml_prefix(t) + make(0, t)
        elif kind.startswith("insert"):
            sql = self.insert_stmt(kind)
        elif kind == "dml-cte":
            sql, ordered = self.dml_cte_stmt()
        else:
            sql, ordered = self.copy_stmt()
        return self.finish(sql, kind, ordered)

    def dml_prefix(self, t: Table) -> str:
        """Sometimes a WITH before UPDATE/DELETE, named like a table or the target."""
        if not self.chance(0.25):
            return ""
        return self.with_clause(1, target=t if t.schema != "information_schema" else None)

    def finish(self, sql: str, kind: str, ordered: bool) -> Statement:
        lits = self.st.lits

        def inline(m: re.Match[str]) -> str:
            return lits[int(m.group(1))][0]

        numbers: dict[int, int] = {}
        params: list[str | None] = []

        def param(m: re.Match[str]) -> str:
            i = int(m.group(1))
            literal, value, cast = lits[i]
            if cast is None:
                return literal
            if i not in numbers:
                params.append(value)
                numbers[i] = len(params)
            return f"${numbers[i]}::{cast}"

        literal_sql = MARK.sub(inline, sql)
        param_sql = MARK.sub(param, sql)
        cells = frozenset((p, kind, s) for p, s in self.st.cells)
        writes = kind not in ("select", "setop", "copy")
        return Statement(literal_sql, param_sql, tuple(params), kind, cells, ordered, writes)


def generate(seed: int, count: int) -> list[Statement]:
    """``count`` statements from ``seed``."""
    gen = Generator(seed)
    return [gen.statement() for _ in range(count)]


__all__ = ["BY_NAME", "KINDS", "POSITIONS", "Generator", "Statement", "generate"]
