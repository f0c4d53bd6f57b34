"""What column encryption costs: pgbench-like inserts and point selects on a table
with encrypted columns, against the same statements on the same table unencrypted,
both through the proxy with isolation on, in the same run.

    python -m bench.encryption_cost [--seconds 10] [--clients 8] [--write bench/RESULTS.md]

Two tables with the same shape and data: ``plain_accounts`` (acct integer, secret
text) and ``sealed_accounts`` (acct deterministic integer, secret randomized
text). Workloads: a point select by primary key that returns the encrypted
values (decryption), a point select by equality on the deterministic column
(a sealed search parameter plus decryption), and an insert of both columns
(sealing). Each runs in the simple and the prepared protocol.
"""

from __future__ import annotations

import argparse
import base64
import secrets
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import yaml

from bench.matrix_setup import DATABASE, PASSWORD, USER, pgbench_command, wait_port
from bench.report import publish
from proxy.auth.scram import make_verifier
from proxy.localpg.cluster import LocalCluster, free_port

ROWS = 20_000
HEADING = "Column encryption cost"
TABLES = ("plain_accounts", "sealed_accounts")
SCHEMA = """
CREATE TABLE plain_accounts (aid int PRIMARY KEY, tenant_id int NOT NULL, acct int,
                             secret text);
CREATE TABLE sealed_accounts (aid int PRIMARY KEY, tenant_id int NOT NULL, acct bytea,
                              secret bytea);
CREATE UNIQUE INDEX ON plain_accounts (tenant_id, acct);
CREATE UNIQUE INDEX ON sealed_accounts (tenant_id, acct);
CREATE TABLE plain_history (tenant_id int NOT NULL, acct int, secret text);
CREATE TABLE sealed_history (tenant_id int NOT NULL, acct bytea, secret bytea);
"""
WORKLOADS = {
    "select by key": "\\set aid random(1, {rows})\n"
                     "SELECT acct, secret FROM {kind}_accounts WHERE aid = :aid;\n",
    "select by encrypted value": "\\set aid random(1, {rows})\n"
                                 "SELECT aid, secret FROM {kind}_accounts WHERE acct = :aid;\n",
    "insert": "\\set aid random(1, 1000000000)\n"
              "INSERT INTO {kind}_history (acct, secret) VALUES "
              "(:aid, 'a secret of about forty characters here');\n",
}


def rules() -> dict[str, object]:
    tables = {f"{k}_{t}": {"scope": "tenant"} for k in ("plain", "sealed")
              for t in ("accounts", "history")}
    columns = {}
    for table in ("sealed_accounts", "sealed_history"):
        columns[f"{table}.acct"] = {"mode": "deterministic", "type": "integer"}
        columns[f"{table}.secret"] = {"mode": "randomized", "type": "text"}
    return {"version": 1, "tenant": {"column": "tenant_id", "type": "integer"},
            "tables": tables, "users": {USER: {"identity": "bound", "tenant": 1}},
            "encryption": {"master_key": base64.b64encode(secrets.token_bytes(32)).decode(),
                           "columns": columns}}


def start_proxy(cluster: LocalCluster, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    key_store = f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{cluster.port}/{DATABASE}"
    rules_path = workdir / "rules.yaml"
    rules_path.write_text(yaml.safe_dump(rules()))
    config = {
        "listen": f"127.0.0.1:{port}",
        "upstream": {"host": "127.0.0.1", "port": cluster.port, "sslmode": "disable",
                     "password": PASSWORD},
        "auth": {"users": {USER: str(make_verifier(PASSWORD))}},
        "rules": str(rules_path),
        "key_store": {"url": key_store},
        "workers": 1,
    }
    path = workdir / "proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen([sys.executable, "-m", "proxy.cli.main", "run", "--config",
                             str(path), "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=(workdir / "proxy.log").open("wb"))
    wait_port(port, proc)
    return proc, port


def load(port: int) -> None:
    """The same rows in both tables, written through the proxy (so sealed where asked)."""
    with psycopg.connect(host="127.0.0.1", port=port, user=USER, password=PASSWORD,
                         dbname=DATABASE, autocommit=True) as conn:
        for table in TABLES:
            with conn.cursor() as cur, conn.transaction():
                cur.executemany(f"INSERT INTO {table} (aid, acct, secret) VALUES (%s, %s, %s)",
                                [(i, i, f"secret number {i:08d}") for i in range(1, ROWS + 1)])


def pgbench(port: int, script: Path, protocol: str, clients: int, seconds: int) -> float:
    cmd, env = pgbench_command(port, "-n", "-f", str(script), "-M", protocol, "-c",
                               str(clients), "-j", "2", "-T", str(seconds))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"pgbench failed: {out.stderr[-800:]}")
    for line in out.stdout.splitlines():
        if line.startswith("tps = "):
            return float(line.split()[2])
    raise RuntimeError(f"no tps in pgbench output: {out.stdout[-400:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--write", help="put the section into this Markdown file")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="tp-enc-bench-"))
    cluster = LocalCluster().start()
    proc = None
    try:
        cluster.psql(f"CREATE ROLE {USER} LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
        cluster.psql(f"CREATE DATABASE {DATABASE} OWNER {USER}")
        cluster.psql(SCHEMA, database=DATABASE)
        proc, port = start_proxy(cluster, workdir)
        load(port)
        cluster.psql("VACUUM ANALYZE", database=DATABASE)
        results: dict[tuple[str, str, str], list[float]] = {}
        for repeat in range(args.repeat):
            for name, body in WORKLOADS.items():
                for protocol in ("simple", "prepared"):
                    # Alternate which table goes first, so neither always runs warmer.
                    kinds = ("plain", "sealed") if repeat % 2 == 0 else ("sealed", "plain")
                    for kind in kinds:
                        script = workdir / f"{kind}-{name.replace(' ', '_')}.sql"
                        script.write_text(body.format(kind=kind, rows=ROWS))
                        tps = pgbench(port, script, protocol, args.clients, args.seconds)
                        results.setdefault((name, protocol, kind), []).append(tps)
                        print(f"{name:26} {protocol:8} {kind:6} {tps:9.0f} tps", flush=True)
        lines = [f"## {HEADING}", "",
                 f"`python -m bench.encryption_cost --seconds {args.seconds} --clients "
                 f"{args.clients} --repeat {args.repeat}`: pgbench `-c {args.clients} -j 2 "
                 f"-T {args.seconds}`, median of {args.repeat} runs, through one proxy "
                 "worker with isolation on; the same table shape and data unencrypted "
                 f"(`plain`) and encrypted (`sealed`: deterministic integer + randomized "
                 f"text), {ROWS:,} rows, measured in the same run. PostgreSQL, pgbench and "
                 "the proxy share the machine's 2 cores.", "",
                 "| workload | protocol | plain TPS | encrypted TPS | ratio |",
                 "|---|---|---:|---:|---:|"]
        for name in WORKLOADS:
            for protocol in ("simple", "prepared"):
                plain = statistics.median(results[(name, protocol, "plain")])
                sealed = statistics.median(results[(name, protocol, "sealed")])
                lines.append(f"| {name} | {protocol} | {plain:,.0f} | {sealed:,.0f} | "
                             f"{sealed / plain:.2f}x |")
        publish("\n".join(lines) + "\n", args.write, [HEADING])
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        cluster.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
