"""Literal normalization for the simple-query plan cache.

``normalize(sql)`` makes one regex-driven pass over PostgreSQL SQL text and returns a cache
key in which every literal constant is replaced by :data:`MARKER`, plus the source text
of each literal, in order.  ``SELECT * FROM t WHERE aid = 1`` and ``... WHERE aid = 2``
therefore share the key ``SELECT * FROM t WHERE aid = \\x00L`` and a cached, rewritten
template can be reused with :func:`splice`.  :func:`check_template` vets, once, a template
that did not come straight from a key.

The scanner mirrors PostgreSQL's lexer (``src/backend/parser/scan.l``).  Any text that it
cannot tokenize *with certainty* makes :func:`normalize` return ``None`` and the caller
falls back to exact-text caching.  A literal boundary that disagreed with the server would
be a security bug (the literal texts are spliced back into rewritten SQL), so every rule
below errs towards ``None`` or towards keeping text in the key.

Literals recognised (each literal's exact source text is returned):

* numeric constants: ``42``, ``1.5``, ``.5``, ``5.``, ``1e10``, ``1.5E-3``; a minus sign is
  part of the literal (``-1``) only where it is certainly a prefix minus that PostgreSQL's
  grammar folds into the constant (see ``_unary_minus_allowed``);
* standard strings ``'it''s'`` (``standard_conforming_strings=on``: backslash is ordinary);
* escape strings ``E'a\\'b'`` (backslash escapes the next character);
* Unicode strings ``U&'d\\0061t'``;
* dollar-quoted strings ``$$x$$`` and ``$tag$x$tag$``;
* bit strings ``B'0101'`` and ``X'1F'``.

``None`` is returned for: a NUL character; unterminated strings, quoted identifiers,
dollar quotes or ``/* */`` comments; a string literal followed (across whitespace and
``--`` comments) by another ``'`` -- PostgreSQL concatenates such strings when a newline
separates them; any ``UESCAPE`` (looked for anywhere once a ``&`` occurs); national
strings ``N'...'`` (the server lexes them as ``NCHAR`` + string); numbers directly followed
by identifier characters (``0x1F``, ``1_000``, ``0o7``, ``123abc``, ``1e`` -- errors in
PostgreSQL 15, different literals in 16+); parameters followed by identifier characters;
``..``; a lone ``$``; ``\\`` outside strings; ``{``, ``}``, vertical tab and other control
characters; Unicode strings when ``standard_conforming_strings`` is off.

The key keeps keywords, identifiers (plain, ``"quoted"``, ``U&"..."``), parameters
(``$1``), operators and punctuation exactly as written.  Comments become whitespace, runs
of whitespace become one space and leading/trailing whitespace is dropped.  Where a
literal touches a neighbouring token and :func:`splice` would insert a separating space
(e.g. ``t1.5``, which the server lexes as ``t1`` ``.5``) the key already contains that
space, so ``splice(key.split(MARKER), literals)`` never changes the text of a key.

The key does not say which *kind* of literal filled a slot: ``a = 1``, ``a = '1'`` and
``a = -1`` share a key.  The literal's first character identifies its kind if a caller
needs to keep them apart.  Statements sharing a key parse alike up to constant values
(PostgreSQL folds the prefix minus of ``-1`` into the constant), but a plan may only be
shared if nothing in it depends on a literal's value or kind.

The caller must only use this while the session's ``standard_conforming_strings`` is on
(the server reports it in ``ParameterStatus``) or pass
``standard_conforming_strings=False``, under which plain ``'...'`` strings follow the
escape-string rules, exactly as in PostgreSQL.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["MARKER", "Normalized", "check_template", "normalize", "splice"]

MARKER = "\x00L"
"""Stands for one literal in a key.  PostgreSQL query text can never contain NUL."""


@dataclass(frozen=True, slots=True)
class Normalized:
    key: str
    """The text with every literal replaced by :data:`MARKER`, comments removed and
    whitespace collapsed."""
    literals: tuple[str, ...]
    """The exact source text of each literal, in order."""


# --------------------------------------------------------------------------------------
# Character classes, following scan.l.  Every byte >= 0x80 is an identifier character in
# PostgreSQL, so in a decoded string every non-ASCII character is one.
_HI = "\x80-\U0010ffff"
_IDENT_START = f"A-Za-z_{_HI}"
_IDENT_CONT = f"A-Za-z0-9_${_HI}"
_DOLQ_CONT = f"A-Za-z0-9_{_HI}"
_OP_CHARS = "~!@#^&|`?+-*/%<>="
_OP_SPECIAL = "~!@#^&|`?%"  # an operator holding one of these may end in + or -
_SPACE = " \t\n\r\f"

# One "run" is a sequence of tokens that go into the key verbatim and need no per-token
# work: identifiers and keywords, quoted identifiers, parameters, punctuation and operators
# without "-" or "/*", joined by at most one plain space.  Matching a whole run at once
# keeps the Python-level loop short.
_RUN_ATOM = (
    # identifier/keyword; a lone b/e/n/x before a quote or u& before a quote starts a
    # literal instead (the longer match wins in flex)
    rf"(?![bBeEnNxX]'|[uU]&['\"])[{_IDENT_START}][{_IDENT_CONT}]*+"
    r'|"(?:[^"]++|"")*+"'  # quoted identifier
    r'|[uU]&"(?:[^"]++|"")*+"'  # Unicode quoted identifier (UESCAPE is rejected globally)
    rf"|\$[0-9]++(?![{_IDENT_CONT}])"  # parameter, not followed by junk
    r"|::?|[,()\[\];]"
    r"|\.(?![.0-9])"  # "." that is neither ".." nor the start of ".5"
    # a whole operator-character run without "-" (a possible prefix minus, or "--") or
    # "/*"; how the server splits it into tokens does not change the key
    r"|(?:[~!@#^&|`?+*%<>=]|/(?!\*))++(?![~!@#^&|`?+\-*/%<>=])"
)
_RUN = rf"(?:{_RUN_ATOM})(?: ?(?:{_RUN_ATOM}))*+"

_NUM = r"(?:[0-9]++(?:\.(?!\.)[0-9]*+)?|\.[0-9]++)(?:[eE][+-]?[0-9]++)?"
_E_BODY = r"(?:[^\\']++|\\[\s\S]|'')*+'"
_Q_BODY = r"(?:[^']++|'')*+'"


def _master(standard_conforming_strings: bool) -> re.Pattern[str]:
    plain = _Q_BODY if standard_conforming_strings else _E_BODY
    # With standard_conforming_strings off the server rejects U&'...' outright.
    uni = rf"(?P<us>[uU]&'{_Q_BODY})" if standard_conforming_strings else r"(?P<bad_us>[uU]&')"
    # Every match takes the whitespace in front of its token too.
    return re.compile(
        rf"[{_SPACE}]*+(?:"
        rf"(?P<run>{_RUN})"
        r"|(?P<lc>--[^\n\r]*+)"
        r"|(?P<bc>/\*)"
        rf"|(?P<num>{_NUM})"
        rf"|(?P<op>[{re.escape(_OP_CHARS)}]++)"
        rf"|(?P<sq>'{plain})"
        rf"|(?P<es>[eE]'{_E_BODY})"
        rf"|{uni}"
        r"|(?P<bs>[bBxX]'[^']*+')"
        rf"|(?P<ds>\$(?P<tag>(?:[{_IDENT_START}][{_DOLQ_CONT}]*+)?)\$[\s\S]*?\$(?P=tag)\$)"
        r"|(?P<end>\Z))"
    )


_MASTER_SCS = _master(True)
_MASTER_NO_SCS = _master(False)

_NUM_RE = re.compile(_NUM)
_IDENT_CONT_RE = re.compile(f"[{_IDENT_CONT}]")
_BLOCK_TOKEN = re.compile(r"/\*|\*/")
# A string literal followed by this may be continued by the server (splice() refuses it).
_QUOTE_FOLLOWS = re.compile(rf"(?:[{_SPACE}]++|--[^\n\r]*+)*+'")
_GAP = re.compile(rf"(?:[{_SPACE}]++|--[^\n\r]*+)*+")
_UESCAPE = re.compile("uescape", re.IGNORECASE)
_TAIL_WORD = re.compile(rf"(?<![{_IDENT_CONT}])[A-Za-z]++\Z")
_TAIL_AS = re.compile(rf"(?<![{_IDENT_CONT}])[aA][sS]\Z")

# Reserved keywords after which "-" can only be a prefix minus.  Only RESERVED keywords
# qualify (non-reserved ones such as BY, SET, VALUES, BETWEEN or IS can be column, type or
# function names and then end an operand), and none of these can end an expression
# (unlike DEFAULT, END, NULL, TRUE, CURRENT_DATE, ...).  After ".", "::" or AS a keyword is
# a name, and that case is excluded separately.
_UNARY_KEYWORDS = frozenset(
    """SELECT WHERE AND OR NOT THEN ELSE WHEN IN LIMIT OFFSET RETURNING ON FROM FOR HAVING
    CASE TO DISTINCT ALL SYMMETRIC ASYMMETRIC""".split()
)


# Characters that never fuse with an adjacent literal (fast path for _glue()).
_NEVER_GLUE = frozenset("(),;[]:")
# After a string literal, only these can start a gap before another string.
_MAY_PRECEDE_STRING = frozenset(" \t\n\r\f-/'")

_ASCII_IDENT = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_$")


def _is_ident_char(c: str) -> bool:
    return c in _ASCII_IDENT or c >= "\x80"


def _glue(left: str, right: str) -> bool:
    """Would ``left + right`` lex differently from ``left + " " + right``?

    Conservative (may answer True needlessly).  Only called for a junction on at least one
    side of which is a literal, so ``right`` starts with a literal's first character or
    ``left`` ends with a literal's last character.
    """
    a = left[-1]
    b = right[0]
    if _is_ident_char(a):
        if _is_ident_char(b) or b == ".":
            return True  # identifier/number continues, or "1" + ".5"
        if b == "'":  # b'' e'' n'' x'' prefixes
            return a in "bBeEnNxX" and (len(left) == 1 or not _is_ident_char(left[-2]))
        if b == "-":  # "1e" + "-5"
            return a in "eE" and len(left) > 1 and (left[-2].isdigit() or left[-2] == ".")
        return False
    if a == ".":
        return _is_ident_char(b) or b == "."
    if a == "'":
        return b == "'"
    if a == "&" and b == "'":  # u&'' prefix
        return (
            len(left) > 1 and left[-2] in "uU" and (len(left) == 2 or not _is_ident_char(left[-3]))
        )
    if b == "-" and a in _OP_CHARS:
        # the minus would join the operator (or start a "--" comment)
        i = len(left) - 1
        while i >= 0 and left[i] in _OP_CHARS:
            if left[i] in _OP_SPECIAL:
                return True
            i -= 1
        return a == "-"
    return False


def _pg_operator(run: str) -> str:
    """The operator token PostgreSQL's lexer takes from the start of an op-char run."""
    n = len(run)
    cut = min((i for i in (run.find("/*"), run.find("--")) if i >= 0), default=-1)
    if cut >= 0:
        n = cut
    if n > 1 and run[n - 1] in "+-" and not any(c in _OP_SPECIAL for c in run[: n - 1]):
        n -= 1
        while n > 1 and run[n - 1] in "+-":
            n -= 1
    return run[:n]


def _unary_minus_allowed(out: list[str]) -> bool:
    """Is a "-" that follows the key pieces ``out`` certainly a prefix minus?"""
    if not out:
        return True
    last = out[-1]
    if last is MARKER:
        return False
    c = last[-1]
    if c in "(,[;":
        return True
    if c == ":":
        return not last.endswith("::")
    if c in _OP_CHARS:
        # after any operator token except "*", which may be a star ("SELECT * -1",
        # "t.* - 1"); other operators ending in "*" ("<*") are operators
        return c != "*" or (len(last) > 1 and last[-2] in _OP_CHARS)
    if not c.isalpha():
        return False
    m = _TAIL_WORD.search(last, max(0, len(last) - 12))
    if m is None or m.group().upper() not in _UNARY_KEYWORDS:
        return False
    # a keyword after ".", "::" or AS is a name: "t.limit -1" is a subtraction
    before = last[: m.start()].rstrip(" ")
    if not before:
        before = "".join(out[-3:-1]).rstrip(" ")
        if not before:
            return True
    return not (before[-1] in ".:" or _TAIL_AS.search(before, max(0, len(before) - 3)))


def _skip_block_comment(sql: str, pos: int) -> int:
    """End of the (nesting) block comment whose "/*" ends at ``pos``; -1 if unterminated."""
    depth = 1
    search = _BLOCK_TOKEN.search
    while True:
        m = search(sql, pos)
        if m is None:
            return -1
        depth += 1 if m.group() == "/*" else -1
        pos = m.end()
        if depth == 0:
            return pos


def _next_token(sql: str, pos: int) -> int:
    """Position of the next token at or after ``pos``; -1 in an unterminated comment."""
    while True:
        pos = _GAP.match(sql, pos).end()
        if not sql.startswith("/*", pos):
            return pos
        pos = _skip_block_comment(sql, pos + 2)
        if pos < 0:
            return -1


def _binds_tighter(sql: str, pos: int) -> bool:
    """Does what follows a would-be negative number bind tighter than prefix minus?

    "-1::int" is "-(1::int)", so there the minus stays in the key.  Subscripts, calls and
    "." bind tighter too (and make no sense after a number).
    """
    pos = _next_token(sql, pos)
    return pos < 0 or sql.startswith(("::", "[", "(", "."), pos)


def normalize(sql: str, *, standard_conforming_strings: bool = True) -> Normalized | None:
    """Split ``sql`` into a cache key and its literals; ``None`` if unsure how to."""
    if "\x00" in sql or ("&" in sql and _UESCAPE.search(sql)):
        return None
    match = (_MASTER_SCS if standard_conforming_strings else _MASTER_NO_SCS).match
    out: list[str] = []
    lits: list[str] = []
    append = out.append
    space = False  # whitespace or a comment since the last token
    after_literal = False  # the last piece in ``out`` is MARKER
    pos = 0
    n = len(sql)
    while True:
        m = match(sql, pos)
        if m is None:
            return None
        kind = m.lastgroup
        end = m.end()
        if pos < n and sql[pos] in _SPACE:
            space = True
            pos = m.start(kind)
        if kind == "run":
            lit = None
            tok = sql[pos:end]
        elif kind == "lc":
            space = True
            pos = end
            continue
        elif kind == "bc":
            end = _skip_block_comment(sql, end)
            if end < 0:
                return None
            space = True
            pos = end
            continue
        elif kind == "end":
            break
        elif kind == "op":
            tok = sql[pos:end]
            if len(tok) > 1:
                tok = _pg_operator(tok)
                if not tok:
                    return None
                end = pos + len(tok)
            lit = None
            if tok == "-" and (nm := _NUM_RE.match(sql, end)) and _unary_minus_allowed(out):
                num_end = nm.end()
                if num_end < n and _IDENT_CONT_RE.match(sql, num_end):
                    return None
                if not _binds_tighter(sql, num_end):
                    lit = sql[pos:num_end]
                    end = num_end
        elif kind == "num":
            if end < n and _IDENT_CONT_RE.match(sql, end):
                return None  # 0x1F, 1_000, 12abc, 1e: junk or a PG16+ literal
            lit = sql[pos:end]
        elif kind == "ds":
            lit = sql[pos:end]
        elif kind in ("sq", "es", "us", "bs"):
            # Another string next: continued by the server if a newline intervenes, else a
            # syntax error.  Refuse either way.
            if end < n and sql[end] in _MAY_PRECEDE_STRING:
                nxt = _next_token(sql, end)
                if nxt < 0 or sql.startswith("'", nxt):
                    return None
            lit = sql[pos:end]
        else:
            return None

        if lit is None:
            if space:
                if out:
                    append(" ")
                space = False
            elif after_literal and tok[0] not in _NEVER_GLUE and _glue(lits[-1], tok):
                append(" ")
            append(tok)
            after_literal = False
        else:
            if space:
                if out:
                    append(" ")
                space = False
            elif out and out[-1][-1] not in _NEVER_GLUE:
                if after_literal:
                    left = lits[-1]
                elif len(out) > 1:
                    prev = out[-2]
                    left = (lits[-1] if prev is MARKER else prev[-8:]) + out[-1]
                else:
                    left = out[-1]
                if _glue(left, lit):
                    append(" ")
            append(MARKER)
            lits.append(lit)
            after_literal = True
        pos = end
    return Normalized("".join(out), tuple(lits))


def splice(template_parts: Sequence[str], literals: Sequence[str]) -> str:
    """``parts[0] + literals[0] + parts[1] + ... + parts[-1]``.

    ``template_parts`` is a cached template split at its literal slots (for a key,
    ``key.split(MARKER)``).  As a defence against templates whose text would let a literal
    fuse with a neighbouring token (``E`` + ``'a\\'``, ``x @`` + ``-1``, ``'a'`` + ``'b'``),
    a space is inserted at such junctions; a key produced by :func:`normalize` never needs
    one.  Raises ``ValueError`` unless ``len(template_parts) == len(literals) + 1``, for an
    empty literal, and where a newline next to a string literal could make the server
    concatenate it with a neighbouring string.

    ``splice`` does not lex the parts: a slot inside a comment, string or quoted identifier
    of the template would swallow the literal.  Keys from :func:`normalize` are safe; vet
    any other template once with :func:`check_template` before caching it.
    """
    if len(template_parts) != len(literals) + 1:
        raise ValueError(
            f"{len(template_parts)} template parts do not fit {len(literals)} literals"
        )
    out = [template_parts[0]]
    left = template_parts[0]
    for lit, part in zip(literals, template_parts[1:], strict=True):
        if not lit:
            raise ValueError("empty literal")
        if left:
            if lit[0] == "'":
                trailing = left[len(left.rstrip(_SPACE)) :]
                if "\n" in trailing or "\r" in trailing:
                    raise ValueError("string literal after a newline")
            if left[-1] not in _NEVER_GLUE and _glue(left, lit):
                out.append(" ")
        out.append(lit)
        if part:
            c = part[0]
            if lit[-1] == "'" and c in _MAY_PRECEDE_STRING and _QUOTE_FOLLOWS.match(part):
                raise ValueError("string literal followed by a quote")
            if c not in _NEVER_GLUE and _glue(lit, part):
                out.append(" ")
            out.append(part)
            left = part
        else:
            left = lit
    return "".join(out)


def check_template(template_parts: Sequence[str], key: str) -> bool:
    """Can this template take the literals of every statement normalized to ``key``?

    For templates that did not come from :func:`normalize` (a rewritten statement split at
    its literal slots, slot ``i`` holding literal ``i`` of the key); call it once, before
    caching.  The template is spliced with probe literals and normalized again.  Every
    probe must come back as a literal of its own, so no slot is inside a comment, string,
    dollar quote or quoted identifier of the template.  And where the key's slot can hold a
    negative number (a prefix minus folded into the literal), a negative probe must come
    back whole, so that the template does not turn it into a subtraction after an operand
    or apply the minus to a following "::" cast.
    """
    key_parts = key.split(MARKER)
    slots = len(key_parts) - 1
    if len(template_parts) != slots + 1:
        return False
    positive = [str(900000001 + i) for i in range(slots)]
    negative = ["-" + probe for probe in positive]
    folded = normalize(splice(key_parts, negative))
    if folded is None:
        return False
    may_be_negative = set(folded.literals)
    mixed = [
        neg if neg in may_be_negative else pos for pos, neg in zip(positive, negative, strict=True)
    ]
    for probes in (positive, mixed):
        try:
            result = normalize(splice(template_parts, probes))
        except ValueError:
            return False
        if result is None:
            return False
        found = iter(result.literals)
        if not all(any(lit == probe for lit in found) for probe in probes):
            return False
    return True
