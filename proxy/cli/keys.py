"""``tenant-proxy keys``: the master key, rotation, re-encryption and crypto-shredding.

Every command but ``generate-master`` works on the key store in the database
(``--dsn``: an admin or migration role that can read and write the encrypted
tables and the ``tenant_proxy`` schema) with the master key and encrypted
columns of a rules file (``--rules``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, TypeVar

from proxy.config.yamlsource import ConfigError
from proxy.crypto import cipher
from proxy.crypto.cipher import DataCorrupted, DataKey, KeyUnavailable
from proxy.crypto.keystore import SCHEMA, TABLE, KeyStore
from proxy.crypto.master import MasterKey
from proxy.policy.rules import EncryptedColumn, Rules, load_rules

if TYPE_CHECKING:
    import asyncpg

T = TypeVar("T")
PROGRESS_TABLE = f"{SCHEMA}.reencrypt_progress"
_PROGRESS_DDL = f"""
CREATE TABLE IF NOT EXISTS {PROGRESS_TABLE} (
    relation text NOT NULL,
    scope text NOT NULL,  -- the tenant given with --tenant, or '' for all
    resume_at tid NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (relation, scope)
)
"""


class KeysError(Exception):
    """A failure to report in one line (exit status 1)."""


def _ident(name: str) -> str:
    """Quote an identifier from the rules file (unquoted there, so folded to lower case)."""
    return '"' + name.lower().replace('"', '""') + '"'


def _relation(qualified: str) -> str:
    return ".".join(_ident(part) for part in qualified.split(".", 1))


# ---------------------------------------------------------------------------- keys and tenants

@dataclass
class Keys:
    """Every readable key, unwrapped once for the run; unknown tenants are looked up
    when first seen (their first key may be newer than the run)."""

    store: KeyStore
    keys: dict[tuple[str, int], DataKey] = field(default_factory=dict)
    current: dict[str, DataKey | None] = field(default_factory=dict)

    async def load(self, tenant: str | None = None) -> None:
        newest: dict[str, tuple[int, bool]] = {}
        for row in await self.store.rows(tenant):
            newest[row.tenant] = (row.version, row.shredded)
            if not row.shredded:
                self.keys[row.tenant, row.version] = self.store.unwrap(row)
        for name, (version, shredded) in newest.items():
            self.current[name] = None if shredded else self.keys[name, version]
        if tenant is not None:
            self.current.setdefault(tenant, None)

    async def current_for(self, tenant: str) -> DataKey | None:
        if tenant not in self.current:
            await self.load(tenant)
        return self.current[tenant]


# ---------------------------------------------------------------------------- progress

class Progress:
    """A ``\\r`` bar on a terminal; a line per ~10% otherwise (logs, CI)."""

    def __init__(self, label: str, total: int, stream: IO[str]) -> None:
        self.label, self.total, self.stream = label, max(total, 1), stream
        self.tty = stream.isatty()
        self.shown = -1

    def update(self, done: int, total: int | None = None) -> None:
        self.total = max(self.total, total or 0, done, 1)
        percent = min(100, done * 100 // self.total)
        if self.tty:
            bar = "#" * (percent // 4) + "-" * (25 - percent // 4)
            self.stream.write(f"\r{self.label} [{bar}] {percent:3d}% {done}/{self.total} pages")
        elif percent // 10 > self.shown // 10 or (percent == 100 and self.shown < 100):
            self.stream.write(f"{self.label}: {percent}% ({done}/{self.total} pages)\n")
        else:
            return
        self.shown = percent
        self.stream.flush()

    def finish(self) -> None:
        if self.tty and self.shown >= 0:
            self.stream.write("\n")
            self.stream.flush()


# ---------------------------------------------------------------------------- reencrypt

@dataclass
class ReencryptCounts:
    rows_scanned: int = 0
    rows_rewritten: int = 0
    #: The row changed between reading and rewriting it: the application wrote it
    #: (with the current key) meanwhile, so it is left alone.
    rows_changed: int = 0
    #: Values whose key was shredded (or never existed): they stay as they are.
    values_unreadable: int = 0
    #: Values that are not tenant-proxy ciphertexts or do not authenticate.
    values_corrupt: int = 0
    complete: bool = True

    def summary(self) -> str:
        text = (f"rows scanned: {self.rows_scanned}, rewritten: {self.rows_rewritten}, "
                f"skipped as changed concurrently: {self.rows_changed}, unreadable values "
                f"(shredded keys): {self.values_unreadable}, corrupt values: "
                f"{self.values_corrupt}")
        return text if self.complete else text + " (stopped early: run again to continue)"


@dataclass
class _Table:
    name: str
    tenant_column: str
    columns: list[EncryptedColumn]
    locator: list[str]  # primary key columns; empty: locate rows by ctid


class Reencryptor:
    """Rewrites values sealed with an older key version than their tenant's current
    one, page range by page range. Each row is one compare-and-swap UPDATE in its
    own transaction: it holds no lock across rows (no deadlocks with the
    application) and changes nothing the application rewrote meanwhile."""

    def __init__(self, conn: asyncpg.Connection, rules: Rules, *, tenant: str | None = None,
                 batch: int = 500, max_batches: int | None = None, restart: bool = False,
                 out: IO[str] = sys.stderr) -> None:
        assert rules.encryption is not None
        self.conn, self.rules, self.tenant = conn, rules, tenant
        self.batch, self.max_batches, self.restart, self.out = batch, max_batches, restart, out
        self.keys = Keys(KeyStore(conn, MasterKey(rules.encryption.master_key)))
        self.counts = ReencryptCounts()
        self.batches = 0

    async def run(self) -> ReencryptCounts:
        await self.keys.store.ensure_schema()
        await self.conn.execute(_PROGRESS_DDL)
        await self._settle()
        await self.keys.load(self.tenant)
        for name in sorted(self.rules.encryption.columns):  # type: ignore[union-attr]
            if not await self._table(await self._describe(name)):
                self.counts.complete = False
                break
        return self.counts

    async def _settle(self) -> None:
        """Wait until running proxies have surely picked up the newest rotation (they
        reload every key_refresh seconds even if a notification was lost), so no
        proxy still writes with a version this run has already passed."""
        refresh = self.rules.encryption.key_refresh  # type: ignore[union-attr]
        age = await self.conn.fetchval(
            f"SELECT extract(epoch FROM now() - max(created_at))::float8 FROM {TABLE} "
            "WHERE version > 1 AND ($1::text IS NULL OR tenant = $1)", self.tenant)
        if age is not None and age < refresh:
            self.out.write(f"waiting {refresh - age:.1f}s for running proxies to load the "
                           "newest keys\n")
            await asyncio.sleep(refresh - age)

    async def _describe(self, name: str) -> _Table:
        rule = self.rules.tables.get(name)
        if rule is None or rule.column is None:
            raise KeysError(f"{name}: encrypted columns need a tenant-scoped table in the rules")
        if await self.conn.fetchval("SELECT to_regclass($1)", _relation(name)) is None:
            raise KeysError(f"{name}: no such table in the database")
        locator = [r["attname"] for r in await self.conn.fetch(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = $1::regclass AND i.indisprimary "
            "ORDER BY array_position(i.indkey::int2[], a.attnum)", _relation(name))]
        columns = self.rules.encryption.columns[name]  # type: ignore[union-attr]
        return _Table(name, rule.column, [columns[c] for c in sorted(columns)], locator)

    async def _table(self, table: _Table) -> bool:
        """One table; False if the run stopped early (--max-batches)."""
        scope = self.tenant or ""
        relation = _relation(table.name)
        start = 0
        if not self.restart:
            resume = await self.conn.fetchval(
                f"SELECT resume_at FROM {PROGRESS_TABLE} WHERE relation = $1 AND scope = $2",
                table.name, scope)
            if resume is not None:
                start = resume[0]
                self.out.write(f"{table.name}: resuming at page {start}\n")
        pages = await self._pages(relation)
        progress = Progress(table.name, pages, self.out)
        if pages:
            progress.update(start, pages)
        select = self._select(table, relation)
        density = await self._density(relation)
        while start < pages:
            if self.max_batches is not None and self.batches >= self.max_batches:
                progress.finish()
                return False
            span = max(1, min(100_000, round(self.batch / density)))
            rows = await self.conn.fetch(select, (start, 0), (start + span, 0),
                                         *([self.tenant] if self.tenant else []))
            for row in rows:
                await self._row(table, relation, row)
            start += span
            self.batches += 1
            if rows:
                density = max(len(rows) / span, 0.01)
            await self.conn.execute(
                f"INSERT INTO {PROGRESS_TABLE} (relation, scope, resume_at) VALUES ($1, $2, $3) "
                "ON CONFLICT (relation, scope) DO UPDATE SET resume_at = excluded.resume_at, "
                "updated_at = now()", table.name, scope, (start, 0))
            pages = await self._pages(relation)  # the table may grow meanwhile
            progress.update(min(start, pages), pages)
        progress.finish()
        await self.conn.execute(f"DELETE FROM {PROGRESS_TABLE} WHERE relation = $1 AND "
                                "scope = $2", table.name, scope)
        return True

    async def _pages(self, relation: str) -> int:
        return int(await self.conn.fetchval(
            "SELECT pg_relation_size($1::regclass) / current_setting('block_size')::int8",
            relation))

    async def _density(self, relation: str) -> float:
        """Rows per page, from the planner's statistics (a guess, corrected per batch)."""
        tuples, pages = await self.conn.fetchrow(
            "SELECT reltuples, relpages FROM pg_class WHERE oid = $1::regclass", relation)
        return max(tuples / pages, 0.01) if tuples > 0 and pages > 0 else 50.0

    def _columns(self, table: _Table, relation: str) -> str:
        wanted = [f"{_ident(c)} AS k{i}" for i, c in enumerate(table.locator)]
        wanted += [f"{_ident(c.column)} AS v{i}" for i, c in enumerate(table.columns)]
        return (f"SELECT ctid, {_ident(table.tenant_column)}::text AS tenant, "
                f"{', '.join(wanted)} FROM {relation}")

    def _select(self, table: _Table, relation: str) -> str:
        # A TID range scan: each batch reads only its pages, in any table size.
        nonnull = " OR ".join(f"{_ident(c.column)} IS NOT NULL" for c in table.columns)
        sql = (f"{self._columns(table, relation)} WHERE ctid >= $1::tid AND ctid < $2::tid "
               f"AND ({nonnull})")
        return sql + (f" AND {_ident(table.tenant_column)}::text = $3" if self.tenant else "")

    async def _row(self, table: _Table, relation: str, row: Any) -> None:
        """Rewrite the row's old values. When the compare-and-swap misses, a table with
        a primary key gets the row read again: the application may have rewritten one
        column (with the current key) while another still holds an old version."""
        self.counts.rows_scanned += 1
        for attempt in range(3):
            changes = await self._changes(table, row, count=attempt == 0)
            if not changes:
                if attempt:
                    self.counts.rows_changed += 1
                return
            status = await self.conn.execute(*self._update(table, relation, row, changes))
            if status.endswith(" 1"):
                self.counts.rows_rewritten += 1
                return
            if not table.locator:
                break  # the row moved; without a key it cannot be found again
            where = " AND ".join(f"{_ident(c)} = ${i + 1}" for i, c in enumerate(table.locator))
            row = await self.conn.fetchrow(f"{self._columns(table, relation)} WHERE {where}",
                                           *(row[f"k{i}"] for i in range(len(table.locator))))
            if row is None:
                break  # deleted meanwhile
        self.counts.rows_changed += 1

    async def _changes(self, table: _Table, row: Any, count: bool
                       ) -> list[tuple[EncryptedColumn, bytes, bytes]]:
        """(column, old value, new value) for each value on an older key version."""
        changes: list[tuple[EncryptedColumn, bytes, bytes]] = []
        try:
            tenant = self.rules.check_tenant(row["tenant"]) if row["tenant"] is not None \
                else None
        except ValueError:
            tenant = None
        current = await self.keys.current_for(tenant) if tenant is not None else None
        unreadable = corrupt = 0
        for i, column in enumerate(table.columns):
            value = row[f"v{i}"]
            if value is None:
                continue
            if tenant is None:
                corrupt += 1
                continue
            try:
                version = cipher.key_version(value)
            except DataCorrupted:
                corrupt += 1
                continue
            if current is not None and version >= current.version:
                continue  # already current (or newer than this run knows)
            old = self.keys.keys.get((tenant, version))
            if current is None or old is None:
                unreadable += 1
                continue
            try:
                plain = cipher.decrypt(old, column.mode, column.domain, value)
            except DataCorrupted:
                corrupt += 1
                continue
            new = cipher.encrypt(current, column.mode, column.domain, plain)
            changes.append((column, value, new))
        if count:
            self.counts.values_unreadable += unreadable
            self.counts.values_corrupt += corrupt
        return changes

    def _update(self, table: _Table, relation: str, row: Any,
                changes: list[tuple[EncryptedColumn, bytes, bytes]]) -> list[Any]:
        args: list[Any] = []

        def param(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        sets = ", ".join(f"{_ident(c.column)} = {param(new)}" for c, _, new in changes)
        where = [f"{_ident(c.column)} = {param(old)}" for c, old, _ in changes]
        if table.locator:
            where += [f"{_ident(c)} = {param(row[f'k{i}'])}"
                      for i, c in enumerate(table.locator)]
        else:
            where.append(f"ctid = {param(row['ctid'])}")
        return [f"UPDATE {relation} SET {sets} WHERE {' AND '.join(where)}", *args]


# ---------------------------------------------------------------------------- commands

def _rules(path: str) -> Rules:
    try:
        rules = load_rules(path)
    except ConfigError as exc:
        raise KeysError(str(exc)) from exc
    if rules.encryption is None:
        raise KeysError(f"{path}: has no encryption section (master_key and columns)")
    return rules


def _tenant(rules: Rules, tenant: str) -> str:
    try:
        return rules.check_tenant(tenant)
    except ValueError as exc:
        raise KeysError(f"--tenant: {exc}") from exc


async def _with_store(args: argparse.Namespace,
                      work: Callable[[asyncpg.Connection, Rules, KeyStore], Awaitable[T]]) -> T:
    import asyncpg

    rules = _rules(args.rules)
    try:
        conn = await asyncpg.connect(args.dsn, timeout=15)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise KeysError(f"cannot connect to the database (--dsn): {exc}") from exc
    try:
        store = KeyStore(conn, MasterKey(rules.encryption.master_key))  # type: ignore[union-attr]
        await store.ensure_schema()
        return await work(conn, rules, store)
    finally:
        await conn.close()


def _run(args: argparse.Namespace,
         work: Callable[[asyncpg.Connection, Rules, KeyStore], Awaitable[int]]) -> int:
    import asyncpg

    try:
        return asyncio.run(_with_store(args, work))
    except (KeysError, KeyUnavailable) as exc:
        print(f"tenant-proxy keys: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, KeysError) else 1
    except asyncpg.PostgresError as exc:
        print(f"tenant-proxy keys: the database refused: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ntenant-proxy keys: interrupted", file=sys.stderr)
        return 130


def cmd_generate_master(args: argparse.Namespace) -> int:
    print(base64.b64encode(os.urandom(32)).decode())
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    async def work(conn: Any, rules: Rules, store: KeyStore) -> int:
        tenant = _tenant(rules, args.tenant) if args.tenant else None
        rows = await store.rows(tenant)
        newest = {r.tenant: r.version for r in rows}
        table = [("TENANT", "VERSION", "STATE", "CREATED", "SHREDDED")]
        bad = 0
        for r in rows:
            if r.shredded:
                state = "shredded"
            else:
                try:
                    store.unwrap(r)
                    state = "current" if r.version == newest[r.tenant] else "old"
                except KeyUnavailable:
                    state, bad = "WRONG MASTER KEY", bad + 1
            table.append((r.tenant, str(r.version), state, f"{r.created_at:%Y-%m-%d %H:%M:%S%z}",
                          f"{r.shredded_at:%Y-%m-%d %H:%M:%S%z}" if r.shredded_at else "-"))
        widths = [max(len(line[i]) for line in table) for i in range(5)]
        for line in table:
            print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
        print(f"{len(newest)} tenants, {len(rows)} key versions")
        if bad:
            print(f"tenant-proxy keys: {bad} key versions do not unwrap with the master key "
                  f"of {args.rules}", file=sys.stderr)
        return 1 if bad else 0

    return _run(args, work)


def cmd_rotate(args: argparse.Namespace) -> int:
    async def work(conn: Any, rules: Rules, store: KeyStore) -> int:
        if args.all:
            keys = await store.rotate_all()
        else:
            keys = [await store.rotate(_tenant(rules, args.tenant))]
        for key in keys:
            print(f"tenant {key.tenant}: now version {key.version}")
        print(f"rotated {len(keys)} tenants; new values use the new versions at once, old "
              "ones stay readable (`tenant-proxy keys reencrypt` rewrites them)")
        return 0

    return _run(args, work)


def cmd_shred(args: argparse.Namespace) -> int:
    rules = None
    try:
        rules = _rules(args.rules)
        tenant = _tenant(rules, args.tenant)
    except KeysError as exc:
        print(f"tenant-proxy keys: {exc}", file=sys.stderr)
        return 2
    if not args.yes:
        if not sys.stdin.isatty():
            print("tenant-proxy keys: shred needs --yes when not run interactively",
                  file=sys.stderr)
            return 2
        answer = input(f"Shred every data key of tenant {tenant}? Its encrypted values "
                       "become unreadable for good.\nType the tenant id to confirm: ")
        if answer.strip() != tenant:
            print("not confirmed; nothing changed", file=sys.stderr)
            return 1

    async def work(conn: Any, rules: Rules, store: KeyStore) -> int:
        count = await store.shred(tenant)
        print(f"tenant {tenant}: shredded {count} key versions; its encrypted values are "
              "now unreadable")
        return 0

    return _run(args, work)


def cmd_reencrypt(args: argparse.Namespace) -> int:
    if args.batch <= 0:
        print("tenant-proxy keys: --batch must be positive", file=sys.stderr)
        return 2

    async def work(conn: Any, rules: Rules, store: KeyStore) -> int:
        tenant = _tenant(rules, args.tenant) if args.tenant else None
        started = time.monotonic()
        counts = await Reencryptor(conn, rules, tenant=tenant, batch=args.batch,
                                   max_batches=args.max_batches, restart=args.restart).run()
        print(f"{counts.summary()} in {time.monotonic() - started:.1f}s")
        return 0

    return _run(args, work)


def add_keys_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    keys = sub.add_parser("keys", help="data keys: rotate, reencrypt, shred")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)

    def command(name: str, help_text: str, func: Callable[[argparse.Namespace], int],
                store: bool = True) -> argparse.ArgumentParser:
        parser = keys_sub.add_parser(name, help=help_text)
        if store:
            parser.add_argument("--rules", required=True,
                                help="rules file (master key and encrypted columns)")
            parser.add_argument("--dsn", required=True,
                                help="postgresql:// URL of a role that can read and write the "
                                "encrypted tables and the tenant_proxy schema")
        parser.set_defaults(func=func)
        return parser

    command("generate-master", "print a new random master key (base64)", cmd_generate_master,
            store=False)
    listing = command("list", "tenants, key versions and their state", cmd_list)
    listing.add_argument("--tenant")
    rotate = command("rotate", "new key versions: new values use them", cmd_rotate)
    which = rotate.add_mutually_exclusive_group(required=True)
    which.add_argument("--tenant")
    which.add_argument("--all", action="store_true", help="every tenant with a readable key")
    reencrypt = command("reencrypt", "rewrite values sealed with older key versions",
                        cmd_reencrypt)
    reencrypt.add_argument("--tenant", help="only this tenant's rows")
    reencrypt.add_argument("--batch", type=int, default=500, help="rows per batch (about)")
    reencrypt.add_argument("--max-batches", type=int,
                           help="stop after this many batches (run again to continue)")
    reencrypt.add_argument("--restart", action="store_true",
                           help="ignore the checkpoint of an interrupted run")
    shred = command("shred", "delete a tenant's data keys (crypto-shredding)", cmd_shred)
    shred.add_argument("--tenant", required=True)
    shred.add_argument("--yes", action="store_true", help="do not ask for confirmation")
