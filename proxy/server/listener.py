"""The listening socket and the set of live sessions."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from proxy.config.settings import Settings
from proxy.errors import TooManyConnections
from proxy.policy.rules import load_rules
from proxy.server.cancel import CancelRegistry
from proxy.server.reload import RulesWatcher
from proxy.server.session import ServerState, Session
from proxy.server.tls import client_side_context
from proxy.sql.pipeline import Engine, open_session
from proxy.wire import backend as be

log = logging.getLogger("tenant_proxy.server")


class ProxyServer:
    """Listener plus shared state. With ``settings.rules`` set, every login goes
    through the isolation engine; without it statements pass through."""

    def __init__(self, settings: Settings) -> None:
        self.state = ServerState(settings, CancelRegistry(), client_side_context(settings.tls))
        self.engine: Engine | None = None
        self.watcher: RulesWatcher | None = None
        if settings.rules:
            self.engine = Engine(load_rules(settings.rules))
            trusted = [r for r, u in self.engine.rules.users.items() if u.identity == "trusted"]
            if trusted:
                log.warning("roles %s use identity trusted: they may pick any tenant with a "
                            "bare id (development only)", ", ".join(sorted(trusted)))
            self.watcher = RulesWatcher(settings.rules, self.engine,
                                        settings.rules_reload_interval)
            engine = self.engine
            self.state.hook_factory = lambda role, params: open_session(engine, role, params)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    @property
    def sessions(self) -> int:
        return len(self._tasks)

    async def start(self) -> None:
        s = self.state.settings
        self._server = await asyncio.start_server(self._accept, s.listen_host, s.listen_port,
                                                  reuse_address=True, backlog=1024)
        log.info("listening on %s:%d, upstream %s:%d", s.listen_host, self.port,
                 s.upstream.host, s.upstream.port)
        if self.watcher is not None:
            self.watcher.start()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._tasks) >= self.state.settings.limits.max_client_connections:
            err = TooManyConnections("sorry, too many clients already")
            with contextlib.suppress(ConnectionError, OSError):
                writer.write(be.ErrorResponse(err.fields()).encode())
                await writer.drain()
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await Session(self.state, reader, writer).run()
        except asyncio.CancelledError:
            pass  # close() ends sessions this way; the task itself ends normally
        except Exception:
            log.exception("session crashed (a proxy bug)")
        finally:
            self._tasks.discard(task)

    async def close(self) -> None:
        """Stop listening and end every session."""
        self.state.draining = True
        if self.watcher is not None:
            await self.watcher.stop()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
