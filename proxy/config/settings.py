"""The proxy's own settings (not the tenant rules): where to listen, which
upstream to use, how clients authenticate, TLS and resource limits.

Sources, highest precedence first: command-line flags, ``TENANT_PROXY_*``
environment variables, the YAML settings file, defaults. Every key is
documented in README.md ("Settings reference").
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from proxy.auth.scram import ScramVerifier
from proxy.config.yamlsource import ConfigError, Located, load_yaml, resolve_secret

SSLMODES = ("disable", "prefer", "require", "verify-ca", "verify-full")
CLIENT_AUTH_METHODS = ("scram-sha-256", "trust")
CLIENT_TLS_MODES = ("disable", "allow", "require")
#: What the proxy does when PostgreSQL does not enforce isolation under it (proxy/floor).
FLOOR_MODES = ("required", "recommended", "off")
#: Worker indexes travel in seven bits of the proxy's BackendKeyData (proxy/server/cancel.py).
MAX_WORKERS = 128


@dataclass(frozen=True)
class Limits:
    max_message_size: int = 64 * 1024 * 1024
    max_startup_packet: int = 10_000
    max_startup_parameters: int = 64
    login_timeout: float = 15.0
    upstream_connect_timeout: float = 10.0
    max_client_connections: int = 10_000
    drain_timeout: float = 30.0


@dataclass(frozen=True)
class UpstreamSettings:
    host: str = "127.0.0.1"
    port: int = 5432
    database: str | None = None
    user: str | None = None
    password: str | None = None
    passwords: Mapping[str, str] = field(default_factory=dict)
    #: Login role -> upstream role, for several logins sharing one database role.
    roles: Mapping[str, str] = field(default_factory=dict)
    sslmode: str = "prefer"
    sslrootcert: str | None = None
    #: TCP keepalive and user timeout of upstream sockets (libpq's names and units):
    #: an upstream that stops answering at the TCP level ends the session with 08006.
    keepalives_idle: int = 30
    keepalives_interval: int = 10
    keepalives_count: int = 3
    tcp_user_timeout: int = 30_000

    def password_for(self, user: str) -> str | None:
        return self.passwords.get(user, self.password)

    def role_for(self, login: str) -> str:
        return self.roles.get(login) or self.user or login


@dataclass(frozen=True)
class ClientTLS:
    mode: str = "disable"
    cert: str | None = None
    key: str | None = None
    client_ca: str | None = None


@dataclass(frozen=True)
class ClientAuth:
    method: str = "scram-sha-256"
    users: Mapping[str, ScramVerifier] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditSettings:
    path: str
    key: bytes
    max_bytes: int = 100 * 1024 * 1024
    keep: int = 10


@dataclass(frozen=True)
class KeyStoreSettings:
    """Where tenant data keys are kept (the proxy's own asyncpg connection): a URL, or a
    role on the upstream's host, port, database and TLS settings."""

    url: str | None = field(default=None, repr=False)
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    database: str | None = None

    def dsn(self, upstream: UpstreamSettings) -> str:
        from urllib.parse import quote, urlencode

        if self.url:
            return self.url
        user, database = self.user or upstream.user, self.database or upstream.database
        if not user or not database:
            raise ConfigError("key_store needs a url, or a user and database (key_store.user "
                              "and key_store.database, or upstream.user and upstream.database)")
        password = self.password or upstream.password_for(user)
        auth = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
        host = f"[{upstream.host}]" if ":" in upstream.host else upstream.host
        query = {"sslmode": upstream.sslmode, **({"sslrootcert": upstream.sslrootcert}
                                                 if upstream.sslrootcert else {})}
        return (f"postgresql://{auth}@{host}:{upstream.port}/{quote(database, safe='')}"
                f"?{urlencode(query)}")


@dataclass(frozen=True)
class Settings:
    listen_host: str = "127.0.0.1"
    listen_port: int = 6432
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    auth: ClientAuth = field(default_factory=ClientAuth)
    tls: ClientTLS = field(default_factory=ClientTLS)
    limits: Limits = field(default_factory=Limits)
    rules: str | None = None
    #: Seconds between checks of the rules file for changes; 0 disables (SIGHUP only).
    rules_reload_interval: float = 1.0
    #: HOST:PORT of the /metrics, /healthz and /readyz endpoint; None disables it.
    http_listen: str | None = None
    audit: AuditSettings | None = None
    key_store: KeyStoreSettings | None = None
    #: Worker processes sharing the listen port; None: one per available CPU.
    workers: int | None = None
    #: required: refuse to start unless PostgreSQL enforces isolation too; recommended:
    #: start and warn; off: do not inspect.
    floor: str = "recommended"

    def worker_count(self) -> int:
        return self.workers or available_cpus()


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU
    quota (a container limited to 2 CPUs on a 64-core node gets 2 workers)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        return cpus
    if quota == "max":
        return cpus
    return max(1, min(cpus, math.ceil(int(quota) / int(period))))


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"listen address {text!r} must be HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def parse_upstream_url(url: str, base: UpstreamSettings) -> UpstreamSettings:
    """A libpq-style URL: postgresql://[user[:password]@]host[:port][/db][?sslmode=..]."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ConfigError(f"upstream URL {url!r} must start with postgresql://")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    sslmode = query.get("sslmode", base.sslmode)
    if sslmode not in SSLMODES:
        raise ConfigError(f"upstream sslmode {sslmode!r} must be one of {', '.join(SSLMODES)}")
    return replace(
        base,
        host=parts.hostname or base.host,
        port=parts.port or base.port,
        database=unquote(parts.path.lstrip("/")) or base.database,
        user=unquote(parts.username) if parts.username else base.user,
        password=unquote(parts.password) if parts.password else base.password,
        sslmode=sslmode,
        sslrootcert=query.get("sslrootcert", base.sslrootcert),
    )


class _Reader:
    """Typed access to a located YAML mapping, with errors naming file, line and key."""

    def __init__(self, doc: Located) -> None:
        self.doc = doc

    def section(self, path: tuple[str, ...], allowed: set[str]) -> dict[str, Any]:
        node: Any = self.doc.data
        for key in path:
            node = node.get(key, {}) if isinstance(node, dict) else None
        if node is None:
            return {}
        if not isinstance(node, dict):
            raise self.doc.error(path, "expected a mapping")
        for key in node:
            if key not in allowed:
                raise self.doc.error((*path, key), f"unknown key (expected one of: "
                                     f"{', '.join(sorted(allowed))})")
        return node

    def value(self, path: tuple[str, ...], section: dict[str, Any], kind: type,
              default: Any) -> Any:
        raw = section.get(path[-1], default)
        if raw is default:
            return default
        if kind is float and isinstance(raw, int) and not isinstance(raw, bool):
            raw = float(raw)
        if not isinstance(raw, kind) or (isinstance(raw, bool) and kind is not bool):
            raise self.doc.error(path, f"expected {kind.__name__}, got {type(raw).__name__}")
        return raw

    def choice(self, path: tuple[str, ...], section: dict[str, Any], choices: tuple[str, ...],
               default: str) -> str:
        value = self.value(path, section, str, default)
        if value not in choices:
            raise self.doc.error(path, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def secret(self, path: tuple[str, ...], section: dict[str, Any]) -> str | None:
        raw = section.get(path[-1])
        return None if raw is None else resolve_secret(self.doc, path, raw)


def _limits(r: _Reader) -> Limits:
    section = r.section(("limits",), set(Limits.__dataclass_fields__))
    defaults = Limits()
    values = {}
    for name in Limits.__dataclass_fields__:
        default = getattr(defaults, name)
        value = r.value(("limits", name), section, type(default), default)
        if value <= 0:
            raise r.doc.error(("limits", name), "must be positive")
        values[name] = value
    return Limits(**values)


def _upstream(r: _Reader) -> UpstreamSettings:
    keys = {"url", "host", "port", "database", "user", "password", "passwords", "roles",
            "sslmode", "sslrootcert", "keepalives_idle", "keepalives_interval",
            "keepalives_count", "tcp_user_timeout"}
    s = r.section(("upstream",), keys)
    base = UpstreamSettings()
    url = r.value(("upstream", "url"), s, str, None)
    if url:
        try:
            base = parse_upstream_url(url, base)
        except ConfigError as exc:
            raise r.doc.error(("upstream", "url"), str(exc)) from exc
    passwords_section = r.section(("upstream", "passwords"), set(s.get("passwords") or {}))
    passwords = {user: r.secret(("upstream", "passwords", user), passwords_section) or ""
                 for user in passwords_section}
    roles_section = r.section(("upstream", "roles"), set(s.get("roles") or {}))
    roles = {login: r.value(("upstream", "roles", login), roles_section, str, None)
             for login in roles_section}
    return replace(
        base,
        roles=roles,
        host=r.value(("upstream", "host"), s, str, base.host),
        port=r.value(("upstream", "port"), s, int, base.port),
        database=r.value(("upstream", "database"), s, str, base.database),
        user=r.value(("upstream", "user"), s, str, base.user),
        password=r.secret(("upstream", "password"), s) or base.password,
        passwords=passwords,
        sslmode=r.choice(("upstream", "sslmode"), s, SSLMODES, base.sslmode),
        sslrootcert=r.value(("upstream", "sslrootcert"), s, str, base.sslrootcert),
        **{name: _positive(r, ("upstream", name), s, getattr(base, name))
           for name in ("keepalives_idle", "keepalives_interval", "keepalives_count",
                        "tcp_user_timeout")},
    )


def _positive(r: _Reader, path: tuple[str, ...], section: dict[str, Any], default: int) -> int:
    value = r.value(path, section, int, default)
    if value <= 0:
        raise r.doc.error(path, "must be positive")
    return value


def _auth(r: _Reader) -> ClientAuth:
    s = r.section(("auth",), {"method", "users"})
    users_section = r.section(("auth", "users"), set(s.get("users") or {}))
    users = {}
    for name, text in users_section.items():
        if not isinstance(text, str):
            raise r.doc.error(("auth", "users", name), "expected a SCRAM-SHA-256 verifier string")
        try:
            users[name] = ScramVerifier.parse(text)
        except ValueError as exc:
            raise r.doc.error(("auth", "users", name),
                              f"{exc}; make one with `tenant-proxy passwd`") from exc
    return ClientAuth(r.choice(("auth", "method"), s, CLIENT_AUTH_METHODS, "scram-sha-256"), users)


def _tls(r: _Reader) -> ClientTLS:
    s = r.section(("tls",), {"mode", "cert", "key", "client_ca"})
    tls = ClientTLS(
        mode=r.choice(("tls", "mode"), s, CLIENT_TLS_MODES, "disable"),
        cert=r.value(("tls", "cert"), s, str, None),
        key=r.value(("tls", "key"), s, str, None),
        client_ca=r.value(("tls", "client_ca"), s, str, None),
    )
    if tls.mode != "disable" and not (tls.cert and tls.key):
        raise r.doc.error(("tls", "mode"), f"mode {tls.mode} needs tls.cert and tls.key")
    return tls


def settings_from_document(doc: Located) -> Settings:
    if not isinstance(doc.data, dict):
        raise doc.error((), "expected a mapping at the top level")
    r = _Reader(doc)
    top = r.section((), {"listen", "upstream", "auth", "tls", "limits", "rules",
                         "rules_reload_interval", "http_listen", "audit", "workers",
                         "key_store", "floor"})
    host, port = Settings.listen_host, Settings.listen_port
    listen = r.value(("listen",), top, str, None)
    if listen:
        try:
            host, port = parse_listen(listen)
        except ConfigError as exc:
            raise doc.error(("listen",), str(exc)) from exc
    interval = r.value(("rules_reload_interval",), top, float, 1.0)
    if interval < 0:
        raise doc.error(("rules_reload_interval",), "must be 0 (off) or positive")
    http_listen = r.value(("http_listen",), top, str, None)
    if http_listen:
        try:
            parse_listen(http_listen)
        except ConfigError as exc:
            raise doc.error(("http_listen",), str(exc)) from exc
    if top.get("floor") is False:  # YAML reads `off` as false
        top = {**top, "floor": "off"}
    return Settings(host, port, _upstream(r), _auth(r), _tls(r), _limits(r),
                    r.value(("rules",), top, str, None), interval, http_listen, _audit(r),
                    workers=_workers(doc, r.value(("workers",), top, int, None)),
                    key_store=_key_store(r),
                    floor=r.choice(("floor",), top, FLOOR_MODES, "recommended"))


def _workers(doc: Located | None, value: int | None) -> int | None:
    if value is not None and not 1 <= value <= MAX_WORKERS:
        message = f"must be between 1 and {MAX_WORKERS}, got {value}"
        raise doc.error(("workers",), message) if doc else ConfigError(f"workers {message}")
    return value


def _key_store(r: _Reader) -> KeyStoreSettings | None:
    s = r.section(("key_store",), {"url", "user", "password", "database"})
    if not s:
        return None
    url = r.secret(("key_store", "url"), s)  # it may hold a password
    if url is not None and not url.startswith(("postgres://", "postgresql://")):
        raise r.doc.error(("key_store", "url"), "must start with postgresql://")
    return KeyStoreSettings(url, r.value(("key_store", "user"), s, str, None),
                            r.secret(("key_store", "password"), s),
                            r.value(("key_store", "database"), s, str, None))


def _audit(r: _Reader) -> AuditSettings | None:
    s = r.section(("audit",), {"path", "key", "max_bytes", "keep"})
    if not s:
        return None
    path = r.value(("audit", "path"), s, str, None)
    key = r.secret(("audit", "key"), s)
    if not path or not key:
        raise r.doc.error(("audit",), "audit needs a path and a key")
    if len(key.encode()) < 32:
        raise r.doc.error(("audit", "key"), "the audit key must be at least 32 bytes")
    return AuditSettings(path, key.encode(), r.value(("audit", "max_bytes"), s, int,
                                                     100 * 1024 * 1024),
                         r.value(("audit", "keep"), s, int, 10))


def load_settings(path: str | None, *, listen: str | None = None, upstream: str | None = None,
                  rules: str | None = None, workers: int | None = None,
                  floor: str | None = None, env: Mapping[str, str] = os.environ) -> Settings:
    """Merge the settings file with environment variables and flags."""
    path = path or env.get("TENANT_PROXY_CONFIG")
    settings = settings_from_document(load_yaml(path)) if path else Settings()
    listen = listen or env.get("TENANT_PROXY_LISTEN")
    if listen:
        host, port = parse_listen(listen)
        settings = replace(settings, listen_host=host, listen_port=port)
    upstream = upstream or env.get("TENANT_PROXY_UPSTREAM")
    if upstream:
        settings = replace(settings, upstream=parse_upstream_url(upstream, settings.upstream))
    if "TENANT_PROXY_UPSTREAM_PASSWORD" in env:
        settings = replace(settings, upstream=replace(
            settings.upstream, password=env["TENANT_PROXY_UPSTREAM_PASSWORD"]))
    rules = rules or env.get("TENANT_PROXY_RULES")
    if rules:
        settings = replace(settings, rules=rules)
    if workers is None and env.get("TENANT_PROXY_WORKERS"):
        text = env["TENANT_PROXY_WORKERS"]
        if not text.isdigit():
            raise ConfigError(f"TENANT_PROXY_WORKERS={text!r}: expected a number of processes")
        workers = int(text)
    if workers is not None:
        settings = replace(settings, workers=_workers(None, workers))
    floor = floor or env.get("TENANT_PROXY_FLOOR")
    if floor:
        if floor not in FLOOR_MODES:
            raise ConfigError(f"floor {floor!r} is not one of {', '.join(FLOOR_MODES)}")
        settings = replace(settings, floor=floor)
    return settings
