"""The seam between the wire relay and the SQL pipeline.

The relay hands each Query text and each Parse to a ``StatementHook``; the
hook returns the text to forward (``None`` for unchanged) or raises a
``PgError`` to refuse it. Keeping this an interface lets the relay stay
ignorant of rules, rewriting and encryption.
"""

from __future__ import annotations

from typing import Protocol

from proxy.wire.frontend import Parse


class StatementHook(Protocol):
    #: False lets the relay forward statements without decoding them at all.
    inspects: bool

    def query(self, sql: str) -> str | None:
        """A simple-protocol Query (possibly several statements)."""

    def parse(self, message: Parse) -> Parse | None:
        """An extended-protocol Parse."""


class PassThrough:
    """Forwards every statement unchanged (no rules loaded)."""

    inspects = False

    def query(self, sql: str) -> str | None:
        return None

    def parse(self, message: Parse) -> Parse | None:
        return None
