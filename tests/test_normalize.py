"""Tests for proxy.sql.normalize: literal normalization for the simple-query plan cache.

Ground truth is PostgreSQL's own lexer and parser as shipped in pglast (``pglast.parser.scan``,
``split``, ``parse_sql_json``, ``fingerprint``), the only reader the planner uses.  No
database is needed.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass

import pglast
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pglast import parser as pgparser

from proxy.sql import normalize as nz
from proxy.sql.normalize import MARKER, Normalized, check_template, normalize, splice

M = MARKER


def k(text: str) -> str:
    """Write expected keys with ``?`` for the marker (no example uses a ``?`` operator)."""
    return text.replace("?", M)


# ---------------------------------------------------------------------------------------
# 1. Examples
EXAMPLES: list[tuple[str, str, tuple[str, ...]]] = [
    # numbers
    ("SELECT * FROM t WHERE aid = 1", "SELECT * FROM t WHERE aid = ?", ("1",)),
    ("SELECT * FROM t WHERE aid = 2", "SELECT * FROM t WHERE aid = ?", ("2",)),
    (
        "SELECT 42, 1.5, .5, 5., 1e10, 1.5E-3, 5.e3, 00012, 99999999999999999999",
        "SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?",
        ("42", "1.5", ".5", "5.", "1e10", "1.5E-3", "5.e3", "00012", "99999999999999999999"),
    ),
    ("SELECT 5.::int, 1e+5", "SELECT ?::int, ?", ("5.", "1e+5")),
    # identifiers with digits stay identifiers; case is preserved
    ("SELECT t1, col2, x1e5, a$1 FROM t1", "SELECT t1, col2, x1e5, a$1 FROM t1", ()),
    ('SeLeCt "MiXed", MiXed FROM "T"', 'SeLeCt "MiXed", MiXed FROM "T"', ()),
    # standard strings: '' escapes, backslash is an ordinary character
    ("SELECT 'it''s', ''", "SELECT ?, ?", ("'it''s'", "''")),
    ("SELECT 'a\\', 'b'", "SELECT ?, ?", ("'a\\'", "'b'")),
    (
        "SELECT 'a\\'; DELETE FROM documents; --' FROM users",
        "SELECT ?; DELETE FROM documents;",
        ("'a\\'",),
    ),
    ("SELECT '--', '/*', ';', '$$'", "SELECT ?, ?, ?, ?", ("'--'", "'/*'", "';'", "'$$'")),
    ("SELECT 'multi\n  line'", "SELECT ?", ("'multi\n  line'",)),
    # escape strings
    (
        "SELECT E'a\\'b', e'x\\\\', E'\\n', E'it''s\\''",
        "SELECT ?, ?, ?, ?",
        ("E'a\\'b'", "e'x\\\\'", "E'\\n'", "E'it''s\\''"),
    ),
    ("SELECT E'\\'; DROP TABLE t; --'", "SELECT ?", ("E'\\'; DROP TABLE t; --'",)),
    # Unicode strings
    ("SELECT U&'d\\0061t', u&'x''y'", "SELECT ?, ?", ("U&'d\\0061t'", "u&'x''y'")),
    # dollar quotes, containing quotes, semicolons, comments and other dollar signs
    ("SELECT $$x$$, $tag$y$tag$", "SELECT ?, ?", ("$$x$$", "$tag$y$tag$")),
    (
        'SELECT $a$ it\'s; -- /* "q" $ $b$ $$ $a$ FROM t',
        "SELECT ? FROM t",
        ('$a$ it\'s; -- /* "q" $ $b$ $$ $a$',),
    ),
    ("SELECT $_1$x$_1$, $é$y$é$, $$$$", "SELECT ?, ?, ?", ("$_1$x$_1$", "$é$y$é$", "$$$$")),
    # bit strings
    ("SELECT B'0101', x'1F', b''", "SELECT ?, ?, ?", ("B'0101'", "x'1F'", "b''")),
    # comments
    ("SELECT 1 /* a /* nested */ still */ + 2", "SELECT ? + ?", ("1", "2")),
    ("SELECT 1 -- */ not an end\n, 2", "SELECT ? , ?", ("1", "2")),
    ("SELECT a/*x*/b, c--x\n,d", "SELECT a b, c ,d", ()),
    ("/* lead */ SELECT 1 -- trail", "SELECT ?", ("1",)),
    ("SELECT /**/ 1 /*/ x */ 2 /* /*/ */ */ 3", "SELECT ? ? ?", ("1", "2", "3")),
    ("SELECT 1+/*c*/2, 3*/*c*/4", "SELECT ?+ ?, ?* ?", ("1", "2", "3", "4")),
    ("SELECT 1+--c\n2", "SELECT ?+ ?", ("1", "2")),
    # quoted identifiers
    (
        'SELECT "A""b", "x -- y", "it\'s", "a;b", "a  b", U&"d\\0061t" FROM "t--"',
        'SELECT "A""b", "x -- y", "it\'s", "a;b", "a  b", U&"d\\0061t" FROM "t--"',
        (),
    ),
    # negative numbers: prefix minus belongs to the literal ...
    ("SELECT -1", "SELECT ?", ("-1",)),
    (
        "SELECT a = -1, a=-2, (-3), f(x, -4)",
        "SELECT a = ?, a=?, (?), f(x, ?)",
        ("-1", "-2", "-3", "-4"),
    ),
    ("SELECT x IN (-1, -2.5e3)", "SELECT x IN (?, ?)", ("-1", "-2.5e3")),
    ("SELECT * FROM t LIMIT -1 OFFSET -2", "SELECT * FROM t LIMIT ? OFFSET ?", ("-1", "-2")),
    (
        "SELECT CASE -1 WHEN -2 THEN -3 ELSE -4 END",
        "SELECT CASE ? WHEN ? THEN ? ELSE ? END",
        ("-1", "-2", "-3", "-4"),
    ),
    (
        "SELECT 1 FROM t WHERE -1 < a AND -2 < b OR NOT -3 = c",
        "SELECT ? FROM t WHERE ? < a AND ? < b OR NOT ? = c",
        ("1", "-1", "-2", "-3"),
    ),
    ("SELECT a IS DISTINCT FROM -1", "SELECT a IS DISTINCT FROM ?", ("-1",)),
    ("SELECT a<-1, a>-2, a<>-3, a<+-4", "SELECT a<?, a>?, a<>?, a<+?", ("-1", "-2", "-3", "-4")),
    ("SELECT x - -1, -.5", "SELECT x - ?, ?", ("-1", "-.5")),
    ("SELECT a[1:-1]", "SELECT a[?:?]", ("1", "-1")),
    # ... binary minus stays an operator
    ("SELECT a-1, a - 1, a -1, 3 -1", "SELECT a-?, a - ?, a -?, ? -?", ("1", "1", "1", "3", "1")),
    (
        "SELECT (a)-1, a[1]-1, $1 -1, 'a' -1",
        "SELECT (a)-?, a[?]-?, $1 -?, ? -?",
        ("1", "1", "1", "1", "'a'", "1"),
    ),
    ("SELECT t.limit -1, x::int -1", "SELECT t.limit -?, x::int -?", ("1", "1")),
    ("SELECT CASE WHEN a THEN 1 END -1", "SELECT CASE WHEN a THEN ? END -?", ("1", "1")),
    ("SELECT * -1, 2 * -1", "SELECT * -?, ? * -?", ("1", "2", "1")),
    (
        "SELECT between -1, x BETWEEN -1 AND 2",
        "SELECT between -?, x BETWEEN -? AND ?",
        ("1", "1", "2"),
    ),
    # ... and operators the server lexes as one token keep their minus
    ("SELECT a@-1, a!=-1, a||-1", "SELECT a@-?, a!=-?, a||-?", ("1", "1", "1")),
    # ... and a cast binds tighter than prefix minus: -1::int is -(1::int)
    ("SELECT -1::int, - 1", "SELECT -?::int, - ?", ("1", "1")),
    # casts and typed literals: the type name stays in the key
    (
        "SELECT '1'::int, int '42', DATE '2020-01-01', CAST('1' AS int), INTERVAL '1 day'",
        "SELECT ?::int, int ?, DATE ?, CAST(? AS int), INTERVAL ?",
        ("'1'", "'42'", "'2020-01-01'", "'1'", "'1 day'"),
    ),
    ("SELECT date'2020-01-01'", "SELECT date?", ("'2020-01-01'",)),
    # parameters and keywords are not literals
    ("SELECT $1, $12::int, TRUE, FALSE, NULL", "SELECT $1, $12::int, TRUE, FALSE, NULL", ()),
    # whitespace collapses outside literals and quoted identifiers
    ("\n\t SELECT\t1 ,\r\n 'a  b'  \n", "SELECT ? , ?", ("1", "'a  b'")),
    # a literal the server lexes as a separate token although it touches a neighbour gets
    # a space in the key, so splice() never has to add one
    ("SELECT t1.5, x.5, $1.5", "SELECT t1 ?, x ?, $1 ?", (".5", ".5", ".5")),
    # several statements
    ("SELECT 1; SELECT 'a;b';", "SELECT ?; SELECT ?;", ("1", "'a;b'")),
    # non-ASCII characters are identifier characters, as in the server
    ("SELECT café, 'é' FROM ü", "SELECT café, ? FROM ü", ("'é'",)),
    ("SELECT 1é", None, ()),  # "1" followed by an identifier character
]


@pytest.mark.parametrize(("sql", "key", "literals"), EXAMPLES)
def test_examples(sql: str, key: str | None, literals: tuple[str, ...]) -> None:
    result = normalize(sql)
    if key is None:
        assert result is None
        return
    assert result == Normalized(k(key), literals)
    assert splice(result.key.split(M), result.literals) == k(key).replace(M, "{}").format(*literals)
    _assert_pg_lexer_agrees(sql, result)


def test_cache_key_shared() -> None:
    a = normalize("SELECT * FROM t WHERE aid = 1")
    b = normalize("SELECT  *  FROM t\nWHERE aid = -2 -- different")
    assert a is not None and b is not None
    assert a.key == b.key
    assert (a.literals, b.literals) == (("1",), ("-2",))


UNSAFE = [
    # unterminated
    "SELECT 'abc",
    "SELECT 'a''",
    "SELECT E'abc\\'",
    "SELECT U&'abc",
    "SELECT B'01",
    'SELECT "abc',
    "SELECT $$abc",
    "SELECT $t$abc$t",
    "SELECT $t$abc$T$",
    "SELECT 1 /* abc",
    "SELECT 1 /* /* */",
    # backslash and other characters outside what the lexer accepts
    "SELECT \\x",
    "\\d t",
    "SELECT {1}",
    "SELECT 1 \v",
    "SELECT \x01",
    "SELECT \x7f",
    # UESCAPE
    "SELECT U&'d!0061t' UESCAPE '!'",
    "SELECT U&\"d!0061t\" uescape '!'",
    # NUL
    "SELECT '\x00'",
    "SELECT 1\x00",
    # string continuation across a newline (and its same-line, syntax-error cousin)
    "SELECT 'a'\n'b'",
    "SELECT 'a' -- c\n'b'",
    "SELECT 'a'\r\n  'b'",
    "SELECT E'a'\n'\\'b'",
    "SELECT B'1'\n'0'",
    "SELECT U&'a'\n'b'",
    "SELECT 'a' 'b'",
    "SELECT B'01''10'",
    # numbers followed by identifier characters: PG15 errors, PG16+ other literals
    "SELECT 0x1F",
    "SELECT 0b101",
    "SELECT 0o17",
    "SELECT 1_000",
    "SELECT -1_000",
    "SELECT 123abc",
    "SELECT 1e",
    "SELECT 1.5e",
    "SELECT 1e+",
    "SELECT 1.x",
    "SELECT .5e",
    "SELECT 1$$a$$",
    # ".." and stray dollars
    "SELECT 1..2",
    "SELECT a..b",
    "SELECT $",
    "SELECT $a",
    "SELECT $1a",
    "SELECT $1_",
    # national strings are NCHAR + string to the server
    "SELECT N'x'",
    "SELECT n'x'",
]


@pytest.mark.parametrize("sql", UNSAFE)
def test_unsafe_returns_none(sql: str) -> None:
    assert normalize(sql) is None


def test_standard_conforming_strings_off() -> None:
    # plain strings then follow escape-string rules, exactly as in the server
    sql = "SELECT 'a\\'; DELETE FROM documents; --' FROM users"
    assert normalize(sql, standard_conforming_strings=False) == Normalized(
        k("SELECT ? FROM users"), ("'a\\'; DELETE FROM documents; --'",)
    )
    assert normalize("SELECT U&'x'", standard_conforming_strings=False) is None
    assert normalize("SELECT 'it''s'", standard_conforming_strings=False) == Normalized(
        k("SELECT ?"), ("'it''s'",)
    )


def test_splice_basics() -> None:
    assert splice(["SELECT ", " + ", ""], ["1", "2"]) == "SELECT 1 + 2"
    assert splice(["SELECT 1"], []) == "SELECT 1"
    for parts, lits in ((["a", "b"], []), (["a"], ["1"]), ([], [])):
        with pytest.raises(ValueError):
            splice(parts, lits)
    with pytest.raises(ValueError):
        splice(["SELECT ", ""], [""])


@pytest.mark.parametrize(
    ("parts", "literals", "expected"),
    [
        # a literal must never fuse with a neighbour, whatever the template looks like
        (["SELECT E", ""], ["'a\\'"], "SELECT E 'a\\'"),
        (["SELECT x @", ""], ["-1"], "SELECT x @ -1"),
        (["SELECT x -", ""], ["-1"], "SELECT x - -1"),
        (["SELECT ", "", ""], ["'a'", "'b'"], "SELECT 'a' 'b'"),
        (["SELECT ", "", ""], ["1", ".5"], "SELECT 1 .5"),
        (["SELECT x", ""], ["1"], "SELECT x 1"),
        (["SELECT ", "e5"], ["1"], "SELECT 1 e5"),
        (["SELECT u&", ""], ["'x'"], "SELECT u& 'x'"),
        (["SELECT a", ""], ["$$x$$"], "SELECT a $$x$$"),
        # ... but harmless junctions are left alone
        (
            ["SELECT a=", ", date", "::int, ", ""],
            ["-1", "'x'", "1"],
            "SELECT a=-1, date'x'::int, 1",
        ),
    ],
)
def test_splice_separates(parts: list[str], literals: list[str], expected: str) -> None:
    assert splice(parts, literals) == expected


def test_splice_refuses_string_continuation() -> None:
    with pytest.raises(ValueError):
        splice(["SELECT 'a'\n", ""], ["'b'"])
    with pytest.raises(ValueError):
        splice(["SELECT ", "\n'b'"], ["'a'"])
    with pytest.raises(ValueError):
        splice(["SELECT ", " -- c\n'b'"], ["'a'"])


CHECK_KEY = k("SELECT * FROM t WHERE a = ? AND b = ?::date")  # from "a = -1 AND b = '...'"


@pytest.mark.parametrize(
    ("parts", "ok"),
    [
        (CHECK_KEY.split(M), True),
        (["SELECT * FROM t WHERE a = ", " AND b = CAST(", " AS date) AND tenant = 'acme'"], True),
        (["SELECT * FROM t WHERE (a = ", ") AND b = ", "::date -- tenant filter"], True),
        # slot 0 takes negative numbers: not in front of a cast, not after an operand
        (["SELECT * FROM t WHERE a = ", "::int AND b = ", ""], False),
        (["SELECT * FROM t WHERE a = x ", " AND b = ", ""], False),
        # slots inside a comment, a string, a quoted identifier, a dollar quote
        (["SELECT * FROM t WHERE a = ", " -- x AND b = ", ""], False),
        (["SELECT * FROM t WHERE a = ", " AND b = '", "'"], False),
        (["SELECT * FROM t WHERE a = ", ' AND "b', '" = 1'], False),
        (["SELECT * FROM t WHERE a = ", " AND b = $$", "$$"], False),
        (["SELECT * FROM t WHERE a = ", " AND b = /* ", " */ 1"], False),
        # wrong number of slots
        (["SELECT * FROM t WHERE a = ", ""], False),
    ],
)
def test_check_template(parts: list[str], ok: bool) -> None:
    assert check_template(parts, CHECK_KEY) is ok


def test_splice_into_checked_templates_keeps_literals_whole() -> None:
    """Whatever the template, once check_template() accepts it, splice() puts every literal
    into the text as exactly one token of the server's lexer ("-N": "-" then N)."""
    rng = random.Random(11)
    literals = [
        "1", "-1", ".5", "5.", "1e3", "-2.5", "'a'", "''", "'a\\'", "E'a\\'b'", "e'\\\\'",
        "U&'x'", "$$x$$", "$a$x$a$", "B'1'", "X'1'", "'it''s'",
    ]  # fmt: skip
    chunks = [
        "a", "e", "E", "u", "U", "&", "$", "1", ".", "=", "@", "-", "+", "*", "(", ")", " ",
        ",", "::", "b", "x", "n", '"q"', "$1", "'s'", "\n", "<", "|", "e1", "t1", "/", "%",
    ]  # fmt: skip
    checked = 0
    for _ in range(20000):
        slots = rng.randint(1, 4)
        parts = ["".join(rng.choices(chunks, k=rng.randint(0, 4))) for _ in range(slots + 1)]
        if not check_template(parts, M.join(parts)):
            continue
        lits = rng.choices(literals, k=slots)
        try:
            text = splice(parts, lits)
        except ValueError:
            continue
        try:
            tokens = {t.start: t for t in pgparser.scan(text)}
        except pglast.parser.ParseError:
            continue
        pos = len(parts[0])
        for lit, part in zip(lits, parts[1:], strict=True):
            pos += text.startswith(" ", pos) and not text.startswith(lit, pos)
            assert text.startswith(lit, pos)
            first = tokens[pos]
            if lit[0] == "-":
                assert first.name == "ASCII_45" and first.end == pos
                first = tokens[pos + 1]
            assert first.name in PG_CONSTS and first.end == pos + len(lit) - 1, (parts, lits)
            pos += len(lit)
            pos += bool(part) and text.startswith(" ", pos) and not text.startswith(part, pos)
            pos += len(part)
        assert pos == len(text)
        checked += 1
    assert checked > 2000


def test_unary_keywords_are_reserved() -> None:
    # Only reserved keywords can be trusted never to end an operand.
    from pglast.keywords import RESERVED_KEYWORDS

    for word in nz._UNARY_KEYWORDS:
        assert word.lower() in RESERVED_KEYWORDS


@pytest.mark.parametrize("word", sorted(nz._UNARY_KEYWORDS))
def test_unary_keywords_fold_in_postgres(word: str) -> None:
    # For each keyword, a statement in which it is followed by "-1": the server must
    # parse the minus as a prefix minus folded into the constant (an A_Const at the "-").
    stmts = {
        "SELECT": "SELECT -1",
        "WHERE": "SELECT 1 WHERE -1 < 0",
        "AND": "SELECT 1 WHERE true AND -1 < 0",
        "OR": "SELECT 1 WHERE true OR -1 < 0",
        "NOT": "SELECT NOT -1",
        "THEN": "SELECT CASE WHEN true THEN -1 END",
        "ELSE": "SELECT CASE WHEN true THEN 0 ELSE -1 END",
        "WHEN": "SELECT CASE 0 WHEN -1 THEN 0 END",
        "IN": "SELECT 1 IN -1",
        "LIMIT": "SELECT 1 LIMIT -1",
        "OFFSET": "SELECT 1 OFFSET -1",
        "RETURNING": "DELETE FROM t RETURNING -1",
        "ON": "SELECT 1 FROM a JOIN b ON -1 < 0",
        "FROM": "SELECT a IS DISTINCT FROM -1",
        "FOR": "SELECT substring('x' FROM 1 FOR -1)",
        "HAVING": "SELECT 1 HAVING -1 < 0",
        "CASE": "SELECT CASE -1 WHEN 0 THEN 0 END",
        "TO": "SELECT 'a' SIMILAR TO -1",
        "DISTINCT": "SELECT DISTINCT -1",
        "ALL": "SELECT ALL -1",
        "SYMMETRIC": "SELECT 1 BETWEEN SYMMETRIC -1 AND 2",
        "ASYMMETRIC": "SELECT 1 BETWEEN ASYMMETRIC -1 AND 2",
    }
    sql = stmts[word]
    if word == "IN":  # "IN -1" is a syntax error; nothing to fold
        with pytest.raises(pglast.parser.ParseError):
            pgparser.parse_sql_json(sql)
        return
    result = normalize(sql)
    assert result is not None and "-1" in result.literals
    at = len(sql[: sql.index(f"{word} -1") + len(word) + 1].encode())
    assert at in _a_const_locations(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT t.limit -1 FROM t",
        "SELECT t.* - 1 FROM t",
        "SELECT x AS from -1",
        "SELECT between -1 FROM t",
        "SELECT a FROM t ORDER BY by -1",
        "SELECT 1 FROM t WHERE default -1 = 0",
    ],
)
def test_minus_after_name_is_not_folded(sql: str) -> None:
    result = normalize(sql)
    assert result is not None
    assert not any(lit.startswith("-") for lit in result.literals)


# ---------------------------------------------------------------------------------------
# Helpers: PostgreSQL's lexer and parser through pglast
PG_CONSTS = {"SCONST", "USCONST", "BCONST", "XCONST", "ICONST", "FCONST"}


def _pg_tokens(sql: str) -> list[tuple[str, str, int]]:
    """(token name, source text, offset) for each token of the server's lexer.

    pglast reports scanner offsets in characters (parse tree locations are in bytes).
    """
    return [(t.name, sql[t.start : t.end + 1], t.start) for t in pgparser.scan(sql)]


def _assert_pg_lexer_agrees(sql: str, result: Normalized) -> None:
    """The literals and the key agree with the server's tokens of ``sql``.

    Literal texts must equal the server's constant tokens, except that a literal ``-N``
    must be the server's ``-`` token immediately followed by constant ``N``.  The key must
    equal the server's non-comment tokens with constants masked (spaces ignored: the key
    only adds whitespace between tokens; quoted identifiers lose theirs on both sides).
    """
    toks = [t for t in _pg_tokens(sql) if t[0] not in ("C_COMMENT", "SQL_COMMENT")]
    expected: list[str] = []
    lits = list(result.literals)
    j = 0
    for i, (name, text, start) in enumerate(toks):
        if name not in PG_CONSTS:
            expected.append(text)
            continue
        assert j < len(lits), (sql, text)
        if lits[j] != text:
            assert lits[j] == "-" + text, (sql, lits[j], text)
            prev = toks[i - 1]
            assert prev[0] == "ASCII_45" and prev[2] == start - 1, (sql, lits[j])
            assert expected.pop() == "-"
        expected.append(M)
        j += 1
    assert j == len(lits), (sql, lits[j:])
    assert result.key.replace(" ", "") == "".join(expected).replace(" ", "")


def _is_position(key: str) -> bool:
    # "location", "stmt_location", "stmt_len", PG18's "rexpr_list_start"/"rexpr_list_end"
    return key in ("location", "stmt_location", "stmt_len") or key.endswith(("_start", "_end"))


def _strip(node: object, *, constants: bool = False) -> object:
    """An AST without locations (and, if asked, without constant values)."""
    if isinstance(node, dict):
        if constants and "A_Const" in node and len(node) == 1:
            return {"A_Const": {}}
        if constants and "arrayBounds" in node:  # "int[3]": plain integers, not A_Const
            node = {**node, "arrayBounds": len(node["arrayBounds"])}
        return {
            key: _strip(value, constants=constants)
            for key, value in node.items()
            if not _is_position(key)
        }
    if isinstance(node, list):
        return [_strip(item, constants=constants) for item in node]
    return node


def _ast(sql: str, *, constants: bool = False) -> object:
    return _strip(json.loads(pgparser.parse_sql_json(sql)), constants=constants)


def _a_const_locations(sql: str) -> set[int]:
    found: set[int] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "A_Const" in node and "location" in node["A_Const"]:
                found.add(node["A_Const"]["location"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(pgparser.parse_sql_json(sql)))
    return found


_CANON = {"'": "'z'", "E": "E'z'", "e": "E'z'", "U": "U&'z'", "u": "U&'z'", "$": "$$z$$"}


def _canonical(lit: str) -> str:
    """Another literal of the same kind, as another statement with the same key might hold.

    Numbers (negative ones included) become 7: a key shared by ``-1`` and ``1`` is only
    sound if the server folds that minus into the constant.
    """
    if lit[0] in "bB":
        return "B'1'"
    if lit[0] in "xX":
        return "X'1'"
    return _CANON.get(lit[0], "7")


# ---------------------------------------------------------------------------------------
# Literal strategies
_CHARS = st.sampled_from(list("ab Z;'\"\\-/*$\n\t:é€E0"))
_TEXT = st.text(alphabet=_CHARS, max_size=10)
_DIGITS = st.text(alphabet="0123456789", min_size=1, max_size=4)


def _std(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _estr(s: str) -> str:
    return "E'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _ustr(s: str) -> str:
    return "U&'" + s.replace("\\", "\\\\").replace("'", "''") + "'"


def _dollar_ok(tag_body: tuple[str, str]) -> bool:
    tag, body = tag_body
    delim = f"${tag}$"
    return (body + delim).find(delim) == len(body)


NUMBER = st.one_of(
    st.integers(0, 10**20).map(str),
    st.builds("{}.{}".format, _DIGITS, _DIGITS),
    _DIGITS.map(".{}".format),
    _DIGITS.map("{}.".format),
    st.builds("{}e{}{}".format, _DIGITS, st.sampled_from(["", "+", "-"]), _DIGITS),
    st.builds("{}.{}E-{}".format, _DIGITS, _DIGITS, _DIGITS),
)
NEGATIVE = NUMBER.map("-{}".format)
STRING = st.one_of(
    _TEXT.map(_std),
    _TEXT.map(_estr),
    _TEXT.map(_ustr),
    st.tuples(st.sampled_from(["", "a", "tag", "_x1", "Q"]), _TEXT)
    .filter(_dollar_ok)
    .map(lambda tb: f"${tb[0]}${tb[1]}${tb[0]}$"),
)
BITS = st.one_of(
    st.text(alphabet="01", max_size=8).map("B'{}'".format),
    st.text(alphabet="0123456789abcdefABCDEF", max_size=8).map("X'{}'".format),
)
KINDS = {"number": NUMBER, "negative": NEGATIVE, "string": STRING, "bits": BITS}

# Slots in which each kind may appear; "{}" is the literal.
SLOTS = [
    ("c{i} = {{}}", ("number", "negative", "string", "bits")),
    ("f(x, {{}})", ("number", "negative", "string", "bits")),
    ("({{}})", ("number", "negative", "string", "bits")),
    ("{{}}::text", ("number", "string", "bits")),
    ("c{i} IN ({{}}, c0)", ("number", "negative", "string")),
    ("CASE WHEN b THEN {{}} END", ("number", "negative", "string")),
    ("DATE {{}}", ("string",)),
]


@st.composite
def template_pairs(draw: st.DrawFn) -> tuple[str, str, list[str], list[str]]:
    n = draw(st.integers(1, 6))
    slots = []
    lits_a: list[str] = []
    lits_b: list[str] = []
    for i in range(n):
        slot, kinds = draw(st.sampled_from(SLOTS))
        kind = draw(st.sampled_from(kinds))
        slots.append(slot.format(i=i))
        lits_a.append(draw(KINDS[kind]))
        lits_b.append(draw(KINDS[kind]))
    template = "SELECT " + ", ".join(slots) + " FROM t"
    return template.format(*lits_a), template.format(*lits_b), lits_a, lits_b


# ---------------------------------------------------------------------------------------
# 2. Statements differing only in literal values share a key
@settings(max_examples=300, deadline=None)
@given(template_pairs())
def test_same_template_same_key(pair: tuple[str, str, list[str], list[str]]) -> None:
    sql_a, sql_b, lits_a, lits_b = pair
    a = normalize(sql_a)
    b = normalize(sql_b)
    assert a is not None and b is not None, (sql_a, sql_b)
    assert a.key == b.key
    assert list(a.literals) == lits_a
    assert list(b.literals) == lits_b
    assert a.key.count(M) == len(lits_a)
    # b's literals spliced into a's key is exactly b, modulo whitespace and comments
    assert splice(a.key.split(M), b.literals) == b.key.replace(M, "{}").format(*lits_b)
    assert _ast(splice(a.key.split(M), b.literals)) == _ast(sql_b)


# ---------------------------------------------------------------------------------------
# A random-SQL grammar whose literals, statement count and collapsed text are known.
@dataclass
class Tok:
    text: str
    cls: str  # lit, kw, id, p (punctuation), op, cast


@dataclass
class Generated:
    sql: str
    literals: list[str]
    literal_offsets: list[int]  # byte offsets, for the AST checks
    collapsed: str
    statements: int
    semicolons: int


SEPARATORS = [
    " ",
    "  ",
    "\n",
    "\t ",
    "\r\n",
    " /* c; 'x' \"y\" $$ -- */ ",
    " /* a /* nested; ' */ b */",
    " -- c ; ' \" */ $$\n",
    "\n-- only a comment\n",
]
QUOTED_IDS = ['"A""b"', '"x;--y"', '"a  b"', '"it\'s"', '"/*"', '"$$"']
TYPES = ["int", "text", "numeric"]
BINOPS = ["+", "-", "*", "||"]  # comparisons are not associative; they are in cond()


def _glueless(left: Tok, right: Tok) -> bool:
    """May these two tokens be written with nothing between them?"""
    if left.cls == "p" or right.cls == "p" or "cast" in (left.cls, right.cls):
        return left.text != "." and right.text != "."
    if left.cls == "op" and right.cls in ("lit", "id"):
        if right.text.startswith("-"):
            return left.text in ("=", "<", ">", "+")
        return True
    return left.cls in ("lit", "id") and right.cls == "op"


class Grammar:
    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw

    def choice(self, options: list[str]) -> str:
        return self.draw(st.sampled_from(options))

    def literal(self, unary: bool) -> list[Tok]:
        kind = self.choice(["number", "number", "string", "bits", "negative"])
        if kind == "negative":
            number = self.draw(NUMBER)
            if unary:
                return [Tok("-" + number, "lit")]
            return [Tok("-", "op"), Tok(number, "lit")]
        return [Tok(self.draw(KINDS[kind]), "lit")]

    def atom(self, unary: bool, depth: int) -> list[Tok]:
        options = ["col", "qcol", "param", "lit", "lit", "lit", "cast", "typed"]
        if depth < 2:
            options += ["paren", "case", "func"]
        which = self.choice(options)
        if which == "col":
            return [Tok(self.choice(["c1", "col2", "t1.c", "x1e5", "a$b"]), "id")]
        if which == "qcol":
            return [Tok(self.choice(QUOTED_IDS), "id")]
        if which == "param":
            return [Tok(f"${self.draw(st.integers(1, 12))}", "id")]
        if which == "lit":
            return self.literal(unary)
        if which == "cast":
            # "-1::int" is "-(1::int)": the minus is an operator then
            lit = self.literal(False) if unary else [Tok(self.draw(NUMBER), "lit")]
            return [*lit, Tok("::", "cast"), Tok(self.choice(TYPES), "kw")]
        if which == "typed":
            return [
                Tok(self.choice(["DATE", "int", "INTERVAL"]), "kw"),
                Tok(self.draw(STRING), "lit"),
            ]
        if which == "paren":
            return [Tok("(", "p"), *self.expr(depth + 1), Tok(")", "p")]
        if which == "func":
            args = self.expr(depth + 1)
            if self.draw(st.booleans()):
                args += [Tok(",", "p"), *self.expr(depth + 1)]
            return [Tok("coalesce", "id"), Tok("(", "p"), *args, Tok(")", "p")]
        return [
            Tok("CASE", "kw"),
            Tok("WHEN", "kw"),
            *self.cond(depth + 1),
            Tok("THEN", "kw"),
            *self.expr(depth + 1, unary=True),
            Tok("ELSE", "kw"),
            *self.expr(depth + 1, unary=True),
            Tok("END", "kw"),
        ]

    def expr(self, depth: int, unary: bool = True) -> list[Tok]:
        left = self.atom(unary, depth)
        if depth >= 2 or self.draw(st.booleans()):
            return left
        op = self.choice(BINOPS)
        return [*left, Tok(op, "op"), *self.atom(op != "*", depth + 1)]

    def cond(self, depth: int) -> list[Tok]:
        which = self.choice(["cmp", "cmp", "in", "null", "and", "not"] if depth < 2 else ["cmp"])
        if which == "cmp":
            return [
                *self.expr(depth + 1),
                Tok(self.choice(["=", "<", ">"]), "op"),
                *self.expr(depth + 1),
            ]
        if which == "in":
            toks = [*self.expr(depth + 1), Tok("IN", "kw"), Tok("(", "p")]
            for i in range(self.draw(st.integers(1, 3))):
                if i:
                    toks.append(Tok(",", "p"))
                toks += self.literal(True)
            return [*toks, Tok(")", "p")]
        if which == "null":
            return [*self.expr(depth + 1), Tok("IS", "kw"), Tok("NULL", "kw")]
        if which == "not":
            return [Tok("NOT", "kw"), *self.cond(depth + 1)]
        return [*self.cond(depth + 1), Tok(self.choice(["AND", "OR"]), "kw"), *self.cond(depth + 1)]

    def select(self) -> list[Tok]:
        toks = [Tok("SELECT", "kw")]
        for i in range(self.draw(st.integers(1, 3))):
            if i:
                toks.append(Tok(",", "p"))
            toks += self.expr(0)
            if self.draw(st.booleans()):
                toks += [Tok("AS", "kw"), Tok(self.choice(["x", "Y1", *QUOTED_IDS]), "id")]
        if self.draw(st.booleans()):
            toks += [Tok("FROM", "kw"), Tok(self.choice(["t", '"T;1"', "s.t2"]), "id")]
            if self.draw(st.booleans()):
                toks += [Tok("WHERE", "kw"), *self.cond(0)]
        if self.draw(st.booleans()):
            toks += [Tok("LIMIT", "kw"), *self.literal(True)]
        return toks


@st.composite
def generated_sql(draw: st.DrawFn) -> Generated:
    grammar = Grammar(draw)
    n = draw(st.integers(1, 3))
    toks: list[Tok] = []
    for i in range(n):
        if i:
            toks.append(Tok(";", "p"))
        toks += grammar.select()
    semicolons = n - 1
    if draw(st.booleans()):
        toks.append(Tok(";", "p"))
        semicolons += 1

    sql = draw(st.sampled_from(["", *SEPARATORS]))
    collapsed = ""
    literals: list[str] = []
    offsets: list[int] = []
    for i, tok in enumerate(toks):
        if i:
            options = SEPARATORS + ([""] * 4 if _glueless(toks[i - 1], tok) else [])
            sep = draw(st.sampled_from(options))
            sql += sep
            collapsed += " " if sep else ""
        if tok.cls == "lit":
            literals.append(tok.text)
            offsets.append(len(sql.encode()))
        sql += tok.text
        collapsed += tok.text
    sql += draw(st.sampled_from(["", *SEPARATORS]))
    return Generated(sql, literals, offsets, collapsed, n, semicolons)


GRAMMAR_SETTINGS = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# ---------------------------------------------------------------------------------------
# 3a. The generator, the normalizer and PostgreSQL's lexer agree
@GRAMMAR_SETTINGS
@given(generated_sql())
def test_grammar_literals_match_postgres_lexer(g: Generated) -> None:
    result = normalize(g.sql)
    assert result is not None, g.sql
    assert list(result.literals) == g.literals
    _assert_pg_lexer_agrees(g.sql, result)


# 3c. Statement boundaries agree with PostgreSQL's splitter
_QUOTED = re.compile(r'"(?:[^"]|"")*"')


@GRAMMAR_SETTINGS
@given(generated_sql())
def test_grammar_statement_split_matches_pglast(g: Generated) -> None:
    result = normalize(g.sql)
    assert result is not None
    semicolons = _QUOTED.sub("", result.key).count(";")
    assert semicolons == g.semicolons
    assert len(pglast.split(g.sql)) == g.statements
    assert len(pgparser.split(g.sql, with_parser=False)) == g.statements


# ---------------------------------------------------------------------------------------
# 4. Splicing the literals back reproduces the statement
@GRAMMAR_SETTINGS
@given(generated_sql())
def test_grammar_splice_reproduces_statement(g: Generated) -> None:
    result = normalize(g.sql)
    assert result is not None
    spliced = splice(result.key.split(M), result.literals)
    assert spliced == g.collapsed.strip()
    assert pgparser.fingerprint(spliced) == pgparser.fingerprint(g.sql)
    assert _ast(spliced) == _ast(g.sql)
    # idempotent
    assert normalize(spliced) == result
    assert check_template(result.key.split(M), result.key)


@GRAMMAR_SETTINGS
@given(generated_sql())
def test_grammar_shared_key_means_same_structure(g: Generated) -> None:
    """Every statement with this key parses like this one, constants aside.

    Another statement with the same key is this key spliced with other literals; use a
    canonical literal of each kind (7 for every number, so "-1" and "1" are compared).
    Each "-N" literal must be a constant the server folded the minus into.
    """
    result = normalize(g.sql)
    assert result is not None
    other = splice(result.key.split(M), [_canonical(lit) for lit in result.literals])
    assert _ast(other, constants=True) == _ast(g.sql, constants=True)
    consts = _a_const_locations(g.sql)
    for lit, offset in zip(result.literals, g.literal_offsets, strict=True):
        if lit.startswith("-"):
            assert offset in consts, (g.sql, lit)


# ---------------------------------------------------------------------------------------
# Fuzzing with token soup against PostgreSQL's lexer and parser
SOUP = [
    "'",
    '"',
    "$",
    "-",
    "*",
    "/",
    "\n",
    " ",
    " ",
    "a",
    "e",
    "E",
    "u",
    "U",
    "&",
    "b",
    "x",
    "1",
    "0",
    ".",
    ";",
    "(",
    ")",
    "=",
    "@",
    "+",
    "\\",
    "t",
    "$$",
    "$a$",
    "--",
    "/*",
    "*/",
    "''",
    "e'",
    "U&'",
    "é",
    ":",
    "::",
    "E'",
    "B'",
    "<",
    "|",
    "'x'",
    '"y"',
    "\r",
    "$1",
    "1.5",
    ".5",
    "5.",
    "1e3",
    "-1",
]
KEYWORD_SOUP = [
    "SELECT",
    "WHERE",
    "AND",
    "OR",
    "NOT",
    "THEN",
    "ELSE",
    "WHEN",
    "CASE",
    "END",
    "IN",
    "LIMIT",
    "OFFSET",
    "FROM",
    "AS",
    "BETWEEN",
    "IS",
    "NULL",
    "TRUE",
    "DEFAULT",
    "t",
    "x",
    "t.x",
    "t.limit",
    "f(",
    "(",
    ")",
    ",",
    "-",
    "-",
    "- ",
    "=",
    "<",
    "*",
    "+",
    "::int",
    "1",
    "2.5",
    "'s'",
    "$1",
    "[1]",
    "||",
    "@",
    "ALL",
    "DISTINCT",
    "ON",
    "TO",
    "FOR",
    "BY",
    "ORDER BY",
    "SYMMETRIC",
    "AT TIME ZONE",
    'COLLATE "C"',
    "'a'",
    "E'b'",
    ".",
    "a",
]


def test_soup_against_postgres_lexer() -> None:
    rng = random.Random(20240611)
    compared = 0
    for _ in range(30000):
        sql = "".join(rng.choice(SOUP) for _ in range(rng.randint(1, 14)))
        result = normalize(sql)
        if result is None:
            continue
        try:
            pgparser.scan(sql)
        except pglast.parser.ParseError:
            continue  # the server rejects the text; it can never be executed
        _assert_pg_lexer_agrees(sql, result)
        assert normalize(splice(result.key.split(M), result.literals)) == result
        compared += 1
    assert compared > 5000


def test_soup_shared_key_means_same_structure() -> None:
    rng = random.Random(7)
    parsed = 0
    for _ in range(30000):
        words = [rng.choice(KEYWORD_SOUP) for _ in range(rng.randint(1, 9))]
        sql = "SELECT " + rng.choice(["", " ", "  "]).join(words)
        result = normalize(sql)
        if result is None:
            continue
        try:
            original = _ast(sql, constants=True)
        except pglast.parser.ParseError:
            continue
        parsed += 1
        other = splice(result.key.split(M), [_canonical(lit) for lit in result.literals])
        assert _ast(other, constants=True) == original, (sql, other)
    assert parsed > 1000


# ---------------------------------------------------------------------------------------
def test_speed_smoke() -> None:
    import timeit

    sql = (
        "SELECT a.id, a.name, b.total FROM accounts a JOIN orders b ON b.account_id = a.id "
        "WHERE a.tenant = 'acme' AND b.total > 100.50 AND b.status IN ('open', 'held') "
        "ORDER BY b.created_at DESC LIMIT 50"
    )
    per_call = min(timeit.repeat(lambda: normalize(sql), number=200, repeat=5)) / 200
    assert per_call < 500e-6  # generous; typically a few tens of microseconds
