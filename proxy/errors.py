"""PostgreSQL-shaped errors raised by every layer of the proxy.

Three kinds are kept apart, as asyncpg does: the peer broke the protocol
(close that client), a statement or login is refused (the session may stay
usable), and the proxy's own bugs (anything else). Each class carries its
SQLSTATE and severity so one method renders any of them as ErrorResponse
fields (invariant I5).
"""

from __future__ import annotations


class PgError(Exception):
    """An error the client sees as an ErrorResponse."""

    sqlstate = "XX000"
    severity = "ERROR"
    #: Shown when a refusal gives no hint of its own.
    default_hint: str | None = None
    #: Metric label for refusals of this class (a fixed vocabulary, never message text).
    default_reason = "error"

    def __init__(self, message: str, hint: str | None = None, detail: str | None = None,
                 reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.detail = detail
        self.reason = reason or self.default_reason

    @property
    def fatal(self) -> bool:
        return self.severity == "FATAL"

    def fields(self) -> dict[str, str]:
        """ErrorResponse fields keyed by their one-letter codes."""
        out = {"S": self.severity, "V": self.severity, "C": self.sqlstate, "M": self.message}
        if self.detail:
            out["D"] = self.detail
        hint = self.hint or self.default_hint
        if hint:
            out["H"] = hint
        return out


class ProtocolViolation(PgError):
    """The peer broke the wire protocol: its connection is closed (I7)."""

    sqlstate = "08P01"
    severity = "FATAL"


class ConnectionFailure(PgError):
    """The upstream connection failed or vanished mid-session."""

    sqlstate = "08006"
    severity = "FATAL"


class CannotConnect(PgError):
    """The upstream could not be reached when the session started."""

    sqlstate = "08001"
    severity = "FATAL"


class InvalidPassword(PgError):
    sqlstate = "28P01"
    severity = "FATAL"


class InvalidAuthorization(PgError):
    """The login is not allowed: unknown role, unsupported method, TLS required."""

    sqlstate = "28000"
    severity = "FATAL"


class TooManyConnections(PgError):
    sqlstate = "53300"
    severity = "FATAL"


class AdminShutdown(PgError):
    sqlstate = "57P01"
    severity = "FATAL"


class Refused(PgError):
    """A statement the policy does not allow (I3); the session stays usable."""

    sqlstate = "42501"
    default_reason = "policy"
    default_hint = ("tenant-proxy refused this under its rules file; an operator can "
                    "explain it with `tenant-proxy explain`.")


class Unsupported(PgError):
    """Syntax or a protocol feature the proxy does not support."""

    sqlstate = "0A000"
    default_reason = "unsupported"
    default_hint = "tenant-proxy refuses what it cannot prove safe."
