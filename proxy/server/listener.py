"""The listening socket, the set of live sessions, and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from proxy.anomaly.warmup import warm_up
from proxy.config.settings import Settings, parse_listen
from proxy.errors import TooManyConnections
from proxy.floor.monitor import FloorMonitor
from proxy.observability.aggregate import snapshot
from proxy.observability.audit import AuditWriter
from proxy.observability.http import OpsServer, registry_exposition
from proxy.observability.metrics import METRICS, Metrics
from proxy.policy.rules import load_rules
from proxy.server.cancel import CancelRegistry
from proxy.server.control import ControlServer, ask, socket_path
from proxy.server.encryption import EncryptionService
from proxy.server.place import WorkerPlace
from proxy.server.reload import RulesWatcher
from proxy.server.session import ServerState, Session
from proxy.server.tls import client_side_context
from proxy.session.engine import Engine
from proxy.session.startup import open_session
from proxy.wire import backend as be

log = logging.getLogger("tenant_proxy.server")

ANOMALY_SAVE_SECONDS = 30.0
#: How long a readiness answer about the upstream stays good.
_READY_CACHE_SECONDS = 2.0


class ProxyServer:
    """Listener plus shared state. With ``settings.rules`` set, every login goes
    through the isolation engine; without it statements pass through.

    As one of several workers (``worker``), it shares the port with the others
    (SO_REUSEPORT), hands CancelRequests for their sessions to them, and
    answers the supervisor on its control socket instead of serving HTTP.
    """

    def __init__(self, settings: Settings, metrics: Metrics = METRICS,
                 worker: WorkerPlace | None = None) -> None:
        self.worker = worker
        self.metrics = metrics
        cancels = CancelRegistry(worker.index, self._forward_cancel) if worker else \
            CancelRegistry()
        self.state = ServerState(settings, cancels, client_side_context(settings.tls),
                                 metrics=metrics)
        self.engine: Engine | None = None
        self.watcher: RulesWatcher | None = None
        self.audit = AuditWriter(settings.audit.path, settings.audit.key,
                                 max_bytes=settings.audit.max_bytes,
                                 keep=settings.audit.keep) if settings.audit else None
        if settings.rules:
            self.engine = Engine(load_rules(settings.rules), metrics=metrics, audit=self.audit)
            trusted = [r for r, u in self.engine.rules.users.items() if u.identity == "trusted"]
            if trusted:
                log.warning("roles %s use identity trusted: they may pick any tenant with a "
                            "bare id (development only)", ", ".join(sorted(trusted)))
            self.watcher = RulesWatcher(settings.rules, self.engine,
                                        settings.rules_reload_interval)
            engine = self.engine
            self.state.hook_factory = lambda role, params: open_session(engine, role, params)
        self.encryption = EncryptionService(settings, self.engine) if self.engine else None
        self.floor = FloorMonitor(settings, lambda: self.engine.rules if self.engine else None,
                                  metrics)
        self.ops: OpsServer | None = None
        if settings.http_listen:
            host, port = parse_listen(settings.http_listen)
            self.ops = OpsServer(host, port, registry_exposition(metrics.registry),
                                 self.readiness, details=self._floor_details)
        self.control: ControlServer | None = None
        if worker is not None:
            self.control = ControlServer(socket_path(worker.rundir, worker.index), {
                "cancel": self._control_cancel, "ready": self._control_ready,
                "metrics": self._control_metrics, "floor": self._control_floor})
        self._server: asyncio.Server | None = None
        self._sessions: dict[asyncio.Task[None], Session] = {}
        self._upstream_checked = (0.0, "not checked yet")
        self._saver: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    async def start(self) -> None:
        """Listen; raises FloorUnavailable first if the floor is required and off."""
        s = self.state.settings
        await self.floor.start()
        if self.encryption is not None:
            await self.encryption.start()
        self._server = await asyncio.start_server(self._accept, s.listen_host, s.listen_port,
                                                  reuse_address=True, backlog=1024,
                                                  reuse_port=self.worker is not None)
        log.info("listening on %s:%d, upstream %s:%d", s.listen_host, self.port,
                 s.upstream.host, s.upstream.port)
        if self.control is not None:
            await self.control.start()
        if self.watcher is not None:
            self.watcher.start()
        if self.ops is not None:
            await self.ops.start()
        if self.engine is not None and self.engine.anomaly is not None:
            seconds = warm_up()  # compile (or load cached) numba code before traffic
            log.info("anomaly model ready in %.2f s", seconds)
            self._saver = asyncio.get_running_loop().create_task(self._save_anomaly_state())

    async def _save_anomaly_state(self) -> None:
        """Persist what the detector learned and flagged, every half minute."""
        while True:
            await asyncio.sleep(ANOMALY_SAVE_SECONDS)
            if self.engine is not None and self.engine.anomaly is not None:
                await asyncio.get_running_loop().run_in_executor(None,
                                                                 self.engine.anomaly.save)

    async def readiness(self) -> str | None:
        """None when ready: serving, rules loaded, upstream reachable, floor on if required."""
        if self.state.draining:
            return "draining"
        if (floor := self.floor.problem()) is not None:
            return floor
        if self.watcher is not None and self.watcher.last_error:
            log.debug("serving the previous rules: %s", self.watcher.last_error)
        checked_at, problem = self._upstream_checked
        if time.monotonic() - checked_at > _READY_CACHE_SECONDS:
            problem = await self._check_upstream()
            self._upstream_checked = (time.monotonic(), problem)
        return problem

    async def _check_upstream(self) -> str | None:
        up = self.state.settings.upstream
        try:
            async with asyncio.timeout(2):
                _, writer = await asyncio.open_connection(up.host, up.port)
        except (OSError, TimeoutError) as exc:
            return f"upstream {up.host}:{up.port} unreachable ({exc.__class__.__name__})"
        writer.close()
        return None

    # --- control socket (worker mode) ---------------------------------------

    async def _forward_cancel(self, owner: int, process_id: int, secret_key: int) -> bool:
        assert self.worker is not None
        if owner >= self.worker.count:  # no such worker: a made-up key
            return False
        try:
            answer = await ask(socket_path(self.worker.rundir, owner), "cancel",
                               str(process_id), str(secret_key))
        except (OSError, TimeoutError) as exc:
            log.warning("cannot forward a cancel request to worker %d: %s", owner, exc)
            return False
        return answer.strip() == b"delivered"

    async def _control_cancel(self, args: list[str]) -> bytes:
        result = await self.state.cancels.cancel_local(int(args[0]), int(args[1]))
        self.metrics.cancel_requests.labels(result).inc()
        return result.encode() + b"\n"

    async def _control_ready(self, args: list[str]) -> bytes:
        problem = await self.readiness()
        return b"ready\n" if problem is None else f"not ready: {problem}\n".encode()

    async def _control_metrics(self, args: list[str]) -> bytes:
        return snapshot(self.metrics.registry)

    async def _floor_details(self) -> list[str]:
        return [self.floor.describe()]

    async def _control_floor(self, args: list[str]) -> bytes:
        return self.floor.describe().encode() + b"\n"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._sessions) >= self.state.settings.limits.max_client_connections:
            err = TooManyConnections("sorry, too many clients already")
            with contextlib.suppress(ConnectionError, OSError):
                writer.write(be.ErrorResponse(err.fields()).encode())
                await writer.drain()
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        session = Session(self.state, reader, writer)
        self._sessions[task] = session
        try:
            await session.run()
        except asyncio.CancelledError:
            pass  # close() ends sessions this way; the task itself ends normally
        except Exception:
            log.exception("session crashed (a proxy bug)")
        finally:
            self._sessions.pop(task, None)

    async def drain(self, timeout: float | None = None) -> None:
        """Stop accepting, let open transactions finish, then close everything.

        Readiness turns false first; idle sessions are closed at once with
        57P01, sessions in a transaction when it ends, and whatever is left
        after ``limits.drain_timeout`` is closed anyway.
        """
        timeout = self.state.settings.limits.drain_timeout if timeout is None else timeout
        self.state.draining = True
        if self._server is not None:
            self._server.close()
        log.info("draining %d sessions (up to %g s)", len(self._sessions), timeout)
        deadline = time.monotonic() + timeout
        while self._sessions and time.monotonic() < deadline:
            for session in list(self._sessions.values()):
                session.close_if_idle()
            await asyncio.sleep(0.05)
        await self.close()

    async def close(self) -> None:
        """Stop listening and end every session now."""
        self.state.draining = True
        await self.floor.close()
        if self.watcher is not None:
            await self.watcher.stop()
        if self._saver is not None:
            self._saver.cancel()
        if self.engine is not None and self.engine.anomaly is not None:
            self.engine.anomaly.save()
        if self._server is not None:
            self._server.close()
        for task in list(self._sessions):
            task.cancel()
        if self._sessions:
            await asyncio.gather(*self._sessions, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        if self.ops is not None:
            await self.ops.close()
        if self.control is not None:
            await self.control.close()
        if self.encryption is not None:
            await self.encryption.close()
        if self.audit is not None:
            self.audit.close()
