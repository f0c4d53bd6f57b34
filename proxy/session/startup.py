"""A new login's session hook and the startup parameters sent upstream."""

from __future__ import annotations

import re

from proxy.errors import InvalidAuthorization
from proxy.session.bypass import BypassSession
from proxy.session.engine import Engine
from proxy.session.hooks import StatementHook
from proxy.session.tenant import InvalidToken, TenantSession
from proxy.sql.builtins import SAFE_SETTINGS
from proxy.sql.engine import TENANT_SETTING

_STARTUP_KEYS = {"user", "database", "options", "application_name", "client_encoding",
                 "replication"}

def _parse_options(options: str) -> list[tuple[str, str]]:
    """``-c name=value`` / ``--name=value`` pairs of the libpq options string."""
    words, word, escaped = [], "", False
    for ch in options:
        if escaped:
            word, escaped = word + ch, False
        elif ch == "\\":
            escaped = True
        elif ch.isspace():
            if word:
                words.append(word)
            word = ""
        else:
            word += ch
    if word:
        words.append(word)
    pairs = []
    i = 0
    while i < len(words):
        w = words[i]
        if w == "-c" and i + 1 < len(words):
            setting, i = words[i + 1], i + 2
        elif w.startswith("-c") or w.startswith("--"):
            setting, i = w[2:], i + 1
        else:
            raise InvalidAuthorization(f"startup option {w!r} is not allowed by tenant-proxy")
        name, sep, value = setting.partition("=")
        if not sep:
            raise InvalidAuthorization(f"startup option {w!r} has no value")
        pairs.append((name.replace("-", "_").lower(), value))
    return pairs


def _render_options(pairs: list[tuple[str, str]]) -> str:
    def esc(text: str) -> str:
        return re.sub(r"([\s\\])", r"\\\1", text)

    return " ".join(f"-c {esc(name)}={esc(value)}" for name, value in pairs)


def open_session(engine: Engine, role: str, params: dict[str, str]
                 ) -> tuple[StatementHook, dict[str, str]]:
    """The hook for a new login and the startup parameters to send upstream.

    Raises a FATAL PgError for roles the rules do not know, bad tokens in the
    startup options and startup settings that could subvert isolation.
    """
    rules = engine.rules
    user = rules.users.get(role)
    if user is None:
        raise InvalidAuthorization(f'role "{role}" is not configured in the rules file',
                                   hint="Add it under users: with an identity.")
    if user.identity == "bypass":
        return BypassSession(engine, role), params
    # PostgreSQL matches setting names in any case (CLIENT_ENCODING=GBK works), so
    # every check here is on lower-cased names, and a name given twice is refused.
    lowered: dict[str, str] = {}
    for key, value in params.items():
        name = key.lower()
        if name in lowered:
            raise InvalidAuthorization(f'startup parameter "{key}" is given twice')
        if name not in _STARTUP_KEYS and name not in SAFE_SETTINGS and name != TENANT_SETTING:
            raise InvalidAuthorization(f'startup parameter "{key}" is not allowed by '
                                       "tenant-proxy")
        lowered[name] = value
    params = lowered
    encoding = re.sub(r"[^A-Z0-9]", "", params.get("client_encoding", "UTF8").upper())
    if encoding not in ("UTF8", "UNICODE"):
        raise InvalidAuthorization("tenant-proxy needs client_encoding UTF8")
    # The proxy reads statements as UTF-8: so must the server, whatever defaults
    # the database or role carry.
    upstream = {k: v for k, v in params.items()
                if k not in ("options", "replication", TENANT_SETTING)}
    upstream["client_encoding"] = "UTF8"
    options = []
    # A startup parameter (asyncpg's server_settings) or a -c option (libpq's options).
    startup_value = params.get(TENANT_SETTING)
    for name, value in _parse_options(params.get("options", "")):
        if name == TENANT_SETTING:
            if startup_value is not None:
                raise InvalidAuthorization(f"{TENANT_SETTING} is given twice")
            startup_value = value
        elif name in SAFE_SETTINGS:
            options.append((name, value))
        else:
            raise InvalidAuthorization(f'startup setting "{name}" is not allowed by '
                                       "tenant-proxy")
    session = TenantSession(engine, role, user, user.tenant)
    if startup_value is not None:
        if user.identity == "bound":
            raise InvalidAuthorization(f'role "{role}" is bound to tenant {user.tenant}')
        try:
            session.tenant = session.startup_tenant = session._resolve(startup_value)
        except InvalidToken as exc:
            raise InvalidAuthorization(exc.message) from exc
    options.append((TENANT_SETTING, session.startup_tenant or ""))
    # Unqualified names must resolve upstream where the planner resolved them.
    options.append(("search_path", "public"))
    upstream["options"] = _render_options(options)
    return session, upstream
