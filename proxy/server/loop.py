"""The event loop every proxy process runs on."""

from __future__ import annotations

import asyncio
import contextlib


def install_uvloop() -> None:
    """uvloop when installed (the relay's hot path is cheaper on it), else asyncio's own."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
