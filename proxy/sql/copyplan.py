"""How the session checks (or fills) the tenant column of COPY ... FROM rows: the
COPY options that decide how PostgreSQL splits and reads them, or a refusal
where the proxy could not read them the same way."""

from __future__ import annotations

import re

from pglast import ast

from proxy.errors import Unsupported
from proxy.policy.rules import Rules, TableRule
from proxy.sql.copyin import CopyFormat
from proxy.sql.scope import Reference


def copy_in_format(ref: Reference, rule: TableRule, rules: Rules, filled: bool
                    ) -> CopyFormat:
    """The row format of ``COPY <ref> FROM STDIN``; ``filled``: the proxy appends the
    tenant column to every row."""
    node = ref.writer
    assert isinstance(node, ast.CopyStmt)
    opts = {o.defname: o.arg for o in node.options or ()}
    fmt = opts.get("format")
    kind = fmt.sval if isinstance(fmt, ast.String) else "text"
    if kind == "binary":
        raise Unsupported("binary COPY into a tenant-scoped table is not supported",
                          hint="Use COPY ... FROM STDIN in text or CSV format.")
    encoding = opts.get("encoding")
    if encoding is not None and not (isinstance(encoding, ast.String) and re.sub(
            r"[^a-z0-9]", "", encoding.sval.lower()) in ("utf8", "unicode")):
        raise Unsupported("COPY into a tenant-scoped table must use the UTF8 encoding",
                          hint="The proxy checks rows as UTF-8; another encoding would "
                               "split them differently from the server.")
    header = opts.get("header")
    if isinstance(header, ast.String) and header.sval.lower() == "match":
        raise Unsupported("COPY ... HEADER MATCH is not supported for tenant-scoped tables")

    def text_opt(name: str, default: str) -> str:
        arg = opts.get(name)
        return arg.sval if isinstance(arg, ast.String) else default

    forced = [name for name in ("force_null", "force_not_null", "default") if name in opts]
    if forced:
        raise Unsupported(f"COPY option {forced[0].upper()} is not supported for "
                          "tenant-scoped tables",
                          hint="It changes which fields read as NULL, so the proxy's check "
                               "of the tenant column could see another value than the "
                               "server stores.")
    columns = [c.sval for c in node.attlist or ()]
    csv = kind == "csv"
    quote = text_opt("quote", '"')
    encrypted = rules.encryption.columns.get(ref.qualified, {}) if rules.encryption else {}
    sealed = tuple((i, encrypted[c]) for i, c in enumerate(columns) if c in encrypted)
    if sealed and any(name in opts for name in ("null", "force_null", "force_not_null",
                                                "default")):
        raise Unsupported("COPY options NULL, DEFAULT, FORCE_NULL and FORCE_NOT_NULL are not "
                          "supported with encrypted columns", reason="encrypted_column")
    return CopyFormat(
        csv=csv, delimiter=text_opt("delimiter", "," if csv else "\t"), quote=quote,
        escape=text_opt("escape", quote), header=_copy_flag(opts, "header"),
        tenant_index=None if filled else columns.index(rule.column or ""), sealed=sealed,
        null=text_opt("null", "") if "null" in opts else None)


def _copy_flag(opts: dict[str, object], name: str) -> bool:
    """A boolean COPY option: present without a value means true."""
    if name not in opts:
        return False
    arg = opts[name]
    if isinstance(arg, ast.Boolean):
        return bool(arg.boolval)
    if isinstance(arg, ast.Integer):
        return arg.ival != 0
    if isinstance(arg, ast.String):
        return arg.sval.lower() in ("true", "on", "1")
    return True
