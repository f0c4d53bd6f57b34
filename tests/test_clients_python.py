"""Real Python drivers through the proxy: asyncpg, psycopg 3 and SQLAlchemy 2."""

from __future__ import annotations

import asyncio
import io
import ssl
import time

import asyncpg
import psycopg
import pytest
from sqlalchemy import ForeignKey, String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from tests.certs import CertFiles
from tests.harness import Database, RunningProxy


def test_asyncpg_real_work(proxy: RunningProxy, db: Database) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(proxy.dsn(db))
        try:
            await conn.execute("DROP TABLE IF EXISTS apg_items")
            await conn.execute("CREATE TABLE apg_items (id int PRIMARY KEY, name text, "
                               "price numeric, seen timestamptz)")
            rows = [(i, f"item {i}", i * 1.5, None) for i in range(1, 101)]
            await conn.executemany("INSERT INTO apg_items VALUES ($1, $2, $3, $4)", rows)
            assert await conn.fetchval("SELECT count(*) FROM apg_items") == 100
            stmt = await conn.prepare("SELECT name FROM apg_items WHERE id = $1")
            assert await stmt.fetchval(42) == "item 42"
            assert [r["name"] for r in await stmt.fetch(7)] == ["item 7"]
            # A transaction rolled back (by an error in a savepoint, then an
            # exception) leaves nothing behind.
            with pytest.raises(RuntimeError, match="roll back"):
                async with conn.transaction():
                    await conn.execute("DELETE FROM apg_items WHERE id <= 50")
                    assert await conn.fetchval("SELECT count(*) FROM apg_items") == 50
                    with pytest.raises(asyncpg.UniqueViolationError):
                        async with conn.transaction():
                            await conn.execute("INSERT INTO apg_items (id) VALUES (99)")
                    raise RuntimeError("roll back")
            assert await conn.fetchval("SELECT count(*) FROM apg_items") == 100
            # An error leaves the session usable.
            with pytest.raises(asyncpg.UndefinedTableError):
                await conn.fetch("SELECT * FROM no_such_table")
            assert await conn.fetchval("SELECT 1 + 1") == 2
            # COPY out and in.
            buf = io.BytesIO()
            await conn.copy_from_table("apg_items", output=buf, columns=["id", "name"])
            assert buf.getvalue().count(b"\n") == 100
            await conn.execute("CREATE TEMP TABLE apg_copy (id int, name text)")
            await conn.copy_records_to_table("apg_copy", records=[(1, "a"), (2, "b")])
            assert await conn.fetch("SELECT * FROM apg_copy ORDER BY id") == [(1, "a"), (2, "b")]
            # Binary codecs round-trip through the relay.
            value = await conn.fetchval("SELECT $1::numeric * 2", 21)
            assert value == 42
        finally:
            await conn.close()

    asyncio.run(go())


def test_asyncpg_transaction_rollback(proxy: RunningProxy, db: Database) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(proxy.dsn(db))
        try:
            await conn.execute("CREATE TEMP TABLE t (x int)")
            tr = conn.transaction()
            await tr.start()
            await conn.execute("INSERT INTO t VALUES (1)")
            await tr.rollback()
            assert await conn.fetchval("SELECT count(*) FROM t") == 0
        finally:
            await conn.close()

    asyncio.run(go())


def test_asyncpg_listen_notify(proxy: RunningProxy, db: Database) -> None:
    async def go() -> None:
        listener = await asyncpg.connect(proxy.dsn(db))
        sender = await asyncpg.connect(proxy.dsn(db))
        got: asyncio.Queue[str] = asyncio.Queue()
        try:
            await listener.add_listener("proxy_chan", lambda *a: got.put_nowait(a[3]))
            await sender.execute("NOTIFY proxy_chan, 'hello through the proxy'")
            assert await asyncio.wait_for(got.get(), 5) == "hello through the proxy"
        finally:
            await listener.close()
            await sender.close()

    asyncio.run(go())


def test_asyncpg_cancel_returns_57014_fast(proxy: RunningProxy, db: Database) -> None:
    async def go() -> float:
        conn = await asyncpg.connect(proxy.dsn(db))
        try:
            task = asyncio.create_task(conn.fetch("SELECT pg_sleep(30)"))
            await asyncio.sleep(0.3)
            start = time.monotonic()
            task.cancel()  # asyncpg sends a CancelRequest with the proxy's BackendKeyData
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await conn.fetchval("SELECT 7") == 7
            return time.monotonic() - start
        finally:
            await conn.close()

    assert asyncio.run(go()) < 1.0


def test_asyncpg_wrong_password(proxy: RunningProxy, db: Database) -> None:
    dsn = db.dsn("app", password="wrong", port=proxy.port)
    with pytest.raises(asyncpg.InvalidPasswordError) as info:
        asyncio.run(asyncpg.connect(dsn))
    assert info.value.sqlstate == "28P01"


def test_asyncpg_tls(proxy: RunningProxy, db: Database, certs: CertFiles) -> None:
    ctx = ssl.create_default_context(cafile=str(certs.ca))

    async def go() -> tuple[bool, int]:
        conn = await asyncpg.connect(proxy.dsn(db), ssl=ctx)
        try:
            return conn._transport.get_extra_info("ssl_object") is not None, \
                await conn.fetchval("SELECT 5")
        finally:
            await conn.close()

    assert asyncio.run(go()) == (True, 5)


def test_psycopg_sync(proxy: RunningProxy, db: Database) -> None:
    with psycopg.connect(proxy.dsn(db)) as conn:
        conn.execute("DROP TABLE IF EXISTS pg3_items")
        conn.execute("CREATE TABLE pg3_items (id int PRIMARY KEY, note text)")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO pg3_items VALUES (%s, %s)",
                            [(i, f"n{i}") for i in range(20)])
        conn.commit()
        # Server-side prepared statements (psycopg prepares after 5 executions).
        for i in range(8):
            row = conn.execute("SELECT note FROM pg3_items WHERE id = %s", (i,),
                               prepare=True).fetchone()
            assert row == (f"n{i}",)
        # Binary results.
        with conn.cursor(binary=True) as cur:
            cur.execute("SELECT id, note FROM pg3_items WHERE id = %s", (3,))
            assert cur.fetchone() == (3, "n3")
        # Rollback, and an error that leaves the connection usable.
        conn.execute("DELETE FROM pg3_items")
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM pg3_items").fetchone() == (20,)
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0")
        conn.rollback()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        # COPY in both directions.
        with conn.cursor() as cur:
            with cur.copy("COPY pg3_items (id, note) FROM STDIN") as copy:
                for i in range(100, 110):
                    copy.write_row((i, f"copied {i}"))
            out = io.BytesIO()
            with cur.copy("COPY (SELECT id FROM pg3_items WHERE id >= 100 ORDER BY id) TO STDOUT"
                          ) as copy:
                for chunk in copy:
                    out.write(chunk)
        assert out.getvalue().split() == [str(i).encode() for i in range(100, 110)]
        conn.commit()


def test_psycopg_pipeline_with_error(proxy: RunningProxy, db: Database) -> None:
    """Pipelined extended-protocol batches keep their order across an error."""
    with psycopg.connect(proxy.dsn(db), autocommit=True) as conn:
        with conn.pipeline():
            c1 = conn.execute("SELECT %s::int", (1,))
            c2 = conn.execute("SELECT %s::int", (2,))
        assert (c1.fetchone(), c2.fetchone()) == ((1,), (2,))
        with pytest.raises(psycopg.errors.UndefinedTable), conn.pipeline():
            conn.execute("SELECT 1")
            conn.execute("SELECT * FROM missing_table")
        assert conn.execute("SELECT 3").fetchone() == (3,)


def test_psycopg_async_and_notify(proxy: RunningProxy, db: Database) -> None:
    async def go() -> list[str]:
        async with await psycopg.AsyncConnection.connect(proxy.dsn(db),
                                                         autocommit=True) as conn:
            await conn.execute("LISTEN pg3_chan")
            async with await psycopg.AsyncConnection.connect(proxy.dsn(db),
                                                             autocommit=True) as other:
                await other.execute("SELECT pg_notify('pg3_chan', 'ping')")
            payloads = []
            async for note in conn.notifies(timeout=5, stop_after=1):
                payloads.append(note.payload)
            cur = await conn.execute("SELECT %s::text", ("async ok",))
            payloads.append((await cur.fetchone())[0])
            return payloads

    assert asyncio.run(go()) == ["ping", "async ok"]


def test_psycopg_cancel(proxy: RunningProxy, db: Database) -> None:
    import threading

    with psycopg.connect(proxy.dsn(db)) as conn:
        timer = threading.Timer(0.3, conn.cancel_safe)
        timer.start()
        start = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled) as info:
            conn.execute("SELECT pg_sleep(30)")
        elapsed = time.monotonic() - start
        assert info.value.sqlstate == "57014"
        assert elapsed < 1.3
        conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_psycopg_tls_and_wrong_password(proxy: RunningProxy, db: Database,
                                        certs: CertFiles) -> None:
    dsn = proxy.dsn(db, sslmode="verify-full", sslrootcert=str(certs.ca))
    with psycopg.connect(dsn.replace("127.0.0.1", "localhost")) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(db.dsn("app", password="nope", port=proxy.port))


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "orm_authors"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    books: Mapped[list[Book]] = relationship(back_populates="author",
                                             cascade="all, delete-orphan")


class Book(Base):
    __tablename__ = "orm_books"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(100))
    author_id: Mapped[int] = mapped_column(ForeignKey("orm_authors.id"))
    author: Mapped[Author] = relationship(back_populates="books")


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_sqlalchemy_orm(proxy: RunningProxy, db: Database, driver: str) -> None:
    url = proxy.dsn(db).replace("postgresql://", f"postgresql+{driver}://")
    if driver == "asyncpg":
        from sqlalchemy.ext.asyncio import create_async_engine

        async def go() -> list[str]:
            engine = create_async_engine(url)
            async with engine.begin() as conn:
                rows = await conn.exec_driver_sql("SELECT 'orm over asyncpg'")
                out = [r[0] for r in rows]
            await engine.dispose()
            return out

        assert asyncio.run(go()) == ["orm over asyncpg"]
        return
    engine = create_engine(url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(Author(name="Le Guin", books=[Book(title="The Dispossessed"),
                                                   Book(title="Lathe of Heaven")]))
        session.commit()
        author = session.scalars(select(Author).where(Author.name == "Le Guin")).one()
        assert sorted(b.title for b in author.books) == ["Lathe of Heaven", "The Dispossessed"]
        author.books.pop()
        session.rollback()
        assert len(session.scalars(select(Book)).all()) == 2
        session.delete(author)
        session.commit()
        assert session.scalars(select(Book)).all() == []
    Base.metadata.drop_all(engine)
    engine.dispose()
