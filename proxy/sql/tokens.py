"""A statement's tokens, as PostgreSQL's own scanner reads them.

The parse tree gives where a node starts, never where it ends; the splice
rewriter finds clause boundaries here instead: parentheses matched, the
nesting depth of every token, and the next keyword at a given depth. Comments
are dropped so they can never be mistaken for a boundary.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

from pglast.parser import scan

from proxy.errors import Unsupported

_OPEN = {"ASCII_40", "ASCII_91"}  # ( [
_CLOSE = {"ASCII_41", "ASCII_93"}  # ) ]
_COMMENTS = {"SQL_COMMENT", "C_COMMENT"}
OPEN_PAREN, CLOSE_PAREN, COMMA, DOT, STAR = "ASCII_40", "ASCII_41", "ASCII_44", "ASCII_46", \
    "ASCII_42"


class Tokens:
    """The tokens of one statement text, with depths and matching parentheses."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.items = [t for t in scan(text) if t.name not in _COMMENTS]
        self.starts = [t.start for t in self.items]
        self.depth: list[int] = []
        self.match: dict[int, int] = {}
        stack: list[int] = []
        for i, token in enumerate(self.items):
            if token.name in _CLOSE:
                if not stack:
                    raise Unsupported("tenant-proxy cannot analyze this statement",
                                      detail="unbalanced parentheses")
                opener = stack.pop()
                self.match[opener], self.match[i] = i, opener
            self.depth.append(len(stack))
            if token.name in _OPEN:
                stack.append(i)

    def __len__(self) -> int:
        return len(self.items)

    def name(self, i: int) -> str:
        return self.items[i].name if 0 <= i < len(self.items) else ""

    def at(self, location: int) -> int:
        """The index of the token that starts at ``location`` (a parser location)."""
        i = bisect_left(self.starts, location)
        if i == len(self.starts) or self.starts[i] != location:
            raise Unsupported("tenant-proxy cannot analyze this statement",
                              detail=f"no token starts at offset {location}")
        return i

    def start(self, i: int) -> int:
        return self.items[i].start if i < len(self.items) else len(self.text)

    def end(self, i: int) -> int:
        """The offset just past token ``i``."""
        return self.items[i].end + 1

    def find(self, names: Iterable[str], lo: int, hi: int, depth: int) -> int | None:
        """The first token in ``[lo, hi)`` at ``depth`` whose name is in ``names``."""
        wanted = set(names)
        for i in range(lo, hi):
            if self.depth[i] == depth and self.items[i].name in wanted:
                return i
        return None

    def closing(self, i: int) -> int:
        """The ``)`` that closes the parenthesis enclosing token ``i``."""
        depth = self.depth[i]
        for j in range(i + 1, len(self.items)):
            if self.items[j].name in _CLOSE and self.depth[j] == depth - 1:
                return j
        raise Unsupported("tenant-proxy cannot analyze this statement",
                          detail="no closing parenthesis")
