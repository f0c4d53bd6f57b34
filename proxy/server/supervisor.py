"""Several worker processes behind one port (``tenant-proxy run --workers N``).

The supervisor serves no client itself. It reserves the listen port, starts N
workers that each listen on it with SO_REUSEPORT (the kernel spreads new
connections over them), restarts a worker that exits, passes SIGHUP (rules
reload) and SIGTERM (drain) on to all of them, and serves /metrics, /healthz
and /readyz for the whole proxy by asking each worker over its control socket.

``tenant-proxy run`` hands over to it with :func:`exec_supervisor`: a fresh
interpreter that imports only what supervising needs, so the supervisor stays
at about a quarter of a worker's memory (the SQL engine and numba are big).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import generate_latest

import proxy
from proxy.config.settings import Settings, parse_listen
from proxy.observability.aggregate import (
    Family,
    cumulative_only,
    merge,
    parse_snapshot,
    render,
)
from proxy.observability.http import OpsServer
from proxy.observability.logs import configure_logging
from proxy.observability.metrics import GAUGE_MERGE, SupervisorMetrics
from proxy.server.control import ask, socket_path
from proxy.server.loop import install_uvloop
from proxy.server.place import WorkerPlace, worker_settings
from proxy.server.worker import WorkerSpec

log = logging.getLogger("tenant_proxy.supervisor")

#: How long a worker may take to listen (the anomaly model compiles at start).
STARTUP_TIMEOUT = 120.0
_ASK_TIMEOUT = 2.0
#: A worker that ran this long before exiting is restarted at once; quicker
#: exits back off (0.5 s, 1 s, 2 s, ... up to 10 s) so a crash loop cannot spin.
_STABLE_SECONDS = 10.0
_MAX_BACKOFF = 10.0


class WorkerFailed(RuntimeError):
    pass


@dataclass
class _Slot:
    index: int
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    quick_exits: int = 0

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


def _child_env() -> dict[str, str]:
    """The environment, with this copy of the proxy first on the module path
    (it may be running from a source tree rather than an installed package)."""
    root = str(Path(proxy.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


class Supervisor:
    def __init__(self, settings: Settings, count: int, log_level: str = "info",
                 log_format: str = "json", metrics: SupervisorMetrics | None = None) -> None:
        self.settings = settings
        self.count = count
        self.log_level, self.log_format = log_level, log_format
        self.metrics = metrics or SupervisorMetrics()
        self.rundir = tempfile.mkdtemp(prefix="tenant-proxy-run-")  # mode 0700
        self.slots = [_Slot(i) for i in range(count)]
        self.port = settings.listen_port
        self.stopping = False
        self._reservation: socket.socket | None = None
        self._watchers: list[asyncio.Task[None]] = []
        self._readers: set[asyncio.Task[None]] = set()
        #: Last metrics of each live worker (by pid), and the totals of exited ones.
        self._latest: dict[int, list[Family]] = {}
        self._retired: list[Family] = []
        self.ops: OpsServer | None = None
        if settings.http_listen:
            host, port = parse_listen(settings.http_listen)
            self.ops = OpsServer(host, port, self.exposition, self.readiness, self.liveness,
                                 self.details)

    # --- lifecycle ----------------------------------------------------------

    async def start(self) -> None:
        """Listen with every worker (WorkerFailed or OSError if that fails)."""
        self.port = self._reserve_port()
        await asyncio.gather(*(self._spawn(slot) for slot in self.slots))
        self._watchers = [asyncio.get_running_loop().create_task(self._watch(slot))
                          for slot in self.slots]
        if self.ops is not None:
            await self.ops.start()

    def _reserve_port(self) -> int:
        """Bind (without listening) the address the workers will share, so a
        port 0 becomes one fixed port for all workers and their restarts."""
        s = self.settings
        family, kind, proto, _, addr = socket.getaddrinfo(
            s.listen_host or None, s.listen_port, type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind(addr)
        except OSError:
            sock.close()
            raise
        self._reservation = sock
        return sock.getsockname()[1]

    async def _spawn(self, slot: _Slot) -> None:
        place = WorkerPlace(slot.index, self.count, self.rundir)
        spec = WorkerSpec(worker_settings(self.settings, place, self.port), place, os.getpid(),
                          self.log_level, self.log_format)
        slot.started_at = time.monotonic()
        proc = slot.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy.server.worker", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, env=_child_env())
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(pickle.dumps(spec))
        await proc.stdin.drain()
        proc.stdin.close()
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), STARTUP_TIMEOUT)
        except TimeoutError:
            proc.kill()
            raise WorkerFailed(f"worker {slot.index} did not listen within "
                               f"{STARTUP_TIMEOUT:g} s") from None
        if not line:
            raise WorkerFailed(f"worker {slot.index} exited during start "
                               f"({describe_exit(await proc.wait())}); see its log above")
        reader = asyncio.get_running_loop().create_task(self._discard(proc.stdout))
        self._readers.add(reader)
        reader.add_done_callback(self._readers.discard)
        log.info("worker %d listening (pid %d)", slot.index, proc.pid)

    @staticmethod
    async def _discard(stream: asyncio.StreamReader) -> None:
        """Keep reading a worker's stdout so a stray print can never block it."""
        while await stream.read(65536):
            pass

    async def _watch(self, slot: _Slot) -> None:
        """Restart the worker in ``slot`` whenever it exits, until the proxy stops."""
        while True:
            proc = slot.proc
            assert proc is not None
            code = await proc.wait()
            self._retire(proc.pid)
            if self.stopping:
                return
            ran = time.monotonic() - slot.started_at
            slot.quick_exits = 0 if ran >= _STABLE_SECONDS else slot.quick_exits + 1
            delay = min(_MAX_BACKOFF, 0.5 * 2 ** (slot.quick_exits - 1)) \
                if slot.quick_exits else 0.0
            log.error("worker %d (pid %d) ended after %.0f s (%s); restarting it in %.1f s",
                      slot.index, proc.pid, ran, describe_exit(code), delay)
            await asyncio.sleep(delay)
            if self.stopping:
                return
            self.metrics.worker_restarts.inc()
            try:
                await self._spawn(slot)
            except (WorkerFailed, OSError) as exc:
                log.error("restarting worker %d failed: %s", slot.index, exc)
                if slot.proc is proc:  # no process was started: pause before the next try
                    await asyncio.sleep(_MAX_BACKOFF)

    def _retire(self, pid: int) -> None:
        last = self._latest.pop(pid, None)
        if last:
            self._retired = merge([self._retired, cumulative_only(last)], GAUGE_MERGE)

    def reload(self) -> None:
        """SIGHUP: every worker reloads its rules."""
        live = [slot for slot in self.slots if slot.alive]
        log.info("reloading the rules in %d workers", len(live))
        for slot in live:
            assert slot.proc is not None
            with contextlib.suppress(ProcessLookupError):
                slot.proc.send_signal(signal.SIGHUP)

    async def stop(self) -> None:
        """Drain every worker (each gets SIGTERM and ``limits.drain_timeout``),
        kill what is left after that, and clean up."""
        self.stopping = True
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        procs = [slot.proc for slot in self.slots if slot.proc and slot.alive]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        if procs:
            grace = self.settings.limits.drain_timeout + 10
            await asyncio.wait([asyncio.ensure_future(p.wait()) for p in procs],
                                         timeout=grace)
            for p in procs:
                if p.returncode is None:
                    log.error("worker pid %d still running %g s after SIGTERM; killing it",
                              p.pid, grace)
                    with contextlib.suppress(ProcessLookupError):
                        p.kill()
                    await p.wait()
        if self.ops is not None:
            await self.ops.close()
        if self._reservation is not None:
            self._reservation.close()
        shutil.rmtree(self.rundir, ignore_errors=True)

    # --- what /metrics, /healthz and /readyz say ----------------------------

    async def _ask_all(self, *words: str) -> list[tuple[_Slot, int, bytes | None]]:
        """Each live worker's answer (None if it did not answer in time)."""
        live = [(slot, slot.proc.pid) for slot in self.slots if slot.proc and slot.alive]

        async def one(slot: _Slot) -> bytes | None:
            try:
                return await ask(socket_path(self.rundir, slot.index), *words,
                                 timeout=_ASK_TIMEOUT)
            except (OSError, TimeoutError) as exc:
                log.warning("worker %d did not answer %r: %s", slot.index, words[0], exc)
                return None

        answers = await asyncio.gather(*(one(slot) for slot, _ in live))
        return [(slot, pid, answer) for (slot, pid), answer in zip(live, answers, strict=True)]

    async def exposition(self) -> bytes:
        for slot, pid, answer in await self._ask_all("metrics"):
            # A worker that exited meanwhile has been retired: its numbers are counted.
            if answer and slot.proc is not None and slot.proc.pid == pid and slot.alive:
                try:
                    self._latest[pid] = parse_snapshot(answer)
                except ValueError as exc:
                    log.error("worker %d sent unreadable metrics: %s", slot.index, exc)
        families = merge([self._retired, *self._latest.values()], GAUGE_MERGE)
        self.metrics.workers.set(sum(slot.alive for slot in self.slots))
        return generate_latest(self.metrics.registry) + render(families)

    async def liveness(self) -> str | None:
        if any(slot.alive for slot in self.slots):
            return None
        return "no worker process is running"

    async def readiness(self) -> str | None:
        if self.stopping:
            return "draining"
        down = [str(slot.index) for slot in self.slots if not slot.alive]
        if down:
            return f"worker {', '.join(down)} not running"
        for slot, _, answer in await self._ask_all("ready"):
            if answer is None:
                return f"worker {slot.index} does not answer"
            if answer.strip() != b"ready":
                return f"worker {slot.index}: {answer.decode(errors='replace').strip()}"
        return None

    async def details(self) -> list[str]:
        """What each worker says of the floor (one line when they all agree)."""
        answers = [(slot.index, answer.decode(errors="replace").strip() if answer else
                    "floor: no answer") for slot, _, answer in await self._ask_all("floor")]
        if len({text for _, text in answers}) == 1:
            return [answers[0][1]]
        return [f"worker {index}: {text}" for index, text in answers]


async def supervise(settings: Settings, count: int, log_level: str, log_format: str) -> int:
    """Run ``count`` workers until SIGINT or SIGTERM; returns the exit status."""
    supervisor = Supervisor(settings, count, log_level, log_format)
    try:
        await supervisor.start()
    except (WorkerFailed, OSError) as exc:
        print(f"tenant-proxy: cannot start {count} workers on {settings.listen_host}:"
              f"{settings.listen_port}: {exc}", file=sys.stderr, flush=True)
        await supervisor.stop()
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, supervisor.reload)
    print(f"tenant-proxy listening on {settings.listen_host}:{supervisor.port} "
          f"({count} workers)", flush=True)
    await stop.wait()
    log.info("stopping: draining %d workers", sum(slot.alive for slot in supervisor.slots))
    await supervisor.stop()
    return 0


def exec_supervisor(settings: Settings, count: int, log_level: str, log_format: str) -> None:
    """Replace this process (same pid, so signals still reach it) with a fresh
    interpreter running only the supervisor; the arguments travel in an
    unlinked temporary file (they hold verifiers and upstream passwords)."""
    with tempfile.TemporaryFile() as spec:
        pickle.dump((settings, count, log_level, log_format), spec)
        spec.flush()
        spec.seek(0)
        os.set_inheritable(spec.fileno(), True)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, "-m", "proxy.server.supervisor",
                                   str(spec.fileno())], _child_env())


def main() -> int:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until supervise() handles it: never fatal
    with os.fdopen(int(sys.argv[1]), "rb") as spec:
        settings, count, log_level, log_format = pickle.load(spec)
    configure_logging(log_level, log_format)
    install_uvloop()
    return asyncio.run(supervise(settings, count, log_level, log_format))


if __name__ == "__main__":
    sys.exit(main())
