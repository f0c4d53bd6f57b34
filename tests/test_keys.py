"""Key management against a real PostgreSQL: the master key, the key store, the
running proxy's key ring and the ``tenant-proxy keys`` commands."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from proxy.config.settings import UpstreamSettings, settings_from_document
from proxy.config.yamlsource import parse_yaml
from proxy.crypto import cipher
from proxy.crypto.cipher import DataKey, KeyUnavailable
from proxy.crypto.keyring import APPLICATION_NAME, StoreKeyRing
from proxy.crypto.keystore import TABLE, KeyStore
from proxy.crypto.master import MasterKey
from proxy.localpg.cluster import free_port
from proxy.policy.rules import Rules, load_rules
from tests.harness import Database, recreate_database

KEYS_DB = "tenant_proxy_keys_test"
MASTER = os.urandom(32)
SECRET = "public.secrets.secret"  # randomized
EMAIL = "public.secrets.email"  # deterministic
PLAIN = "public.nopk.secret"  # randomized, in a table without a primary key

RULES = """\
version: 1
tenant: {{column: tenant_id, type: text}}
tables:
  public.secrets: {{scope: tenant}}
  public.nopk: {{scope: tenant}}
encryption:
  master_key: {{file: {master}}}
  key_refresh: 0.3
  columns:
    public.secrets.secret: {{mode: randomized, type: text}}
    public.secrets.email: {{mode: deterministic, type: text}}
    public.nopk.secret: {{mode: randomized, type: text}}
"""


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def keys_db(db: Database) -> Iterator[str]:
    """A database of its own, so the key table here is nobody else's."""
    run(recreate_database(db, KEYS_DB))
    yield db.dsn(db.superuser, KEYS_DB)
    run(recreate_database(db, KEYS_DB, drop_only=True))


@pytest.fixture
def dsn(keys_db: str) -> str:
    """A fresh key store and fresh tables for every test."""
    async def reset() -> None:
        conn = await asyncpg.connect(keys_db)
        try:
            await conn.execute("DROP SCHEMA IF EXISTS tenant_proxy CASCADE; "
                               "DROP TABLE IF EXISTS secrets, nopk")
            await conn.execute(
                "CREATE TABLE secrets (id int PRIMARY KEY, tenant_id text NOT NULL, "
                "secret bytea, email bytea, note text); "
                "CREATE TABLE nopk (tenant_id text NOT NULL, secret bytea)")
        finally:
            await conn.close()

    run(reset())
    return keys_db


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    master = tmp_path / "master.key"
    master.write_text(base64.b64encode(MASTER).decode())
    path = tmp_path / "rules.yaml"
    path.write_text(RULES.format(master=master))
    return path


@pytest.fixture
def rules(rules_file: Path) -> Rules:
    return load_rules(rules_file)


@pytest.fixture
def rings() -> Iterator[Callable[..., StoreKeyRing]]:
    made: list[StoreKeyRing] = []

    def make(dsn: str, master: bytes = MASTER, **kwargs: Any) -> StoreKeyRing:
        ring = StoreKeyRing(dsn, MasterKey(master), **kwargs)
        made.append(ring)
        return ring

    yield make
    for ring in made:
        ring.close()


async def _store_call(dsn: str, op: str, *args: Any) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        store = KeyStore(conn, MasterKey(MASTER))
        await store.ensure_schema()
        return await getattr(store, op)(*args)
    finally:
        await conn.close()


def store(dsn: str, op: str, *args: Any) -> Any:
    return run(_store_call(dsn, op, *args))


def wait_for(check: Callable[[], bool], timeout: float = 2.0) -> float:
    """Seconds until ``check`` held; fails the test after ``timeout``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            pytest.fail(f"not within {timeout}s")
        time.sleep(0.01)
    return time.monotonic() - start


# ---------------------------------------------------------------------------- master key

def test_master_key_wraps_bound_to_tenant_and_version() -> None:
    master = MasterKey(MASTER)
    material = os.urandom(32)
    wrapped = master.wrap("acme", 3, material)
    assert master.unwrap("acme", 3, wrapped) == material
    assert material not in wrapped
    assert master.wrap("acme", 3, material) != wrapped  # random nonce
    for tenant, version in (("globex", 3), ("acme", 2), ("acme ", 3)):
        with pytest.raises(KeyUnavailable, match=f"tenant {tenant}"):
            master.unwrap(tenant, version, wrapped)
    flipped = bytearray(wrapped)
    flipped[20] ^= 1
    with pytest.raises(KeyUnavailable, match="does not unwrap"):
        master.unwrap("acme", 3, bytes(flipped))
    with pytest.raises(KeyUnavailable, match="not a key wrapped"):
        master.unwrap("acme", 3, wrapped[:10])
    with pytest.raises(KeyUnavailable):
        MasterKey(os.urandom(32)).unwrap("acme", 3, wrapped)
    with pytest.raises(ValueError):
        MasterKey(b"short")


# ---------------------------------------------------------------------------- key store

def test_store_schema_created_once_and_concurrently(dsn: str) -> None:
    async def go() -> None:
        conns = [await asyncpg.connect(dsn) for _ in range(3)]
        try:
            await asyncio.gather(*(KeyStore(c, MasterKey(MASTER)).ensure_schema()
                                   for c in conns))
            await KeyStore(conns[0], MasterKey(MASTER)).ensure_schema()  # idempotent
            columns = {r["column_name"]: (r["data_type"], r["is_nullable"])
                       for r in await conns[0].fetch(
                           "SELECT column_name, data_type, is_nullable FROM "
                           "information_schema.columns WHERE table_schema = 'tenant_proxy' "
                           "AND table_name = 'data_keys'")}
            assert columns == {
                "tenant": ("text", "NO"), "version": ("integer", "NO"),
                "wrapped": ("bytea", "YES"),
                "created_at": ("timestamp with time zone", "NO"),
                "shredded_at": ("timestamp with time zone", "YES")}
            key = await conns[0].fetchval(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid = 'tenant_proxy.data_keys'::regclass AND contype = 'p'")
            assert key == "PRIMARY KEY (tenant, version)"
        finally:
            for c in conns:
                await c.close()

    run(go())


def test_store_versions_never_reused_and_keys_only_stored_wrapped(dsn: str) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            s = KeyStore(conn, MasterKey(MASTER))
            await s.ensure_schema()
            first = await s.current("acme")
            assert (await s.current("acme")).material == first.material
            second = await s.rotate("acme")
            assert (first.version, second.version) == (1, 2)
            assert await s.shred("acme") == 2
            assert await s.shred("acme") == 0
            fresh = await s.current("acme")
            assert fresh.version == 3
            rows = await s.rows("acme")
            assert [(r.version, r.shredded, r.shredded_at is not None) for r in rows] == \
                [(1, True, True), (2, True, True), (3, False, False)]
            stored = await conn.fetch(f"SELECT wrapped FROM {TABLE}")
            assert all(fresh.material not in (r["wrapped"] or b"") for r in stored)
            # A wrapped key copied to another tenant's row does not unwrap there.
            await s.current("globex")
            await conn.execute(f"UPDATE {TABLE} SET wrapped = (SELECT wrapped FROM {TABLE} "
                               "WHERE tenant = 'acme' AND version = 3) WHERE tenant = 'globex'")
            with pytest.raises(KeyUnavailable, match="tenant globex"):
                await s.current("globex")
        finally:
            await conn.close()

    run(go())


def test_store_first_key_race_between_connections(dsn: str) -> None:
    async def go() -> None:
        conns = [await asyncpg.connect(dsn) for _ in range(4)]
        try:
            stores = [KeyStore(c, MasterKey(MASTER)) for c in conns]
            await stores[0].ensure_schema()
            for tenant in (f"race{i}" for i in range(10)):
                keys = await asyncio.gather(*(s.current(tenant) for s in stores))
                assert {(k.version, k.material) for k in keys} == {(1, keys[0].material)}
            assert await conns[0].fetchval(f"SELECT count(*) FROM {TABLE}") == 10
        finally:
            for c in conns:
                await c.close()

    run(go())


# ---------------------------------------------------------------------------- key ring

def test_ring_first_use_race_two_rings_same_key(dsn: str, rings: Any) -> None:
    a, b = rings(dsn), rings(dsn)
    assert a.wait_ready(5) and b.wait_ready(5)
    results: dict[tuple[str, int], DataKey] = {}
    barrier = threading.Barrier(4)

    def use(ring: StoreKeyRing, index: int) -> None:
        barrier.wait()
        for i in range(8):
            results[f"t{i}", index] = ring.current(f"t{i}")

    threads = [threading.Thread(target=use, args=(ring, i))
               for i, ring in enumerate((a, b, a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 32
    for i in range(8):
        keys = {results[f"t{i}", n] for n in range(4)}
        assert len(keys) == 1, f"tenant t{i} got {len(keys)} different keys"
        (key,) = keys
        assert key.version == 1
    rows = store(dsn, "rows")
    assert len(rows) == 8


def test_ring_rotation_keeps_old_versions_readable(dsn: str, rings: Any) -> None:
    ring = rings(dsn, refresh=60)
    old = ring.current("acme")
    sealed = cipher.encrypt(old, "randomized", SECRET, b"before rotation")
    new = store(dsn, "rotate", "acme")
    wait_for(lambda: ring.current("acme").version == new.version)
    assert ring.current("acme").material == new.material
    assert [k.version for k in ring.live("acme")] == [2, 1]
    assert cipher.decrypt(ring.get("acme", 1), "randomized", SECRET, sealed) == \
        b"before rotation"
    assert cipher.key_version(cipher.encrypt(ring.current("acme"), "randomized", SECRET,
                                             b"x")) == 2


def test_ring_shred_one_tenant_only(dsn: str, rings: Any) -> None:
    ring = rings(dsn, refresh=60)
    acme, globex = ring.current("acme"), ring.current("globex")
    sealed = cipher.encrypt(globex, "deterministic", EMAIL, b"g@example.com")
    assert store(dsn, "shred", "acme") == 1
    wait_for(lambda: ring.get("acme", acme.version) is None)
    assert ring.live("acme") == []
    assert [k.version for k in ring.live("globex")] == [1]
    assert cipher.decrypt(ring.get("globex", 1), "deterministic", EMAIL, sealed) == \
        b"g@example.com"
    fresh = ring.current("acme")
    assert fresh.version == 2 and fresh.material != acme.material
    assert ring.get("acme", 1) is None  # old values stay unreadable
    rows = {(r.tenant, r.version): r for r in store(dsn, "rows")}
    assert rows["acme", 1].shredded and rows["acme", 1].shredded_at is not None
    assert not rows["acme", 2].shredded and not rows["globex", 1].shredded


def test_ring_notify_reaches_running_ring_quickly(dsn: str, rings: Any) -> None:
    ring = rings(dsn, refresh=300)  # only a notification can explain a fast update
    assert ring.wait_ready(5)
    ring.current("acme")
    store(dsn, "rotate", "acme")
    assert wait_for(lambda: ring.current("acme").version == 2) < 2
    store(dsn, "current", "newcomer")  # created by another process
    assert wait_for(lambda: [k.version for k in ring.live("newcomer")] == [1]) < 2
    store(dsn, "shred", "acme")
    assert wait_for(lambda: ring.live("acme") == []) < 2


def test_ring_full_reload_without_notifications(dsn: str, rings: Any) -> None:
    ring = rings(dsn, refresh=0.2)
    ring.current("acme")

    async def silent_rotate() -> None:  # as if the notification were lost
        conn = await asyncpg.connect(dsn)
        try:
            key = DataKey.generate("acme", 2)
            await conn.execute(f"INSERT INTO {TABLE} (tenant, version, wrapped) "
                               "VALUES ('acme', 2, $1)",
                               MasterKey(MASTER).wrap("acme", 2, key.material))
        finally:
            await conn.close()

    run(silent_rotate())
    wait_for(lambda: ring.current("acme").version == 2, timeout=3)


def test_ring_reconnects_after_losing_its_connection(dsn: str, rings: Any) -> None:
    ring = rings(dsn, refresh=0.3)
    ring.current("acme")

    async def terminate() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            return len(await conn.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = $1", APPLICATION_NAME))
        finally:
            await conn.close()

    assert run(terminate()) == 1
    store(dsn, "rotate", "acme")
    wait_for(lambda: ring.current("acme").version == 2, timeout=3)
    assert run(terminate()) == 1  # connected again (and listening)


def test_ring_get_unknown_version_reloads_once(dsn: str, rings: Any) -> None:
    ring = rings(dsn, refresh=300)
    ring.current("acme")
    # Written by another proxy that rotated; the notification is not awaited here.
    new = store(dsn, "rotate", "acme")
    key = ring.get("acme", 2)
    assert key is not None and key.material == new.material
    assert ring.get("acme", 99) is None
    assert ring.get("never-seen", 1) is None


def test_ring_prefetch_then_current_from_memory(dsn: str, rings: Any) -> None:
    ring = rings(dsn)
    assert run(ring.prefetch("acme")) is True
    assert [r.tenant for r in store(dsn, "rows")] == ["acme"]
    start = time.monotonic()
    for _ in range(1000):
        ring.current("acme")
    assert time.monotonic() - start < 0.5


def test_ring_unreachable_store_raises_key_unavailable(rings: Any) -> None:
    ring = rings(f"postgresql://nobody:x@127.0.0.1:{free_port()}/none", timeout=0.5,
                 refresh=0.2)
    with pytest.raises(KeyUnavailable, match="tenant acme"):
        ring.current("acme")
    assert run(ring.prefetch("acme")) is False
    for _ in range(2):  # the second is not reloaded again, but not guessed either
        with pytest.raises(KeyUnavailable, match="tenant acme"):
            ring.get("acme", 1)
    with pytest.raises(KeyUnavailable):
        ring.live("acme")
    assert not ring.wait_ready(0.1)


def test_ring_wrong_master_key_never_replaces_keys(dsn: str, rings: Any) -> None:
    good = rings(dsn)
    good.current("acme")
    bad = rings(dsn, master=os.urandom(32))
    with pytest.raises(KeyUnavailable, match="does not unwrap"):
        bad.current("acme")
    with pytest.raises(KeyUnavailable):
        bad.get("acme", 1)
    assert [(r.tenant, r.version) for r in store(dsn, "rows")] == [("acme", 1)]


# ---------------------------------------------------------------------------- reencrypt

def _fill(dsn: str, rows: int, tenants: list[str]) -> dict[int, tuple[str, str, str]]:
    """Rows sealed with each tenant's current key; returns id -> (tenant, secret, email)."""
    expected = {i: (tenants[i % len(tenants)], f"secret {i} ü", f"user{i % 50}@example.com")
                for i in range(rows)}

    async def go() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            s = KeyStore(conn, MasterKey(MASTER))
            await s.ensure_schema()
            keys = {t: await s.current(t) for t in tenants}
            await conn.executemany(
                "INSERT INTO secrets (id, tenant_id, secret, email) VALUES ($1, $2, $3, $4)",
                [(i, t, cipher.encrypt(keys[t], "randomized", SECRET, sec.encode()),
                  cipher.encrypt(keys[t], "deterministic", EMAIL, mail.encode()))
                 for i, (t, sec, mail) in expected.items()])
            await conn.executemany(
                "INSERT INTO nopk (tenant_id, secret) VALUES ($1, $2)",
                [(t, cipher.encrypt(keys[t], "randomized", PLAIN, sec.encode()))
                 for t, sec, _ in expected.values()])
            await conn.execute("ANALYZE secrets; ANALYZE nopk")
        finally:
            await conn.close()

    run(go())
    return expected


def _contents(dsn: str) -> tuple[dict[int, tuple[str, int, str, int, str]], list[tuple[str, int]]]:
    """id -> (tenant, secret version, secret, email version, email), and nopk's (tenant,
    version) pairs, all decrypted with the store's keys."""
    async def go() -> Any:
        conn = await asyncpg.connect(dsn)
        try:
            s = KeyStore(conn, MasterKey(MASTER))
            keys = {(r.tenant, r.version): s.unwrap(r) for r in await s.rows()
                    if not r.shredded}

            def open_(tenant: str, value: bytes, mode: str, domain: str) -> tuple[int, str]:
                version = cipher.key_version(value)
                return version, cipher.decrypt(keys[tenant, version], mode, domain,
                                               value).decode()

            out = {}
            for r in await conn.fetch("SELECT id, tenant_id, secret, email FROM secrets"):
                out[r["id"]] = (r["tenant_id"],
                                *open_(r["tenant_id"], r["secret"], "randomized", SECRET),
                                *open_(r["tenant_id"], r["email"], "deterministic", EMAIL))
            plain = [(r["tenant_id"], open_(r["tenant_id"], r["secret"], "randomized",
                                            PLAIN)[0])
                     for r in await conn.fetch("SELECT tenant_id, secret FROM nopk")]
            return out, plain
        finally:
            await conn.close()

    return run(go())


def _reencrypt(dsn: str, rules: Rules, **kwargs: Any) -> Any:
    from proxy.cli.keys import Reencryptor

    async def go() -> Any:
        conn = await asyncpg.connect(dsn)
        try:
            return await Reencryptor(conn, rules, out=open(os.devnull, "w"), **kwargs).run()
        finally:
            await conn.close()

    return run(go())


def test_reencrypt_under_concurrent_writes_loses_nothing(dsn: str, rules: Rules) -> None:
    import psycopg

    tenants = ["acme", "globex", "initech"]
    expected = _fill(dsn, 3000, tenants)
    current = {t: store(dsn, "rotate", t) for t in tenants}
    stop = threading.Event()
    writes = {"secret": 0, "note": 0}
    lock = threading.Lock()

    def writer() -> None:
        rng = random.Random(7)
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not stop.is_set():
                i = rng.randrange(len(expected))
                tenant, _, mail = expected[i]
                if rng.random() < 0.7:
                    text = f"rewritten {i} {rng.random()}"
                    sealed = cipher.encrypt(current[tenant], "randomized", SECRET,
                                            text.encode())
                    conn.execute("UPDATE secrets SET secret = %s WHERE id = %s", (sealed, i))
                    with lock:
                        expected[i] = (tenant, text, mail)
                    writes["secret"] += 1
                else:  # moves the row without touching its encrypted values
                    conn.execute("UPDATE secrets SET note = %s WHERE id = %s", (str(i), i))
                    writes["note"] += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.2)
        counts = _reencrypt(dsn, rules, batch=50)
    finally:
        stop.set()
        thread.join(10)
    assert writes["secret"] > 50 and writes["note"] > 20, writes
    assert counts.complete and counts.values_unreadable == 0 and counts.values_corrupt == 0
    assert counts.rows_rewritten + counts.rows_changed <= counts.rows_scanned
    assert counts.rows_rewritten > 1000
    contents, plain = _contents(dsn)
    assert len(contents) == len(expected)
    wrong = {i for i, (tenant, sec, mail) in expected.items()
             if contents[i] != (tenant, current[tenant].version, sec,
                                current[tenant].version, mail)}
    assert not wrong, f"{len(wrong)} rows lost a write or kept an old key, e.g. " \
        f"{[(expected[i], contents[i]) for i in sorted(wrong)[:3]]}"
    assert {version for tenant, version in plain} == {2}
    # Idempotent: a second run finds nothing to do.
    again = _reencrypt(dsn, rules)
    assert (again.rows_rewritten, again.rows_changed) == (0, 0)


def test_reencrypt_leaves_rows_the_application_changed(dsn: str, rules: Rules) -> None:
    """The compare-and-swap, deterministically: the 'application' rewrites rows between
    reencrypt reading them and updating them. Rows where it wrote only the secret still
    get their email re-encrypted (read again); rows where it wrote both are left alone."""
    from proxy.cli.keys import Reencryptor

    expected = _fill(dsn, 30, ["acme"])
    new = store(dsn, "rotate", "acme")
    interfered: dict[int, str] = {}

    class Interfering(Reencryptor):
        async def _row(self, table: Any, relation: str, row: Any) -> None:
            i = row["k0"] if table.name == "public.secrets" else None
            if i is not None and i % 3 != 2 and i not in interfered:
                interfered[i] = "secret" if i % 3 == 0 else "both"
                await self.conn.execute(
                    "UPDATE secrets SET secret = $1, email = coalesce($2, email) WHERE id = $3",
                    cipher.encrypt(new, "randomized", SECRET, b"app wrote this"),
                    cipher.encrypt(new, "deterministic", EMAIL, b"app@example.com")
                    if i % 3 == 1 else None, i)
            await super()._row(table, relation, row)

    async def go() -> Any:
        conn = await asyncpg.connect(dsn)
        try:
            return await Interfering(conn, rules, out=open(os.devnull, "w")).run()
        finally:
            await conn.close()

    counts = run(go())
    assert sorted(interfered.values()).count("both") == 10 and len(interfered) == 20
    assert counts.rows_changed == 10
    assert counts.rows_rewritten == 20 + 30  # secrets (10 untouched + 10 email-only) + nopk
    contents, _ = _contents(dsn)
    for i, (tenant, sec, mail) in expected.items():
        kind = interfered.get(i)
        want_secret = "app wrote this" if kind else sec
        want_email = "app@example.com" if kind == "both" else mail
        assert contents[i] == (tenant, 2, want_secret, 2, want_email), (i, kind)


def test_reencrypt_counts_unreadable_values_of_shredded_tenants(dsn: str, rules: Rules
                                                                ) -> None:
    _fill(dsn, 40, ["acme", "globex"])
    store(dsn, "rotate", "globex")
    store(dsn, "shred", "acme")

    async def corrupt() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("UPDATE secrets SET email = 'not a ciphertext' WHERE id = 1")
        finally:
            await conn.close()

    run(corrupt())
    counts = _reencrypt(dsn, rules)
    # acme: 20 rows x 2 values in secrets + 20 in nopk; globex's row 1 email is corrupt.
    assert counts.values_unreadable == 60
    assert counts.values_corrupt == 1
    assert counts.rows_rewritten == 20 + 20
    versions = {c[1] for i, c in _contents_of_tenant(dsn, "globex").items()}
    assert versions == {2}


def _contents_of_tenant(dsn: str, tenant: str) -> dict[int, tuple[str, int]]:
    async def go() -> dict[int, tuple[str, int]]:
        conn = await asyncpg.connect(dsn)
        try:
            return {r["id"]: (r["tenant_id"], cipher.key_version(r["secret"]))
                    for r in await conn.fetch("SELECT id, tenant_id, secret FROM secrets "
                                              "WHERE tenant_id = $1", tenant)}
        finally:
            await conn.close()

    return run(go())


# ---------------------------------------------------------------------------- the CLI

def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy.cli.main", "keys", *args],
                          capture_output=True, text=True, input=stdin, timeout=120,
                          check=False)


def test_cli_generate_master() -> None:
    first, second = cli("generate-master"), cli("generate-master")
    assert first.returncode == 0
    assert len(base64.b64decode(first.stdout.strip(), validate=True)) == 32
    assert first.stdout != second.stdout


def test_cli_rotate_list_shred(dsn: str, rules_file: Path) -> None:
    store(dsn, "current", "acme")
    store(dsn, "current", "globex")
    common = ("--rules", str(rules_file), "--dsn", dsn)

    rotated = cli("rotate", "--tenant", "acme", *common)
    assert rotated.returncode == 0, rotated.stderr
    assert "tenant acme: now version 2" in rotated.stdout
    everyone = cli("rotate", "--all", *common)
    assert everyone.returncode == 0, everyone.stderr
    assert "tenant acme: now version 3" in everyone.stdout
    assert "tenant globex: now version 2" in everyone.stdout
    assert cli("rotate", *common).returncode == 2  # --tenant or --all is required

    listing = cli("list", *common)
    assert listing.returncode == 0, listing.stderr
    lines = [line.split() for line in listing.stdout.splitlines()]
    assert lines[0][:3] == ["TENANT", "VERSION", "STATE"]
    states = {(line[0], line[1]): line[2] for line in lines[1:-1]}
    assert states == {("acme", "1"): "old", ("acme", "2"): "old", ("acme", "3"): "current",
                      ("globex", "1"): "old", ("globex", "2"): "current"}
    assert listing.stdout.splitlines()[-1] == "2 tenants, 5 key versions"

    refused = cli("shred", "--tenant", "acme", *common, stdin="acme\n")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert not any(r.shredded for r in store(dsn, "rows", "acme"))
    shredded = cli("shred", "--tenant", "acme", "--yes", *common)
    assert shredded.returncode == 0, shredded.stderr
    assert "tenant acme: shredded 3 key versions" in shredded.stdout
    after = cli("list", "--tenant", "acme", *common)
    assert [line.split()[2] for line in after.stdout.splitlines()[1:-1]] == ["shredded"] * 3
    assert all(r.shredded for r in store(dsn, "rows", "acme"))
    assert not any(r.shredded for r in store(dsn, "rows", "globex"))


def test_cli_errors_are_one_line(dsn: str, rules_file: Path, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.yaml"
    other = tmp_path / "other.key"
    other.write_text(base64.b64encode(os.urandom(32)).decode())
    wrong.write_text(RULES.format(master=other))
    store(dsn, "current", "acme")
    listing = cli("list", "--rules", str(wrong), "--dsn", dsn)
    assert listing.returncode == 1 and "WRONG MASTER KEY" in listing.stdout
    rotated = cli("reencrypt", "--rules", str(wrong), "--dsn", dsn)
    assert rotated.returncode == 1 and "does not unwrap" in rotated.stderr
    unreachable = cli("list", "--rules", str(rules_file), "--dsn",
                      f"postgresql://x:y@127.0.0.1:{free_port()}/none")
    assert unreachable.returncode == 2 and "cannot connect" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr + rotated.stderr


def test_cli_reencrypt_resumes_after_interruption(dsn: str, rules_file: Path,
                                                  rules: Rules) -> None:
    expected = _fill(dsn, 2000, ["acme", "globex"])
    store(dsn, "rotate", "acme")
    store(dsn, "rotate", "globex")
    common = ("--rules", str(rules_file), "--dsn", dsn)

    first = cli("reencrypt", "--batch", "100", "--max-batches", "1", *common)
    assert first.returncode == 0, first.stderr
    assert "stopped early" in first.stdout
    checkpoint = store_fetch(dsn, "SELECT relation, resume_at FROM "
                                  "tenant_proxy.reencrypt_progress")
    assert len(checkpoint) == 1 and checkpoint[0]["relation"] == "public.nopk"
    assert checkpoint[0]["resume_at"][0] > 0
    _, plain = _contents(dsn)
    moved = sum(1 for _, v in plain if v == 2)
    assert 0 < moved < len(plain)  # one batch done, not everything

    second = cli("reencrypt", "--batch", "500", *common)
    assert second.returncode == 0, second.stderr
    assert f"resuming at page {checkpoint[0]['resume_at'][0]}" in second.stderr
    assert "%" in second.stderr  # the progress lines (stderr is not a terminal here)
    rewritten = int(second.stdout.split("rewritten: ")[1].split(",")[0])
    # Resumed: the rows of the first batch were not rescanned.
    assert rewritten == len(plain) - moved + len(expected)
    assert store_fetch(dsn, "SELECT * FROM tenant_proxy.reencrypt_progress") == []
    contents, plain = _contents(dsn)
    assert {v for _, v in plain} == {2}
    assert all(contents[i] == (t, 2, s, 2, m) for i, (t, s, m) in expected.items())


def store_fetch(dsn: str, sql: str) -> list[Any]:
    async def go() -> list[Any]:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetch(sql)
        finally:
            await conn.close()

    return run(go())


# ---------------------------------------------------------------------------- settings

def test_settings_key_store() -> None:
    doc = parse_yaml("upstream:\n  url: postgresql://app:pw@db.internal:5433/shop?"
                     "sslmode=require\nkey_store:\n  user: keys\n  password: p@ss/word\n",
                     "proxy.yaml")
    settings = settings_from_document(doc)
    assert settings.key_store is not None
    assert "p@ss" not in repr(settings.key_store)
    assert settings.key_store.dsn(settings.upstream) == \
        "postgresql://keys:p%40ss%2Fword@db.internal:5433/shop?sslmode=require"
    url = settings_from_document(parse_yaml("key_store:\n  url: postgresql://k@h/d\n", "p"))
    assert url.key_store is not None
    assert url.key_store.dsn(UpstreamSettings()) == "postgresql://k@h/d"
    with pytest.raises(Exception, match=r"key_store\.url"):
        settings_from_document(parse_yaml("key_store:\n  url: mysql://x\n", "p"))
    assert settings_from_document(parse_yaml("listen: 127.0.0.1:1\n", "p")).key_store is None
