"""The proxy's per-transaction work in-process, for pgbench -S in the three
protocols: a session's relay and statement hook fed a client's messages and the
server's answers (no sockets, no database), the best of 8 batches of 3,000.

    python bench/hotpath.py                 # this checkout
    python bench/hotpath.py /path/to/other  # another checkout of the project, to compare

A plan-cache hit costs the same in both protocols as before issue 12; what this
measures is everything around it: framing, the hook, statement and portal state.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])
sys.path.insert(0, str(ROOT))

from bench.rewrite_cost import RULES  # noqa: E402
from proxy.policy.rules import parse_rules  # noqa: E402
from proxy.wire import frontend as fe  # noqa: E402

try:
    from proxy.session.engine import Engine
    from proxy.session.relay import Relay
    from proxy.session.startup import open_session
except ImportError:  # a checkout from before proxy/session existed
    from proxy.sql.pipeline import Engine, open_session  # type: ignore[no-redef]
    from proxy.wire.relay import Relay  # type: ignore[no-redef]

SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = {};"


def _msg(kind: bytes, body: bytes) -> bytes:
    return kind + (len(body) + 4).to_bytes(4, "big") + body


ROW_DESCRIPTION = _msg(b"T", (1).to_bytes(2, "big") + b"abalance\x00" + bytes(6)
                       + (23).to_bytes(4, "big") + (4).to_bytes(2, "big")
                       + (-1).to_bytes(4, "big", signed=True) + bytes(2))
DATA_ROW = _msg(b"D", (1).to_bytes(2, "big") + (1).to_bytes(4, "big") + b"5")
COMMAND_COMPLETE = _msg(b"C", b"SELECT 1\x00")
READY = _msg(b"Z", b"I")
PARSE_COMPLETE, BIND_COMPLETE = _msg(b"1", b""), _msg(b"2", b"")


def main() -> None:
    engine = Engine(parse_rules(RULES))
    hook, _ = open_session(engine, "bench", {})
    relay = Relay(max_message_size=1 << 20, hook=hook)
    relay.from_client(fe.Parse("P0", SQL.format("$1")).encode() + fe.Sync().encode())
    relay.from_upstream(PARSE_COMPLETE + READY)

    def simple(i: int) -> None:
        relay.from_client(fe.Query(SQL.format(i)).encode())
        relay.from_upstream(ROW_DESCRIPTION + DATA_ROW + COMMAND_COMPLETE + READY)

    def extended(i: int) -> None:
        relay.from_client(fe.Parse("", SQL.format("$1")).encode()
                          + fe.Bind("", "", (), (str(i).encode(),)).encode()
                          + fe.Describe("P", "").encode() + fe.Execute("", 0).encode()
                          + fe.Sync().encode())
        relay.from_upstream(PARSE_COMPLETE + BIND_COMPLETE + ROW_DESCRIPTION + DATA_ROW
                            + COMMAND_COMPLETE + READY)

    def prepared(i: int) -> None:
        relay.from_client(fe.Bind("", "P0", (), (str(i).encode(),)).encode()
                          + fe.Execute("", 0).encode() + fe.Sync().encode())
        relay.from_upstream(BIND_COMPLETE + DATA_ROW + COMMAND_COMPLETE + READY)

    for name, run in (("simple", simple), ("extended", extended), ("prepared", prepared)):
        best = float("inf")
        for _ in range(8):
            start = time.perf_counter_ns()
            for i in range(3000):
                run(i)
            best = min(best, (time.perf_counter_ns() - start) / 3000 / 1000)
        print(f"{name:9s} {best:6.2f} µs per transaction")


if __name__ == "__main__":
    main()
