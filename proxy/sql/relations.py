"""What the rules say of each relation a statement references (I3).

Every reference the scope walker finds is classified here, reads and writes
alike: denied and unknown relations, catalog relations outside the
allow-list and writes to read-only tables are refused before any rewriting.
"""

from __future__ import annotations

from pglast import ast

from proxy.errors import Refused
from proxy.policy.rules import Rules
from proxy.sql.builtins import CATALOG_SCHEMAS, SAFE_CATALOG, SENSITIVE_CATALOG
from proxy.sql.scope import Reference


def classify(rules: Rules, ref: Reference) -> None:
    """Refuse ``ref`` unless the rules allow it in its role."""
    if ref.role == "cte":
        return
    qualified = ref.qualified
    schema, _name = qualified.split(".", 1)
    writes = ref.role in ("target", "copy-from")
    if "." in schema:
        raise Refused("cross-database references are not allowed")
    if schema in CATALOG_SCHEMAS:
        if qualified in SENSITIVE_CATALOG:
            raise Refused(f"reading {qualified} is not allowed: "
                          f"{SENSITIVE_CATALOG[qualified]}", reason="catalog")
        if writes:
            raise Refused(f"writing to the system catalog ({qualified}) is not allowed")
        if qualified not in SAFE_CATALOG and qualified not in rules.catalog_allow:
            raise Refused(f"catalog relation {qualified} is not in the allow-list",
                          hint="Add it to catalog.allow in the rules file if it holds "
                               "no tenant data.", reason="catalog")
        return
    rule = rules.table(qualified)
    if rule is None:
        raise Refused(f'relation "{qualified}" is not in the rules file',
                      hint="Unknown relations are refused; list it under tables: "
                           "with a scope.", reason="unknown_relation")
    if rule.scope == "deny":
        raise Refused(f'access to relation "{qualified}" is denied by the rules file',
                      reason="denied_relation")
    if writes and not rule.writable:
        raise Refused(f'relation "{qualified}" is read-only for tenants', reason="read_only",
                      hint=f"Set writable: true on {qualified} in the rules file to allow "
                           "writes.")


def check_row_locks(rules: Rules, refs: list[Reference]) -> None:
    """``FOR UPDATE``/``FOR SHARE`` lock rows every tenant shares unless the relation
    is writable (PostgreSQL asks for UPDATE privilege for the same reason)."""
    for ref in refs:
        if ref.role != "read":
            continue
        select = next((n for n in reversed(ref.path) if isinstance(n, ast.SelectStmt)), None)
        if select is None or not select.lockingClause:
            continue
        name = ref.node.alias.aliasname if ref.node.alias is not None else ref.node.relname
        locked = any(not clause.lockedRels or name in {r.relname for r in clause.lockedRels}
                     for clause in select.lockingClause)
        rule = rules.table(ref.qualified)
        if locked and (rule is None or not rule.writable):
            raise Refused(f'locking rows of "{ref.qualified}" is not allowed: it is '
                          "read-only for tenants", reason="read_only",
                          hint="Name the writable tables to lock with FOR UPDATE OF.")


_SEQUENCE_FUNCTIONS = frozenset({"nextval", "setval", "currval"})


def regclass_name(text: str) -> tuple[str | None, str] | None:
    """A relation name as PostgreSQL's regclass input reads it (dotted, each part
    quoted or case-folded), or None where it is not a plain name."""
    parts, i = [], 0
    while i <= len(text):
        if text.startswith('"', i):
            end, part = i + 1, ""
            while True:
                close = text.find('"', end)
                if close < 0:
                    return None
                part += text[end:close]
                if text.startswith('"', close + 1):
                    part, end = part + '"', close + 2
                    continue
                i = close + 1
                break
        else:
            j = i
            while j < len(text) and text[j] != ".":
                j += 1
            part, i = text[i:j].strip().lower(), j
            if not part or '"' in part:
                return None
        parts.append(part)
        if i == len(text):
            break
        if text[i] != ".":
            return None
        i += 1
    if not 1 <= len(parts) <= 2:
        return None
    return (parts[0] if len(parts) == 2 else None), parts[-1]


def check_sequences(rules: Rules, nodes: list[ast.Node]) -> None:
    """A sequence belongs to the table whose name prefixes it (``orders_id_seq``, as
    serial and identity columns name them; the longest such table wins): using the
    sequence of a denied or read-only table is writing to it. Sequences are named by
    a constant, read as PostgreSQL reads it (quotes, case)."""
    for node in nodes:
        if not isinstance(node, ast.FuncCall) or node.funcname[-1].sval not in \
                _SEQUENCE_FUNCTIONS or not node.args:
            continue
        arg = node.args[0]
        while isinstance(arg, ast.TypeCast):
            arg = arg.arg
        named = regclass_name(arg.val.sval) if isinstance(arg, ast.A_Const) and \
            isinstance(arg.val, ast.String) else None
        if named is None:
            raise Refused(f"{node.funcname[-1].sval}() must name its sequence with a constant "
                          "string", reason="function")
        schema, name = named[0] or "public", named[1]
        owners = [q for q in rules.tables if q.startswith(f"{schema}.")
                  and name.startswith(q.split(".", 1)[1] + "_")]
        if not owners:
            continue
        owner = max(owners, key=len)
        rule = rules.tables[owner]
        if rule.scope == "deny" or not rule.writable:
            raise Refused(f'sequence "{schema}.{name}" belongs to {owner}, which tenants '
                          "cannot write", reason="read_only")
