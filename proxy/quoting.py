"""The one place names and values become SQL text.

Every identifier and string the proxy writes into a statement (table and
column names taken from the rules or the client, tenant ids, option values)
goes through these functions, so no client-controlled byte can end a token.
The server is pinned to ``standard_conforming_strings = on``, so a doubled
quote is the only escape a string literal needs.
"""

from __future__ import annotations


def ident(name: str) -> str:
    """``name`` as a quoted identifier (exact case, any character but NUL)."""
    if not name or "\0" in name:
        raise ValueError(f"not a usable SQL name: {name!r}")
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str, name: str) -> str:
    return f"{ident(schema)}.{ident(name)}"


def string(value: str) -> str:
    """``value`` as a standard string literal."""
    if "\0" in value:
        raise ValueError("string literals cannot contain NUL")
    return "'" + value.replace("'", "''") + "'"
