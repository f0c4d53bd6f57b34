"""Meaning-preserving mutations of PostgreSQL statements, for hostility tests.

Each operator takes a statement, a :class:`random.Random` and a :class:`Context` and
returns a variant that PostgreSQL reads the same way (or ``None`` when it has nothing to
change). Operators work on PostgreSQL's own token boundaries (``pglast.parser.scan``) and
on parse-tree locations, never on regular expressions over the text, so they cannot cut
into a string, a quoted identifier or a comment.

:func:`mutate` chains a few operators and accepts a step only when it is proven
equivalent to the original statement:

* **exact** steps (case, quoting, whitespace, comments, string spellings, redundant
  parentheses, ``AS``, ``t *``, semicolons) must give the very same parse tree, locations
  aside, hence also the same :func:`pglast.parser.fingerprint`;
* **normalized** steps (schema and catalog qualification, ``ONLY``, integer literal
  tricks) must give the same tree once :func:`normal_form` has undone exactly those
  changes, and it undoes them only where PostgreSQL gives them the same meaning: a name
  that resolves to ``public`` and is not a CTE, a function that exists only in
  ``pg_catalog``, a relation without children, an ``int4`` constant outside the
  positional ``ORDER BY``/``GROUP BY``/``DISTINCT ON`` slots and outside unnamed target
  columns (whose generated column name would change).

The facts in :class:`Context` are claims about the database; the tests check them against
the live schema before relying on them.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pglast import parser
from pglast.parser import ParseError

__all__ = ["OPERATORS", "Context", "Mutant", "equivalent", "mutate", "normal_form",
           "same_tree", "tokens"]

#: Steps accepted, and candidates turned down by the equivalence check, per operator.
APPLIED: Counter[str] = Counter()
REJECTED: Counter[str] = Counter()

_OP_CHARS = set("~!@#^&|`?+-*/%<>=")
_IDENT_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$")
_SPACE = " \t\n\r\f"
_INT4 = range(-(2**31), 2**31)


@dataclass(frozen=True)
class Context:
    """What the database guarantees about names (see the module docstring)."""

    #: Relations that exist in ``public`` (and nowhere earlier on the search path).
    relations: frozenset[str] = frozenset()
    #: Functions whose name exists only in ``pg_catalog``.
    functions: frozenset[str] = frozenset()
    #: The current database, for ``db.public.table``.
    database: str | None = None
    #: No relation has inheritance children or partitions, so ``ONLY`` changes nothing.
    no_inheritance: bool = False


@dataclass(frozen=True)
class Mutant:
    original: str
    sql: str
    steps: tuple[str, ...]
    #: Same parse tree as the original (not only the same after :func:`normal_form`).
    exact: bool


# ------------------------------------------------------------------------ tokens, text


@dataclass(frozen=True)
class Tok:
    start: int  # character offsets, end exclusive
    end: int
    name: str
    kind: str
    text: str

    @property
    def comment(self) -> bool:
        return self.name in ("C_COMMENT", "SQL_COMMENT")


class _Offsets:
    """Byte offsets (what libpg_query reports) to character offsets."""

    def __init__(self, sql: str) -> None:
        self.ascii = sql.isascii()
        if not self.ascii:
            self.table = [0] * (len(sql.encode()) + 1)
            pos = 0
            for i, ch in enumerate(sql):
                for _ in range(len(ch.encode())):
                    self.table[pos] = i
                    pos += 1
            self.table[pos] = len(sql)

    def __call__(self, byte: int) -> int:
        return byte if self.ascii else self.table[byte]


def tokens(sql: str) -> list[Tok]:
    """PostgreSQL's tokens of ``sql``, comments included."""
    at = _Offsets(sql)
    out = []
    for t in parser.scan(sql):
        start, end = at(t.start), at(t.end + 1)
        out.append(Tok(start, end, t.name, t.kind, sql[start:end]))
    return out


def _splice(sql: str, edits: list[tuple[int, int, str]]) -> str:
    for start, end, text in sorted(edits, key=lambda e: (e[0], e[1]), reverse=True):
        sql = sql[:start] + text + sql[end:]
    return sql


def _gaps(sql: str, toks: list[Tok]) -> Iterator[tuple[int, int, Tok | None, Tok | None]]:
    """Every stretch between two tokens (and before the first, after the last)."""
    prev: Tok | None = None
    pos = 0
    for t in [*toks, None]:
        end = t.start if t is not None else len(sql)
        yield pos, end, prev, t
        if t is not None:
            prev, pos = t, t.end


def _char_before(sql: str, pos: int) -> str:
    return sql[pos - 1] if pos > 0 else ""


def _char_at(sql: str, pos: int) -> str:
    return sql[pos] if pos < len(sql) else ""


def _recase(word: str, rng: random.Random) -> str:
    style = rng.randrange(4)
    if style == 0:
        return word.upper()
    if style == 1:
        return word.lower()
    if style == 2:
        return word[:1].upper() + word[1:].lower()
    return "".join(c.upper() if c.isascii() and rng.random() < 0.5 else
                   c.lower() if c.isascii() else c for c in word)


# ------------------------------------------------------------------------- parse trees


@lru_cache(maxsize=4096)
def _parse(sql: str) -> str | None:
    try:
        return parser.parse_sql_json(sql)
    except ParseError:
        return None


#: Byte positions in the parse tree: they differ between spellings of one statement.
_POSITIONS = frozenset({"location", "stmt_location", "stmt_len", "list_start", "list_end",
                        "rexpr_list_start", "rexpr_list_end", "arg_location",
                        "conninfo_location", "match_location", "name_location",
                        "payload_location"})


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in _POSITIONS}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _tree(sql: str) -> Any | None:
    text = _parse(sql)
    return None if text is None else _strip(json.loads(text))["stmts"]


def same_tree(a: str, b: str) -> bool:
    """The same parse tree, locations aside (then the fingerprints agree too)."""
    ta = _tree(a)
    return ta is not None and ta == _tree(b)


def _is_node(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value))[:1].isupper()


def _kind(value: dict[str, Any]) -> tuple[str, dict[str, Any], bool] | None:
    """(node type, body, wrapped) of a node, else None. Lists hold nodes wrapped as
    ``{"RangeVar": {...}}``, but fields typed as one struct hold the body alone
    (``InsertStmt.relation``, ``TypeCast.typeName``, ``SelectStmt.intoClause``): those are
    recognised by the fields that libpg_query always writes for them."""
    if _is_node(value):
        ((kind, body),) = value.items()
        return (kind, body, True) if isinstance(body, dict) else None
    if "relname" in value and "relpersistence" in value:
        return "RangeVar", value, False
    if "names" in value and "typemod" in value:
        return "TypeName", value, False
    if "rel" in value and "onCommit" in value:
        return "IntoClause", value, False
    return None


def _walk(value: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every (node type, node body) in a parse tree."""
    if isinstance(value, list):
        for v in value:
            yield from _walk(v)
    elif isinstance(value, dict):
        found = _kind(value)
        if found is not None:
            yield found[0], found[1]
            value = found[1]
        for v in value.values():
            yield from _walk(v)


def _cte_names(stmt: Any) -> set[str]:
    return {body["ctename"] for kind, body in _walk(stmt) if kind == "CommonTableExpr"}


#: Statements whose relation names are references (not names being created).
_DML = frozenset({"SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt",
                  "CopyStmt", "DeclareCursorStmt", "ExplainStmt", "PrepareStmt"})
#: Below these, a literal is not an ordinary expression value.
_LITERAL_BLOCKERS = frozenset({"TypeName", "DefElem", "IntoClause", "VariableSetStmt"})
#: Fields whose direct items a bare integer makes positional (ORDER BY 1, GROUP BY 1).
_POSITIONAL = frozenset({("SortBy", "node"), ("SelectStmt", "groupClause"),
                         ("SelectStmt", "distinctClause"), ("GroupingSet", "content")})
_INT4_TYPE = {"names": [{"String": {"sval": "pg_catalog"}}, {"String": {"sval": "int4"}}],
              "typemod": -1}


def _int_const(node: Any) -> int | None:
    """The value of an ``A_Const`` integer (``ival``), else None."""
    if not _is_node(node) or "A_Const" not in node:
        return None
    body = node["A_Const"]
    if "ival" in body:
        return int(body["ival"].get("ival", 0))
    return None


def _int_node(value: int) -> dict[str, Any]:
    return {"A_Const": {"ival": {"ival": value} if value else {}}}


def _collapse(kind: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """An int4 constant spelled as a cast or with a unary sign, as the plain constant."""
    if kind == "TypeCast" and body.get("typeName") == _INT4_TYPE:
        arg = body.get("arg")
        value = _int_const(arg)
        if value is None and _is_node(arg) and "A_Const" in arg:
            text = arg["A_Const"].get("sval", {}).get("sval")
            if isinstance(text, str) and text.lstrip("-").isdigit() and \
                    str(int(text)) == text and int(text) in _INT4:
                value = int(text)
        if value is not None:
            return _int_node(value)
    if kind == "A_Expr" and body.get("kind") == "AEXPR_OP" and "lexpr" not in body:
        value = _int_const(body.get("rexpr"))
        sign = body.get("name")
        if value is not None and sign == [{"String": {"sval": "+"}}]:
            return _int_node(value)
        if value is not None and sign == [{"String": {"sval": "-"}}] and -value in _INT4:
            return _int_node(-value)
    return None


def _normalize(value: Any, ctx: Context, ctes: set[str], dml: bool, literals: bool,
               collapse: bool) -> Any:
    if isinstance(value, list):
        return [_normalize(v, ctx, ctes, dml, literals, collapse) for v in value]
    if not isinstance(value, dict):
        return value
    found = _kind(value)
    if found is None:
        return {k: _normalize(v, ctx, ctes, dml, literals, collapse) for k, v in value.items()}
    kind, body, wrapped = found
    child_dml = dml and kind != "IntoClause"
    child_literals = literals and kind not in _LITERAL_BLOCKERS
    out: dict[str, Any] = {}
    for name, child in body.items():
        top = child_literals and (kind, name) not in _POSITIONAL and not (
            kind == "ResTarget" and name == "val" and "name" not in body)
        out[name] = _normalize(child, ctx, ctes, child_dml, child_literals, top)
    if kind == "RangeVar" and dml and out.get("relname") in ctx.relations \
            and out["relname"] not in ctes and out.get("schemaname") in (None, "public") \
            and out.get("catalogname") in (None, ctx.database):
        out.pop("schemaname", None)
        out.pop("catalogname", None)
        if ctx.no_inheritance:
            out["inh"] = True
    if kind == "FuncCall":
        names = out.get("funcname")
        if isinstance(names, list) and len(names) == 2 and \
                names[0] == {"String": {"sval": "pg_catalog"}} and \
                names[1].get("String", {}).get("sval") in ctx.functions:
            out["funcname"] = names[1:]
    if collapse and literals and wrapped:
        collapsed = _collapse(kind, out)
        if collapsed is not None:
            return collapsed
    return {kind: out} if wrapped else out


def normal_form(sql: str, ctx: Context) -> Any | None:
    """The parse tree with the context-dependent spellings undone (see module doc)."""
    stmts = _tree(sql)
    if stmts is None:
        return None
    out = []
    for raw in stmts:
        stmt = raw.get("stmt", {})
        kind = next(iter(stmt), "")
        dml = kind in _DML
        out.append(_normalize(stmt, ctx, _cte_names(stmt), dml, dml, False))
    return out


def equivalent(original: str, mutated: str, ctx: Context) -> bool:
    if same_tree(original, mutated):
        return True
    a = normal_form(original, ctx)
    return a is not None and a == normal_form(mutated, ctx)


def _located(sql: str, ctx: Context) -> Iterator[tuple[str, dict[str, Any], bool, set[str]]]:
    """(node type, body with byte locations, in a DML statement, CTE names) of ``sql``."""
    text = _parse(sql)
    if text is None:
        return
    for raw in json.loads(text)["stmts"]:
        stmt = raw.get("stmt", {})
        dml = next(iter(stmt), "") in _DML
        ctes = _cte_names(_strip(stmt))
        skip: set[int] = set()
        for kind, body in _walk(stmt):
            if kind == "IntoClause":
                skip.update(id(b) for k, b in _walk(body) if k == "RangeVar")
            if id(body) not in skip:
                yield kind, body, dml, ctes


# ------------------------------------------------------------------------------ operators


Operator = Callable[[str, random.Random, Context], "str | None"]


def change_case(sql: str, rng: random.Random, ctx: Context) -> str | None:
    """Keywords and unquoted identifiers in random case (PostgreSQL folds them)."""
    edits = []
    for t in tokens(sql):
        word = t.kind != "NO_KEYWORD" or t.name == "IDENT"
        if word and t.text[:1] != '"' and t.text.isascii() and rng.random() < 0.5:
            edits.append((t.start, t.end, _recase(t.text, rng)))
    return _splice(sql, edits) if edits else None


def _unicode_ident(name: str, rng: random.Random) -> str:
    if rng.random() < 0.2:
        body = "".join(f"!{ord(c):04x}" if rng.random() < 0.4 else c for c in name)
        return f"U&\"{body}\" UESCAPE '!'"
    body = "".join(f"\\{ord(c):04X}" if rng.random() < 0.4 else c for c in name)
    return f'U&"{body}"'


def quote_identifiers(sql: str, rng: random.Random, ctx: Context) -> str | None:
    """``users`` -> ``"users"`` or ``U&"u\\0073ers"``: only identifiers already in lower
    case, since quoting stops case folding."""
    edits = []
    for t in tokens(sql):
        if t.name != "IDENT" or (not t.text[:1].isalpha() and t.text[:1] != "_"):
            continue
        if not all(c in _IDENT_CHARS and not c.isupper() for c in t.text):
            continue
        if rng.random() < 0.5:
            text = f'"{t.text}"' if rng.random() < 0.6 else _unicode_ident(t.text, rng)
            if text.startswith("U&") and _char_before(sql, t.start) in _IDENT_CHARS:
                text = " " + text
            edits.append((t.start, t.end, text))
    return _splice(sql, edits) if edits else None


_WHITESPACE = [" ", "  ", "\t", "\n", "\r\n", "\f", " \t ", "\n\n", "\r", "\t\n  ", " \f\n"]


def vary_whitespace(sql: str, rng: random.Random, ctx: Context) -> str | None:
    """Other whitespace between tokens: tabs, newlines, CR, form feeds, runs of them."""
    toks = tokens(sql)
    edits = []
    for start, end, prev, nxt in _gaps(sql, toks):
        gap = sql[start:end]
        if gap.strip(_SPACE) or rng.random() >= 0.4:
            continue
        if not gap and (prev is None or nxt is None):
            continue
        new = rng.choice(_WHITESPACE)
        if prev is not None and prev.name == "SQL_COMMENT" and not set(new) & set("\r\n"):
            new += "\n"
        edits.append((start, end, new))
    return _splice(sql, edits) if edits else None


_COMMENTS = [
    "/* x */", "/**/", "/* a /* b */ c */", "/*/ x */", "/* ' */", '/* " */', "/* ; */",
    "/* $$ */", "/* -- */", "/*\n;\n*/", "/* */ /* */", "/* /* /* deep */ */ */",
    "/* ; DELETE FROM documents; */", "/* tenant_id = 2 */", "/*+ SeqScan(users) */",
    "-- x\n", "--\n", "-- ' ; /*\n", "-- */ ;\r\n", "-- tenant_id = 2\r",
    "-- OR true\n",
]


def insert_comments(sql: str, rng: random.Random, ctx: Context) -> str | None:
    """Comments between tokens: block, nested block and line comments holding quotes,
    semicolons, dollar signs and statement text."""
    toks = tokens(sql)
    gaps = [g for g in _gaps(sql, toks) if not sql[g[0]:g[1]].strip(_SPACE)]
    edits = []
    for start, end, prev, _ in rng.sample(gaps, k=min(len(gaps), rng.randint(1, 3))):
        comment = rng.choice(_COMMENTS)
        at = end if (prev is not None and prev.name == "SQL_COMMENT") or rng.random() < 0.5 \
            else start
        before, after = _char_before(sql, at), _char_at(sql, at)
        left = " " if before in _OP_CHARS else rng.choice(["", " "])
        right = " " if after in _OP_CHARS else rng.choice(["", " ", "\n"])
        edits.append((at, at, left + comment + right))
    return _splice(sql, edits) if edits else None


def _string_value(text: str) -> str | None:
    stmts = _tree("SELECT " + text)
    try:
        return stmts[0]["stmt"]["SelectStmt"]["targetList"][0]["ResTarget"]["val"][
            "A_Const"]["sval"].get("sval", "")
    except (TypeError, KeyError, IndexError):
        return None


def _plain(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _escape_string(value: str, rng: random.Random) -> str:
    out = []
    for c in value:
        r = rng.random()
        if c == "\\":
            out.append("\\\\")
        elif c == "'":
            out.append(rng.choice(["\\'", "''", "\\x27", "\\047", "\\u0027"]))
        elif c.isascii() and c.isprintable() and r < 0.25:
            out.append(f"\\x{ord(c):02x}")
        elif c.isascii() and c.isprintable() and r < 0.4:
            out.append(f"\\{ord(c):03o}")
        elif c.isascii() and c.isprintable() and r < 0.5:
            out.append(f"\\u{ord(c):04x}")
        elif c.isascii() and c.isprintable() and r < 0.55:
            out.append(f"\\U{ord(c):08x}")
        elif c == "\n" and r < 0.5:
            out.append("\\n")
        elif c == "\t" and r < 0.5:
            out.append("\\t")
        else:
            out.append(c)
    return rng.choice(["E", "e"]) + "'" + "".join(out) + "'"


def _unicode_string(value: str, rng: random.Random) -> str:
    if rng.random() < 0.2:
        body = "".join("!!" if c == "!" else "''" if c == "'" else
                       f"!{ord(c):04x}" if rng.random() < 0.5 else c for c in value)
        return f"U&'{body}' UESCAPE '!'"
    out = []
    for c in value:
        if c == "\\":
            out.append("\\\\")
        elif c == "'":
            out.append(rng.choice(["''", "\\0027"]))
        elif rng.random() < 0.5:
            out.append(rng.choice([f"\\{ord(c):04x}", f"\\+{ord(c):06X}"]))
        else:
            out.append(c)
    return rng.choice(["U&", "u&"]) + "'" + "".join(out) + "'"


def _dollar(value: str, rng: random.Random) -> str | None:
    for tag in rng.sample(["", "q", "x1", "_", "DELETE", "sql"], k=6):
        delim = f"${tag}$"
        if (value + delim).find(delim) == len(value):
            return delim + value + delim
    return None


def _continued(value: str, rng: random.Random) -> str | None:
    if len(value) < 2:
        return None
    cut = rng.randrange(1, len(value))
    sep = rng.choice(["\n", "\r\n", " \n\t", " -- x\n", "\n-- y\n", "\r"])
    return _plain(value[:cut]) + sep + _plain(value[cut:])


def respell_strings(sql: str, rng: random.Random, ctx: Context) -> str | None:
    """String constants as escape strings (``E'\\x61'``), Unicode strings
    (``U&'\\0061'``), dollar quotes (``$q$a$q$``), continued strings (``'a'`` newline
    ``'b'``) or plain strings: the lexer gives the same value."""
    toks = [t for t in tokens(sql) if not t.comment]
    edits = []
    for i, t in enumerate(toks):
        if t.name not in ("SCONST", "USCONST") or rng.random() >= 0.6:
            continue
        if (i + 1 < len(toks) and toks[i + 1].name == "UESCAPE") or \
                (i > 0 and toks[i - 1].name == "UESCAPE"):
            continue
        value = _string_value(t.text)
        if value is None:
            continue
        forms: list[Callable[[], str | None]] = [
            lambda v=value: _plain(v), lambda v=value: _escape_string(v, rng),
            lambda v=value: _unicode_string(v, rng), lambda v=value: _dollar(v, rng),
            lambda v=value: _continued(v, rng)]
        text = rng.choice(forms)()
        if text is None or text == t.text:
            continue
        if _char_before(sql, t.start) in _IDENT_CHARS:
            text = " " + text
        if _char_at(sql, t.end) in _IDENT_CHARS:
            text += " "
        edits.append((t.start, t.end, text))
    return _splice(sql, edits) if edits else None


_INT_FORMS = ["({n})", "+{n}", "{n}::int", "{n}::integer", "'{n}'::int", "CAST({n} AS int)",
              "({n})::int", "(+{n})", "CAST('{n}' AS integer)", "{n}::int::int", "((({n})))",
              "-(-{n})", "- -{n}", "+-(-{n})"]


def respell_integers(sql: str, rng: random.Random, ctx: Context) -> str | None:
    """An integer constant as ``(1)``, ``+1``, ``1::int``, ``'1'::int``,
    ``CAST(1 AS int)``, ``-(-1)``... (accepted only where :func:`normal_form` proves it)."""
    candidates = [t for t in tokens(sql) if t.name == "ICONST" and t.text.isdigit()
                  and int(t.text) in _INT4]
    if not candidates:
        return None
    t = rng.choice(candidates)
    text = rng.choice(_INT_FORMS).format(n=t.text)
    if _char_before(sql, t.start) in _OP_CHARS | _IDENT_CHARS:
        text = " " + text
    if _char_at(sql, t.end) in _IDENT_CHARS:
        text += " "
    return _splice(sql, [(t.start, t.end, text)])


_VALUES = frozenset({"IDENT", "ICONST", "FCONST", "SCONST", "USCONST", "PARAM", "TRUE_P",
                     "FALSE_P", "NULL_P", "ASCII_41", "ASCII_42"})
_STARTS = _VALUES - {"ASCII_41", "ASCII_42"} | {"ASCII_40", "NOT", "EXISTS", "CASE", "CAST",
                                               "ARRAY", "SELECT", "VALUES", "TABLE", "WITH"}
#: After these a span cannot end, before these it cannot start: they bind to a neighbour.
_BINDING = frozenset({"ASCII_46", "ASCII_40", "ASCII_91", "TYPECAST"})


def _balanced_spans(toks: list[Tok]) -> list[tuple[int, int]]:
    """Token spans that could be an expression, a query or a join: balanced, within one
    statement, starting and ending at tokens that can start and end one."""
    spans = []
    for i, t in enumerate(toks):
        if t.name not in _STARTS or (i > 0 and toks[i - 1].name in ("ASCII_46", "TYPECAST")):
            continue
        depth = 0
        for j in range(i, min(len(toks), i + 80)):
            name = toks[j].name
            depth += (name == "ASCII_40") - (name == "ASCII_41")
            if depth < 0 or name == "ASCII_59":
                break
            after = toks[j + 1].name if j + 1 < len(toks) else ""
            if depth == 0 and name in _VALUES and after not in _BINDING:
                spans.append((i, j))
    return spans


def add_parentheses(sql: str, rng: random.Random, ctx: Context) -> str | None:
    """Redundant parentheses around an expression, a subquery, a join, a whole SELECT
    (proposed at plausible token spans; only spans giving the same tree are accepted)."""
    toks = [t for t in tokens(sql) if not t.comment]
    spans = _balanced_spans(toks)
    if not spans:
        return None
    opens = [s for s in spans if toks[s[0]].name == "ASCII_40"]
    i, j = rng.choice(opens) if opens and rng.random() < 0.3 else rng.choice(spans)
    return _splice(sql, [(toks[i].start, toks[i].start, "("), (toks[j].end, toks[j].end, ")")])


def qualify_names(sql: str, rng: random.Random, ctx: Context) -> str | None:
    """``users`` -> ``public.users``, ``"public".users``, ``corpus.public.users``;
    ``count(*)`` -> ``pg_catalog.count(*)``."""
    at = _Offsets(sql)
    toks = {t.start: t for t in tokens(sql)}
    edits: dict[int, str] = {}  # by position: a node can appear twice (SET (a, b) = ...)
    for kind, body, dml, ctes in _located(sql, ctx):
        if kind == "RangeVar" and dml and "schemaname" not in body \
                and body.get("relname") in ctx.relations and body["relname"] not in ctes:
            prefixes = ["public.", "PUBLIC.", '"public".', "public . ", "public/**/."]
            if ctx.database:
                prefixes += [f"{ctx.database}.public.", f'"{ctx.database}"."public".']
        elif kind == "FuncCall" and len(body.get("funcname", [])) == 1 and \
                body["funcname"][0]["String"]["sval"] in ctx.functions:
            prefixes = ["pg_catalog.", "PG_CATALOG.", '"pg_catalog".', "pg_catalog . "]
        else:
            continue
        pos = at(body.get("location", -1)) if body.get("location", -1) >= 0 else -1
        if pos in toks and not toks[pos].comment and pos not in edits and rng.random() < 0.6:
            edits[pos] = rng.choice(prefixes)
    return _splice(sql, [(p, p, text) for p, text in edits.items()]) if edits else None


def _name_end(toks: list[Tok], first: int) -> int:
    """Index of the last token of a dotted name starting at ``toks[first]``."""
    j = first
    while j + 2 < len(toks) and toks[j + 1].name == "ASCII_46":
        j += 2
    return j


def inheritance_syntax(sql: str, rng: random.Random, ctx: Context) -> str | None:
    """``FROM users`` -> ``FROM users *`` (the default, spelled out) or ``FROM ONLY users``
    / ``ONLY (users)`` when no relation has children."""
    at = _Offsets(sql)
    toks = [t for t in tokens(sql) if not t.comment]
    index = {t.start: i for i, t in enumerate(toks)}
    found = [(body, dml) for kind, body, dml, _ in _located(sql, ctx)
             if kind == "RangeVar" and body.get("inh") and at(body.get("location", -1))
             in index]
    if not found:
        return None
    body, dml = rng.choice(found)
    first = index[at(body["location"])]
    last = _name_end(toks, first)
    start, end = toks[first].start, toks[last].end
    style = rng.randrange(3) if ctx.no_inheritance and dml else 0
    if style == 0:
        return _splice(sql, [(end, end, rng.choice([" *", "*", " * "]))])
    if style == 1:
        return _splice(sql, [(start, start, rng.choice(["ONLY ", "only ", "ONLY/**/"]))])
    return _splice(sql, [(start, start, "ONLY ("), (end, end, ")")])


def toggle_as(sql: str, rng: random.Random, ctx: Context) -> str | None:
    """Add ``AS`` before an alias, or drop an optional one."""
    toks = [t for t in tokens(sql) if not t.comment]
    drop = [i for i, t in enumerate(toks[:-1]) if t.name == "AS"]
    if drop and rng.random() < 0.3:
        i = rng.choice(drop)
        return _splice(sql, [(toks[i].start, toks[i + 1].start, "")])
    add = [i for i in range(1, len(toks)) if toks[i].name == "IDENT"
           and toks[i - 1].name in _VALUES
           and (i + 1 == len(toks) or toks[i + 1].name not in _BINDING | {"UESCAPE"})]
    if not add:
        return None
    i = rng.choice(add)
    return _splice(sql, [(toks[i].start, toks[i].start, rng.choice(["AS ", "as ", "As\n"]))])


def add_semicolons(sql: str, rng: random.Random, ctx: Context) -> str | None:
    """Empty statements: a trailing ``;`` or ``;;``, or a leading ``;``."""
    toks = tokens(sql)
    choice = rng.randrange(3)
    if choice == 0:
        return ";" + rng.choice(["", " ", "\n"]) + sql
    tail = "\n" if toks and toks[-1].name == "SQL_COMMENT" else ""
    return sql + tail + rng.choice([";", " ;", ";;", "; ;", ";\n"])


OPERATORS: dict[str, Operator] = {
    "case": change_case,
    "quote": quote_identifiers,
    "whitespace": vary_whitespace,
    "comment": insert_comments,
    "string": respell_strings,
    "integer": respell_integers,
    "parentheses": add_parentheses,
    "qualify": qualify_names,
    "inheritance": inheritance_syntax,
    "as": toggle_as,
    "semicolon": add_semicolons,
}
#: Operators that are correct by construction: a refused step would be a bug in them.
#: The others propose spellings that the equivalence check may turn down.
CONSTRUCTIVE = frozenset({"case", "quote", "whitespace", "comment", "string", "semicolon"})


def apply(name: str, sql: str, original: str, rng: random.Random, ctx: Context,
          tries: int = 8) -> str | None:
    """One accepted step of operator ``name`` on ``sql`` (a mutant of ``original``)."""
    for _ in range(tries):
        candidate = OPERATORS[name](sql, rng, ctx)
        if candidate is None:
            return None
        if candidate == sql:
            continue
        if equivalent(original, candidate, ctx):
            APPLIED[name] += 1
            return candidate
        REJECTED[name] += 1
    return None


def mutate(sql: str, rng: random.Random, ctx: Context = Context(), max_steps: int = 4,
           operators: tuple[str, ...] | None = None) -> Mutant:
    """``sql`` after one to ``max_steps`` accepted steps of random operators."""
    names = list(operators or OPERATORS)
    current, steps = sql, []
    wanted = rng.randint(1, max_steps)
    for _ in range(wanted * 6):
        if len(steps) >= wanted:
            break
        name = rng.choice(names)
        step = apply(name, current, sql, rng, ctx)
        if step is not None:
            current = step
            steps.append(name)
    return Mutant(sql, current, tuple(steps), same_tree(sql, current))
