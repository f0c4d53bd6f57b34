"""Whether a live policy's expression is the floor's.

PostgreSQL stores policy expressions as trees and prints them back in its own
spelling (``'x'::text``, ``(col)::text`` for a varchar column, extra
parentheses, identifiers quoted only when needed). Both sides are parsed with
pglast and compared as syntax trees without positions and without casts to
``text``, which the server adds or drops by itself; any other difference
(another column, operator, setting name, cast or an extra ``OR``) counts.
"""

from __future__ import annotations

import json
from typing import Any

from pglast.parser import ParseError, parse_sql_json


def _shape(node: Any) -> Any:
    if isinstance(node, list):
        return [_shape(n) for n in node]
    if not isinstance(node, dict):
        return node
    cast = node.get("TypeCast")
    if cast is not None and _is_text(cast["typeName"]):
        return _shape(cast["arg"])
    return {k: _shape(v) for k, v in node.items() if k != "location"}


def _is_text(type_name: dict[str, Any]) -> bool:
    names = [n["String"]["sval"] for n in type_name.get("names", [])]
    return names in (["text"], ["pg_catalog", "text"]) and "arrayBounds" not in type_name


def shape(expression: str) -> Any:
    """A comparable form of one SQL expression; None if it does not parse."""
    try:
        tree = json.loads(parse_sql_json(f"SELECT {expression}"))
    except ParseError:
        return None
    return _shape(tree["stmts"][0]["stmt"]["SelectStmt"]["targetList"])


def same_expression(live: str | None, wanted: str) -> bool:
    return live is not None and shape(live) == shape(wanted) is not None
