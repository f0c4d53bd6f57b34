"""Record the fuzz seed corpus from real client traffic (run once; output committed).

    python -m tests.fuzz.record_seeds [--out tests/fuzz/seeds]

Starts a throwaway PostgreSQL with trust auth and the corpus schema
(``tests/corpus/schema.sql``), puts a TCP recorder in front of it and runs
real clients through the recorder:

* psql: plain statements, an error, a notice, LISTEN/NOTIFY, catalog
  describes, ``\\copy`` in and out (one connection with ``sslmode=prefer``, so
  it starts with an SSLRequest that the TLS-less server declines);
* asyncpg: prepared statements with binary parameters, executemany, a cursor
  (portal suspension), ``copy_records_to_table`` (binary COPY),
  ``copy_from_query``, and a statement timeout (a CancelRequest connection);
* pgbench: ``-i -s 1``, then 2-second ``-S -M prepared`` and ``-S -M simple``.

For every connection the recorder keeps both byte streams and the order in
which their chunks arrived, and writes:

* ``startup/<conn>.bin``: the client's startup-phase packets (SSLRequest,
  StartupMessage or CancelRequest);
* ``frontend/<conn>.bin``: the client's typed messages after that;
* ``backend/<conn>.bin``: everything the server sent (less the one-byte SSL answer);
* ``relay/<conn>.bin`` and ``relay_sql/<conn>.bin``: the ready phase (client
  after its startup packet, server after the first ReadyForQuery) as chunk
  records in arrival order (``targets.encode_chunks``).

Streams are cut at a message boundary at about ``--max-bytes`` (8 KB), so
every seed is complete traffic; identical files are written once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from proxy.localpg.cluster import LocalCluster
from tests.fuzz.targets import CLIENT, SEEDS, UPSTREAM, encode_chunks

SCHEMA = Path(__file__).resolve().parents[1] / "corpus" / "schema.sql"
DATABASE = "corpus"

PSQL_SCRIPT = r"""
SELECT id, email, name FROM users WHERE tenant_id = 1 ORDER BY id;
SELECT count(*), sum(total) FROM orders WHERE tenant_id = 1;
INSERT INTO orders (tenant_id, user_id, total) VALUES (1, 1, 12.50) RETURNING id;
UPDATE orders SET total = total + 1 WHERE tenant_id = 1 AND id = 1;
BEGIN;
SELECT o.id, i.sku, i.qty FROM orders o JOIN order_items i ON i.order_id = o.id
  WHERE o.tenant_id = 1;
DELETE FROM order_items WHERE tenant_id = 1 AND qty > 100;
COMMIT;
SELECT body->>'title', tags FROM documents WHERE tenant_id = 1 AND body @> '{"status": "draft"}';
SELECT 1/0;
SET application_name = 'seed-recorder';
SET tenant_proxy.tenant = '1';
SHOW tenant_proxy.tenant;
DO $$ BEGIN RAISE NOTICE 'hello from the recorder'; END $$;
LISTEN tenant_1_events;
NOTIFY tenant_1_events, 'payload';
SELECT pg_notify('tenant_1_events', 'second');
\d users
\copy (SELECT id, email FROM users WHERE tenant_id = 1) TO '{out}' WITH (FORMAT csv)
\copy users (tenant_id, email, name) FROM '{in_tsv}'
SELECT code, name FROM countries ORDER BY code;
"""

PSQL_COPY_SCRIPT = r"""
\copy order_items (tenant_id, order_id, sku, qty) FROM STDIN WITH (FORMAT csv)
1,1,SKU-Q,3
1,2,"SKU,COMMA",1
\.
COPY (SELECT * FROM order_items WHERE tenant_id = 1) TO STDOUT;
SELECT $x$dollar 'quoted'$x$, E'esc\'aped', U&'d\0061t', B'0101', X'1F', -1.5e3;
"""


@dataclass
class Connection:
    label: str
    events: list[tuple[int, bytes]] = field(default_factory=list)


class Recorder:
    """A TCP relay that keeps each connection's chunks in arrival order."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.label = "conn"
        self.connections: list[Connection] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = 1 + sum(c.label.rsplit("-", 1)[0] == self.label for c in self.connections)
        conn = Connection(f"{self.label}-{number}")
        self.connections.append(conn)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       direction: int) -> None:
            try:
                while data := await src.read(65536):
                    conn.events.append((direction, data))
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, CLIENT), pipe(up_reader, writer, UPSTREAM))


# --- cutting streams into seeds ---------------------------------------------------------

def startup_length(stream: bytes) -> int:
    """Bytes of startup-phase packets: SSL/GSS requests, then one StartupMessage
    or CancelRequest."""
    pos = 0
    while len(stream) - pos >= 8:
        length = int.from_bytes(stream[pos:pos + 4], "big")
        code = int.from_bytes(stream[pos + 4:pos + 8], "big")
        pos += length
        if code not in (80877103, 80877104):  # SSLRequest, GSSENCRequest
            break
    return pos


def frame_ends(stream: bytes, start: int = 0) -> list[int]:
    """Offsets just past each complete typed message from ``start``."""
    ends, pos = [], start
    while len(stream) - pos >= 5:
        end = pos + 1 + int.from_bytes(stream[pos + 1:pos + 5], "big")
        if end > len(stream):
            break
        ends.append(end)
        pos = end
    return ends


def cut(stream: bytes, start: int, limit: int) -> bytes:
    """``stream[start:]`` up to the last message boundary within ``limit`` bytes
    (at least one message)."""
    best = start
    for end in frame_ends(stream, start):
        if end - start > limit and best > start:
            break
        best = end
    return stream[start:best]


def first_ready(stream: bytes, start: int) -> int:
    """Offset just past the server's first ReadyForQuery (the end of the login)."""
    pos = start
    for end in frame_ends(stream, start):
        if stream[pos:pos + 1] == b"Z":
            return end
        pos = end
    return len(stream)


def seeds_of(conn: Connection, limit: int) -> dict[str, bytes]:
    client = b"".join(d for direction, d in conn.events if direction == CLIENT)
    server = b"".join(d for direction, d in conn.events if direction == UPSTREAM)
    client_start = startup_length(client)
    ssl_answers = client[:client_start].count(b"\x00\x00\x00\x08\x04\xd2\x16\x2f") + \
        client[:client_start].count(b"\x00\x00\x00\x08\x04\xd2\x16\x30")
    server_start = ssl_answers  # one 'N' byte per declined SSL/GSS request
    out = {"startup": client[:client_start]}
    frontend = cut(client, client_start, limit)
    backend = cut(server, server_start, limit)
    if frontend:
        out["frontend"] = frontend
    if backend:
        out["backend"] = backend
    # Ready phase: client bytes after the startup packet, server bytes after the
    # first ReadyForQuery, in arrival order, each cut at a message boundary.
    server_ready = first_ready(server, server_start)
    client_keep = len(cut(client, client_start, limit // 2))
    server_keep = len(cut(server, server_ready, limit // 2))
    bounds = {CLIENT: (client_start, client_start + client_keep),
              UPSTREAM: (server_ready, server_ready + server_keep)}
    offset = {CLIENT: 0, UPSTREAM: 0}
    chunks: list[tuple[int, bytes]] = []
    for direction, data in conn.events:
        lo, hi = bounds[direction]
        start, end = offset[direction], offset[direction] + len(data)
        offset[direction] = end
        piece = data[max(lo, start) - start:max(min(hi, end) - start, 0)]
        if piece:
            chunks.append((direction, piece))
    if client_keep:
        out["relay"] = out["relay_sql"] = encode_chunks(chunks)
    return out


# --- the clients ------------------------------------------------------------------------

async def run(cmd: list[str], env: dict[str, str], stdin: bytes | None = None) -> None:
    proc = await asyncio.create_subprocess_exec(
        *cmd, env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate(stdin)
    print(f"$ {' '.join(cmd)}: exit {proc.returncode}", file=sys.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {err.decode()[-2000:]}")


async def clients(recorder: Recorder, port: int, work: Path) -> None:
    env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(port), "PGUSER": "postgres",
           "PGDATABASE": DATABASE, "PGSSLMODE": "disable", "PGAPPNAME": "recorder"}
    env.pop("PGPASSWORD", None)
    in_tsv = work / "users.tsv"
    in_tsv.write_text("1\tseed1@acme.test\tSeed One\n1\tseed2@acme.test\t\\N\n")
    script = PSQL_SCRIPT.replace("{out}", str(work / "out.csv")).replace(
        "{in_tsv}", str(in_tsv))

    recorder.label = "psql-prefer"
    await run(["psql", "-X", "-v", "ON_ERROR_STOP=0", "-f", "-"],
              {**env, "PGSSLMODE": "prefer"}, script.encode())
    recorder.label = "psql-copy"
    await run(["psql", "-X", "-f", "-"], env, PSQL_COPY_SCRIPT.encode())

    import asyncpg

    recorder.label = "asyncpg"
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres",
                                 database=DATABASE, ssl=False)
    try:
        stmt = await conn.prepare(
            "SELECT id, email, name FROM users WHERE tenant_id = $1 AND id > $2 ORDER BY id")
        await stmt.fetch(1, 0)
        await conn.fetchrow("SELECT total, created_at FROM orders WHERE tenant_id = $1 "
                            "AND id = $2", 1, 1)
        await conn.executemany(
            "INSERT INTO order_items (tenant_id, order_id, sku, qty) VALUES ($1, $2, $3, $4)",
            [(1, 1, "SKU-P", 2), (1, 2, "SKU-R", 4)])
        await conn.execute("UPDATE documents SET tags = $1 WHERE tenant_id = $2 AND id = $3",
                           ["plan", "q2"], 1, 1)
        await conn.fetch("SELECT id, body FROM documents WHERE tenant_id = $1 AND body ? $2",
                         1, "status")
        async with conn.transaction():
            cur = await conn.cursor("SELECT id FROM orders WHERE tenant_id = $1", 1)
            await cur.fetch(2)
            await cur.fetch(2)
        await conn.copy_records_to_table(
            "users", records=[(1, "bin1@acme.test", "Bin One"), (1, "bin2@acme.test", None)],
            columns=["tenant_id", "email", "name"])
        await conn.copy_from_query("SELECT id, sku FROM order_items WHERE tenant_id = $1", 1,
                                   output=str(work / "items.txt"))
        with contextlib.suppress(TimeoutError):
            await conn.fetch("SELECT pg_sleep(5)", timeout=0.3)
        await conn.fetchval("SELECT 1")
    finally:
        await conn.close()
    await asyncio.sleep(0.2)  # let the cancel connection finish

    recorder.label = "asyncpg-settings"
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres",
                                 database=DATABASE, ssl="prefer",
                                 server_settings={"application_name": "seeds",
                                                  "search_path": "public",
                                                  "statement_timeout": "5s"})
    await conn.fetchval("SELECT count(*) FROM countries")
    await conn.close()

    recorder.label = "psql-options"
    await run(["psql", "-X", "-c", "SHOW tenant_proxy.tenant", "-c", "SHOW statement_timeout"],
              {**env, "PGOPTIONS": "-c tenant_proxy.tenant=1 -c statement_timeout=5s",
               "PGCLIENTENCODING": "UTF8"})
    recorder.label = "psql-replication"
    await run(["psql", "-X", "-d", f"dbname={DATABASE} replication=database",
               "-c", "IDENTIFY_SYSTEM"], env)

    recorder.label = "psycopg"
    await asyncio.to_thread(psycopg_session, port)

    recorder.label = "pgbench-init"
    await run(["pgbench", "-i", "-s", "1"], env)
    recorder.label = "pgbench-prepared"
    await run(["pgbench", "-S", "-M", "prepared", "-T", "2", "-n"], env)
    recorder.label = "pgbench-simple"
    await run(["pgbench", "-S", "-M", "simple", "-T", "2", "-n"], env)
    recorder.label = "pgbench-extended"
    await run(["pgbench", "-M", "extended", "-t", "20", "-n"], env)


def psycopg_session(port: int) -> None:
    """libpq through psycopg 3: server-side binding, binary results, pipeline mode,
    COPY FROM STDIN in text format."""
    import psycopg

    dsn = (f"host=127.0.0.1 port={port} user=postgres dbname={DATABASE} sslmode=disable "
           "options='-c tenant_proxy.tenant=1' application_name=psycopg-seeds")
    with psycopg.connect(dsn) as conn:
        cur = conn.cursor()
        cur.execute("SELECT id, email FROM users WHERE tenant_id = %s AND email LIKE %s",
                    (1, "%acme%"))
        cur.fetchall()
        cur.execute("SELECT id, total FROM orders WHERE tenant_id = %s", (1,), binary=True)
        cur.fetchall()
        with conn.pipeline():
            cur.execute("INSERT INTO orders (tenant_id, user_id, total) VALUES (%s, %s, %s)",
                        (1, 2, 7))
            cur.execute("UPDATE users SET name = %s WHERE tenant_id = %s AND id = %s",
                        ("Alice A.", 1, 1))
            cur.execute("SELECT count(*) FROM order_items WHERE tenant_id = %s", (1,))
        with cur.copy("COPY users (tenant_id, email, name) FROM STDIN") as copy:
            copy.write_row((1, "copy1@acme.test", "Copy\tOne"))
            copy.write_row((1, "copy2@acme.test", None))
        conn.commit()


async def record(cluster: LocalCluster, work: Path) -> list[Connection]:
    recorder = Recorder(cluster.port)
    port = await recorder.start()
    try:
        await clients(recorder, port, work)
    finally:
        await recorder.stop()
    return recorder.connections


def write_seeds(connections: list[Connection], out: Path, limit: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    seen: set[tuple[str, str]] = set()
    for target in ("startup", "frontend", "backend", "relay", "relay_sql"):
        shutil.rmtree(out / target, ignore_errors=True)
        (out / target).mkdir(parents=True)
    for conn in connections:
        for target, data in seeds_of(conn, limit).items():
            digest = hashlib.sha256(data).hexdigest()
            if not data or (target, digest) in seen:
                continue
            seen.add((target, digest))
            (out / target / f"{conn.label}.bin").write_bytes(data)
            counts[target] = counts.get(target, 0) + 1
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SEEDS)
    parser.add_argument("--max-bytes", type=int, default=8192)
    args = parser.parse_args()
    cluster = LocalCluster(hba=["local all all trust", "host all all 127.0.0.1/32 trust"])
    cluster.start()
    work = Path(tempfile.mkdtemp(prefix="fuzz-seeds-"))
    os.chmod(work, 0o777)
    try:
        cluster.psql(f"CREATE DATABASE {DATABASE}")
        cluster.psql(SCHEMA.read_text(), database=DATABASE)
        connections = asyncio.run(record(cluster, work))
    finally:
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)
    counts = write_seeds(connections, args.out, args.max_bytes)
    for target, n in sorted(counts.items()):
        print(f"{target}: {n} seeds", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
