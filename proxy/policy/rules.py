"""The rules file: which tables are tenant-scoped, shared or denied, which
functions are allowed, and how each login role learns its tenant.

Loaded from YAML with every error naming the file, line and key; the result
is immutable, so a reload swaps one object for another and statements in
flight keep the rules they started with. ``rules/REFERENCE.md`` documents
every key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy.config.yamlsource import ConfigError, Located, load_yaml, parse_yaml, resolve_secret

RULES_VERSION = 1
TENANT_TYPES = ("bigint", "integer", "text", "uuid")
SCOPES = ("tenant", "shared", "deny")
IDENTITIES = ("bound", "token", "trusted", "bypass")
ENCRYPTION_MODES = ("randomized", "deterministic")
#: Logical types an encrypted column can hold (it is stored as bytea).
ENCRYPTED_TYPES = ("text", "smallint", "integer", "bigint", "numeric", "boolean", "date",
                   "timestamptz", "jsonb", "bytea")
_INTEGER = re.compile(r"-?[0-9]{1,19}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?"
                   r"[0-9a-fA-F]{12}")


@dataclass(frozen=True)
class TableRule:
    scope: str
    column: str | None = None
    writable: bool = False


@dataclass(frozen=True)
class UserRule:
    identity: str
    tenant: str | None = None


@dataclass(frozen=True)
class TokenKeys:
    hmac: tuple[bytes, ...] = ()
    ed25519_public: tuple[Any, ...] = ()
    max_ttl: int = 86400


@dataclass(frozen=True)
class AnomalyRule:
    mode: str = "off"  # off, learn, monitor, enforce
    threshold: float = 0.95
    #: Baseline and model, loaded at start and saved while learning.
    state: str | None = None
    #: Summary of flagged statements, for `tenant-proxy anomaly report`.
    report: str | None = None


@dataclass(frozen=True)
class EncryptedColumn:
    table: str
    column: str
    mode: str  # randomized or deterministic
    type: str  # the logical type clients see
    #: Bound into every ciphertext's associated data: ``schema.table.column``, or a
    #: name deterministic columns share so that they can be joined.
    domain: str

    @property
    def qualified(self) -> str:
        return f"{self.table}.{self.column}"

    @property
    def deterministic(self) -> bool:
        return self.mode == "deterministic"


@dataclass(frozen=True)
class EncryptionRules:
    master_key: bytes = field(repr=False)
    #: table -> column -> spec.
    columns: Mapping[str, Mapping[str, EncryptedColumn]] = field(default_factory=dict)
    #: What a read of a value whose key was shredded gives: an error, or NULL.
    unreadable: str = "error"
    #: Seconds between key store refreshes (rotations and shreds by other processes).
    key_refresh: float = 5.0

    def column(self, table: str, column: str) -> EncryptedColumn | None:
        return self.columns.get(table, {}).get(column)


@dataclass(frozen=True)
class Rules:
    source: str
    digest: str
    tenant_column: str = "tenant_id"
    tenant_type: str = "bigint"
    tables: Mapping[str, TableRule] = field(default_factory=dict)
    functions_allow: frozenset[str] = frozenset()
    functions_deny: frozenset[str] = frozenset()
    catalog_allow: frozenset[str] = frozenset()
    channel_prefix: str = "tenant_{tenant}_"
    multi_statement: bool = False
    reset_all: bool = False
    sql_prepare: bool = False
    users: Mapping[str, UserRule] = field(default_factory=dict)
    tokens: TokenKeys = field(default_factory=TokenKeys)
    anomaly: AnomalyRule = field(default_factory=AnomalyRule)
    encryption: EncryptionRules | None = None

    @property
    def version(self) -> str:
        """Short content hash: part of plan-cache keys and shown in logs."""
        return self.digest[:12]

    def table(self, qualified: str) -> TableRule | None:
        return self.tables.get(qualified)

    def tenant_literal(self, tenant: str) -> str:
        """The tenant as a SQL literal; the value was validated when set."""
        if self.tenant_type in ("bigint", "integer"):
            return str(int(tenant))
        return "'" + tenant.replace("'", "''") + "'"

    def check_tenant(self, tenant: str) -> str:
        """Validate a tenant id against the column type; returns its canonical form."""
        if self.tenant_type in ("bigint", "integer"):
            if not _INTEGER.fullmatch(tenant):
                raise ValueError(f"tenant id {tenant[:40]!r} is not an integer")
            value = int(tenant)
            limit = 2**63 if self.tenant_type == "bigint" else 2**31
            if not -limit <= value < limit:
                raise ValueError(f"tenant id {value} is out of range for {self.tenant_type}")
            return str(value)
        if self.tenant_type == "uuid":
            if not _UUID.fullmatch(tenant):
                raise ValueError(f"tenant id {tenant[:40]!r} is not a uuid")
            return tenant.lower()
        if not tenant or len(tenant) > 200 or "\0" in tenant:
            raise ValueError("tenant id must be 1 to 200 characters")
        return tenant

    def channel_allowed(self, channel: str, tenant: str | None) -> bool:
        return tenant is not None and channel.startswith(
            self.channel_prefix.format(tenant=tenant))


def qualify(name: str) -> str:
    """``orders`` and ``public.orders`` both mean ``public.orders``."""
    return name if "." in name else f"public.{name}"


class _Loader:
    def __init__(self, doc: Located) -> None:
        self.doc = doc

    def mapping(self, path: tuple[str, ...], value: Any, allowed: set[str] | None = None
                ) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.doc.error(path, "expected a mapping")
        if allowed is not None:
            for key in value:
                if key not in allowed:
                    raise self.doc.error((*path, key), "unknown key (expected one of: "
                                         f"{', '.join(sorted(allowed))})")
        return value

    def typed(self, path: tuple[str, ...], value: Any, kind: type, default: Any) -> Any:
        if value is None:
            return default
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise self.doc.error(path, f"expected {kind.__name__}, got {type(value).__name__}")
        return value

    def choice(self, path: tuple[str, ...], value: Any, choices: tuple[str, ...],
               default: str) -> str:
        value = self.typed(path, value, str, default)
        if value not in choices:
            raise self.doc.error(path, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def names(self, path: tuple[str, ...], value: Any) -> frozenset[str]:
        if value is None:
            return frozenset()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.doc.error(path, "expected a list of names")
        return frozenset(v.lower() for v in value)

    def secret(self, path: tuple[str, ...], value: Any) -> str:
        return resolve_secret(self.doc, path, value)


def _tables(ld: _Loader, raw: Any, default_column: str) -> dict[str, TableRule]:
    out: dict[str, TableRule] = {}
    for name, spec in ld.mapping(("tables",), raw).items():
        path = ("tables", name)
        if not re.fullmatch(r"[A-Za-z_][\w$]*(\.[A-Za-z_][\w$]*)?", name):
            raise ld.doc.error(path, "table names are [schema.]name")
        spec = ld.mapping(path, spec, {"scope", "column", "writable"})
        scope = ld.choice((*path, "scope"), spec.get("scope"), SCOPES, "deny")
        column = ld.typed((*path, "column"), spec.get("column"), str, None)
        if scope == "tenant":
            column = column or default_column
        elif column is not None:
            raise ld.doc.error((*path, "column"), f"only tenant-scoped tables have a column "
                               f"(this one is {scope})")
        writable = ld.typed((*path, "writable"), spec.get("writable"), bool,
                            scope == "tenant")
        if scope == "deny" and writable:
            raise ld.doc.error((*path, "writable"), "a denied table cannot be writable")
        qualified = qualify(name)
        if qualified in out:
            raise ld.doc.error(path, f"{qualified} is listed twice")
        out[qualified] = TableRule(scope, column, writable)
    return out


def _users(ld: _Loader, raw: Any, rules_for_check: Rules) -> dict[str, UserRule]:
    out: dict[str, UserRule] = {}
    for role, spec in ld.mapping(("users",), raw).items():
        path = ("users", role)
        spec = ld.mapping(path, spec, {"identity", "tenant"})
        identity = ld.choice((*path, "identity"), spec.get("identity"), IDENTITIES, "token")
        tenant = spec.get("tenant")
        if identity == "bound":
            if tenant is None:
                raise ld.doc.error(path, "identity bound needs a tenant")
            try:
                tenant = rules_for_check.check_tenant(str(tenant))
            except ValueError as exc:
                raise ld.doc.error((*path, "tenant"), str(exc)) from exc
        elif tenant is not None:
            raise ld.doc.error((*path, "tenant"), f"only bound roles have a fixed tenant "
                               f"(this one is {identity})")
        out[role] = UserRule(identity, tenant)
    return out


def _tokens(ld: _Loader, raw: Any) -> TokenKeys:
    from proxy.policy.tokens import load_ed25519_public_key, load_hmac_key

    spec = ld.mapping(("tokens",), raw, {"hmac_keys", "ed25519_public_keys", "max_ttl"})

    def keys(name: str, load: Callable[[str], Any]) -> tuple[Any, ...]:
        out = []
        for i, item in enumerate(spec.get(name) or []):
            path = ("tokens", name, str(i))
            try:
                out.append(load(ld.secret(path, item)))
            except ValueError as exc:
                raise ld.doc.error(path, str(exc)) from exc
        return tuple(out)

    max_ttl = ld.typed(("tokens", "max_ttl"), spec.get("max_ttl"), int, 86400)
    return TokenKeys(keys("hmac_keys", load_hmac_key),
                     keys("ed25519_public_keys", load_ed25519_public_key), max_ttl)


def rules_from_document(doc: Located, digest: str) -> Rules:
    ld = _Loader(doc)
    top = ld.mapping((), doc.data, {"version", "tenant", "tables", "default_table_scope",
                                    "functions", "catalog", "notify", "session", "users",
                                    "tokens", "anomaly", "encryption"})
    version = top.get("version")
    if version != RULES_VERSION:
        raise doc.error(("version",), f"version must be {RULES_VERSION}")
    tenant = ld.mapping(("tenant",), top.get("tenant"), {"column", "type"})
    column = ld.typed(("tenant", "column"), tenant.get("column"), str, "tenant_id")
    ttype = ld.choice(("tenant", "type"), tenant.get("type"), TENANT_TYPES, "bigint")
    ld.choice(("default_table_scope",), top.get("default_table_scope"), ("deny",), "deny")
    functions = ld.mapping(("functions",), top.get("functions"), {"allow", "deny"})
    catalog = ld.mapping(("catalog",), top.get("catalog"), {"allow"})
    notify = ld.mapping(("notify",), top.get("notify"), {"channel_prefix"})
    prefix = ld.typed(("notify", "channel_prefix"), notify.get("channel_prefix"), str,
                      "tenant_{tenant}_")
    if "{tenant}" not in prefix:
        raise doc.error(("notify", "channel_prefix"), "must contain {tenant}")
    session = ld.mapping(("session",), top.get("session"),
                         {"multi_statement", "reset_all", "sql_prepare"})
    multi = ld.choice(("session", "multi_statement"), session.get("multi_statement"),
                      ("refuse", "allow"), "refuse")
    reset_all = ld.choice(("session", "reset_all"), session.get("reset_all"),
                          ("refuse", "allow"), "refuse")
    sql_prepare = ld.choice(("session", "sql_prepare"), session.get("sql_prepare"),
                            ("refuse", "rewrite"), "refuse")
    base = Rules(doc.source, digest, column, ttype)
    tables = _tables(ld, top.get("tables"), column)
    return Rules(
        source=doc.source, digest=digest, tenant_column=column, tenant_type=ttype,
        tables=tables,
        functions_allow=ld.names(("functions", "allow"), functions.get("allow")),
        functions_deny=ld.names(("functions", "deny"), functions.get("deny")),
        catalog_allow=ld.names(("catalog", "allow"), catalog.get("allow")),
        channel_prefix=prefix,
        multi_statement=multi == "allow",
        reset_all=reset_all == "allow",
        sql_prepare=sql_prepare == "rewrite",
        users=_users(ld, top.get("users"), base),
        tokens=_tokens(ld, top.get("tokens")),
        anomaly=_anomaly(ld, top.get("anomaly")),
        encryption=_encryption(ld, top.get("encryption"), tables),
    )


def decode_master_key(text: str) -> bytes:
    """A 32-byte master key written as 64 hex digits or base64."""
    text = text.strip()
    try:
        key = bytes.fromhex(text) if re.fullmatch(r"[0-9a-fA-F]{64}", text) else \
            base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise ValueError("the master key must be 32 bytes, as 64 hex digits or base64 "
                         "(make one with `tenant-proxy keys generate-master`)")
    return key


def _encryption(ld: _Loader, raw: Any, tables: Mapping[str, TableRule]
                ) -> EncryptionRules | None:
    if raw is None:
        return None
    top = ("encryption",)
    spec = ld.mapping(top, raw, {"master_key", "unreadable", "key_refresh", "columns"})
    if "master_key" not in spec:
        raise ld.doc.error(top, "master_key is required ({env: NAME} or {file: PATH})")
    try:
        master = decode_master_key(ld.secret((*top, "master_key"), spec["master_key"]))
    except ValueError as exc:
        raise ld.doc.error((*top, "master_key"), str(exc)) from exc
    unreadable = ld.choice((*top, "unreadable"), spec.get("unreadable"), ("error", "null"),
                           "error")
    refresh = spec.get("key_refresh", 5)
    if isinstance(refresh, bool) or not isinstance(refresh, (int, float)) or refresh <= 0:
        raise ld.doc.error((*top, "key_refresh"), "expected a positive number of seconds")
    columns: dict[str, dict[str, EncryptedColumn]] = {}
    domains: dict[str, EncryptedColumn] = {}
    for name, col_spec in ld.mapping((*top, "columns"), spec.get("columns")).items():
        path = (*top, "columns", name)
        match = re.fullmatch(r"(?:([A-Za-z_][\w$]*)\.)?([A-Za-z_][\w$]*)\.([A-Za-z_][\w$]*)",
                             name)
        if match is None:
            raise ld.doc.error(path, "encrypted columns are [schema.]table.column")
        table = f"{match.group(1) or 'public'}.{match.group(2)}"
        column_name = match.group(3)
        col_spec = ld.mapping(path, col_spec, {"mode", "type", "domain"})
        rule = tables.get(table)
        if rule is None or rule.scope != "tenant":
            raise ld.doc.error(path, f"{table} must be listed under tables: with scope tenant "
                               "(data keys are per tenant)")
        if column_name == rule.column:
            raise ld.doc.error(path, "the tenant column cannot be encrypted")
        mode = ld.choice((*path, "mode"), col_spec.get("mode"), ENCRYPTION_MODES,
                         "randomized")
        kind = ld.choice((*path, "type"), col_spec.get("type"), ENCRYPTED_TYPES, "text")
        domain = ld.typed((*path, "domain"), col_spec.get("domain"), str, None)
        if domain is not None and mode != "deterministic":
            raise ld.doc.error((*path, "domain"), "only deterministic columns share a domain")
        column = EncryptedColumn(table, column_name, mode, kind,
                                 domain or f"{table}.{column_name}")
        other = domains.setdefault(column.domain, column)
        if other.type != column.type or other.mode != column.mode:
            raise ld.doc.error((*path, "domain"), f"columns sharing domain {column.domain} "
                               f"must have one mode and type ({other.qualified} is "
                               f"{other.mode} {other.type})")
        if column_name in columns.setdefault(table, {}):
            raise ld.doc.error(path, f"{column.qualified} is listed twice")
        columns[table][column_name] = column
    return EncryptionRules(master, columns, unreadable, float(refresh))


def _anomaly(ld: _Loader, raw: Any) -> AnomalyRule:
    spec = ld.mapping(("anomaly",), raw, {"mode", "threshold", "state", "report"})
    threshold = spec.get("threshold", 0.95)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or \
            not 0 <= threshold <= 1:
        raise ld.doc.error(("anomaly", "threshold"), "expected a number from 0 to 1")
    raw_mode = spec.get("mode")
    mode = ld.choice(("anomaly", "mode"), "off" if raw_mode is False else raw_mode,
                     ("off", "learn", "monitor", "enforce"), "off")  # YAML reads `off` as false
    state = ld.typed(("anomaly", "state"), spec.get("state"), str, None)
    if mode == "learn" and state is None:
        raise ld.doc.error(("anomaly", "mode"), "learn mode needs anomaly.state to keep "
                           "the baseline it learns")
    return AnomalyRule(mode, float(threshold), state,
                       ld.typed(("anomaly", "report"), spec.get("report"), str, None))


def parse_rules(text: str, source: str = "<rules>") -> Rules:
    digest = hashlib.sha256(text.encode()).hexdigest()
    return rules_from_document(parse_yaml(text, source), digest)


def load_rules(path: str | Path) -> Rules:
    doc = load_yaml(path)
    text = Path(path).read_text()
    return rules_from_document(doc, hashlib.sha256(text.encode()).hexdigest())


__all__ = ["ConfigError", "EncryptedColumn", "EncryptionRules", "Rules", "TableRule",
           "UserRule", "load_rules", "parse_rules", "qualify"]
