"""Column encryption through the running proxy with real clients (asyncpg binary,
psycopg 3 text and binary, SQLAlchemy), and what PostgreSQL itself holds."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import secrets
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import asyncpg
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Date, Integer, LargeBinary, Numeric, String, create_engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from proxy.auth.scram import make_verifier
from proxy.config.settings import KeyStoreSettings
from proxy.crypto.cipher import HEADER_SIZE, key_version
from proxy.policy.tokens import mint_hs256
from proxy.wire import backend as be
from proxy.wire import frontend as fe
from tests.certs import CertFiles
from tests.harness import (
    Database,
    RunningProxy,
    admin_connect,
    proxy_settings,
    recreate_database,
    running_proxy,
)
from tests.rawclient import RawClient

ENC_DB = "tenant_proxy_enc"
TOKEN_KEY = secrets.token_bytes(32)
MASTER = base64.b64encode(secrets.token_bytes(32)).decode()
LOGINS = {"tok": "tok-pw", "migrator": "migrator-pw"}
#: Every logical type, one column each (stored as bytea).
TYPES = {"ssn": "text", "email": "text", "born": "date", "balance": "numeric",
         "visits": "integer", "big": "bigint", "small": "smallint", "active": "boolean",
         "seen": "timestamptz", "profile": "jsonb", "photo": "bytea"}
DETERMINISTIC = {"email", "born", "visits"}
SCHEMA = f"""
CREATE TABLE patients (id serial PRIMARY KEY, tenant_id integer NOT NULL, name text,
                       {", ".join(f"{c} bytea" for c in TYPES)});
CREATE UNIQUE INDEX patients_email ON patients (tenant_id, email);
CREATE TABLE contacts (id serial PRIMARY KEY, tenant_id integer NOT NULL, email bytea,
                       note bytea);
"""
def _mode(column: str) -> str:
    return "deterministic" if column in DETERMINISTIC else "randomized"


def _domain(column: str) -> str:
    return ", domain: email" if column == "email" else ""


RULES = f"""
version: 1
tenant: {{column: tenant_id, type: integer}}
tables:
  patients: {{scope: tenant}}
  contacts: {{scope: tenant}}
users:
  tok: {{identity: token}}
  migrator: {{identity: bypass}}
tokens:
  hmac_keys: ["base64:{base64.b64encode(TOKEN_KEY).decode()}"]
encryption:
  master_key: {{env: TP_TEST_MASTER_KEY}}
  key_refresh: 1
  columns:
{chr(10).join(f"    patients.{c}: {{mode: {_mode(c)}, type: {t}{_domain(c)}}}"
              for c, t in TYPES.items())}
    contacts.email: {{mode: deterministic, type: text, domain: email}}
    contacts.note: {{mode: randomized, type: text}}
"""


def token(tenant: int) -> str:
    return mint_hs256(TOKEN_KEY, str(tenant), 600, role="tok")


def admin_run(db: Database, sql: str, *args: object) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await admin_connect(db, ENC_DB)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()
    return asyncio.run(go())


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("enc") / "rules.yaml"
    path.write_text(RULES)
    return path


@pytest.fixture(scope="module")
def enc(db: Database, certs: CertFiles, rules_file: Path) -> Iterator[RunningProxy]:
    async def setup() -> None:
        await recreate_database(db, ENC_DB)
        conn = await admin_connect(db, ENC_DB)
        try:
            await conn.execute(SCHEMA)
            if await conn.fetchval("SELECT 1 FROM pg_available_extensions WHERE name = "
                                   "'pg_stat_statements'") and await conn.fetchval(
                    "SELECT 'pg_stat_statements' = ANY(string_to_array(current_setting("
                    "'shared_preload_libraries'), ','))"):
                await conn.execute("CREATE EXTENSION pg_stat_statements")
        finally:
            await conn.close()

    asyncio.run(setup())
    os.environ["TP_TEST_MASTER_KEY"] = MASTER
    base = proxy_settings(db, certs)
    upstream = replace(base.upstream, database=ENC_DB,
                       roles={login: db.superuser for login in LOGINS},
                       passwords={**base.upstream.passwords,
                                  db.superuser: db.superuser_password or ""})
    auth = replace(base.auth, users={**base.auth.users,
                                     **{u: make_verifier(p) for u, p in LOGINS.items()}})
    settings = replace(base, upstream=upstream, auth=auth, rules=str(rules_file),
                       key_store=KeyStoreSettings(url=db.dsn(db.superuser, ENC_DB)))
    with running_proxy(settings) as proxy:
        yield proxy


def dsn(proxy: RunningProxy, login: str = "tok") -> str:
    return f"postgresql://{login}:{LOGINS[login]}@127.0.0.1:{proxy.port}/{ENC_DB}"


def sample(tag: str) -> dict[str, object]:
    """Distinctive values of every type (their bytes are searched for in the database)."""
    return {
        "ssn": f"ssn-{tag}-{secrets.token_hex(6)}",
        "email": f"{tag}-{secrets.token_hex(4)}@example.test",
        "born": dt.date(1980, 2, 29),
        "balance": Decimal("12345.6700"),
        "visits": 42,
        "big": -(2**62) + 7,
        "small": -32768,
        "active": True,
        "seen": dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC),
        "profile": {"plan": f"gold-{tag}-{secrets.token_hex(4)}", "tags": ["a", "ü"]},
        "photo": secrets.token_bytes(64) + b"photo-" + tag.encode(),
    }


EDGE_CASES: list[dict[str, object]] = [
    {c: None for c in TYPES},
    {"ssn": "", "email": "", "profile": {}, "photo": b"", "balance": Decimal("0"),
     "visits": 0, "big": 0, "small": 0, "active": False, "born": dt.date(2000, 1, 1),
     "seen": dt.datetime(2000, 1, 1, tzinfo=dt.UTC)},
    {"ssn": "ünïcødé ✓ 日本語 🎉", "email": "ユーザー@例え.jp", "profile": {"k": "🎉"},
     "balance": Decimal("-0.000001"), "visits": -2147483648, "big": 2**63 - 1,
     "small": 32767, "born": dt.date(9999, 12, 31),
     "seen": dt.datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=dt.UTC)},
    {"ssn": "x" * 200_000, "photo": bytes(range(256)) * 2000,
     "profile": {"big": ["y" * 1000] * 100}, "balance": Decimal("9" * 100 + "." + "1" * 50)},
]


async def _asyncpg_connect(proxy: RunningProxy, tenant: int) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn(proxy))
    await conn.execute(f"SET tenant_proxy.tenant = '{token(tenant)}'")
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads,
                              schema="pg_catalog")
    return conn


def test_round_trip_asyncpg_binary(enc: RunningProxy) -> None:
    async def go() -> None:
        conn = await _asyncpg_connect(enc, 1)
        try:
            for case in [sample("apg"), *EDGE_CASES]:
                cols = list(case)
                row_id = await conn.fetchval(
                    f"INSERT INTO patients (name, {', '.join(cols)}) VALUES "
                    f"('apg', {', '.join(f'${i + 1}' for i in range(len(cols)))}) RETURNING id",
                    *case.values())
                got = await conn.fetchrow(f"SELECT {', '.join(cols)} FROM patients "
                                          "WHERE id = $1", row_id)
                assert dict(got) == case
        finally:
            await conn.close()
    asyncio.run(go())


@pytest.mark.parametrize("binary", [False, True])
def test_round_trip_psycopg(enc: RunningProxy, binary: bool) -> None:
    with psycopg.connect(dsn(enc), autocommit=True) as conn:
        # A tenant per run: the edge cases' empty email is unique per tenant.
        conn.execute(f"SET tenant_proxy.tenant = '{token(5 if binary else 4)}'")
        for case in [sample("pg"), *EDGE_CASES]:
            cols = list(case)
            values = [psycopg.types.json.Jsonb(v) if c == "profile" and v is not None else v
                      for c, v in case.items()]
            marks = ", ".join("%b" if binary else "%t" for _ in cols)
            cur = conn.cursor(binary=binary)
            row_id = cur.execute(f"INSERT INTO patients (name, {', '.join(cols)}) VALUES "
                                 f"('pg', {marks}) RETURNING id", values).fetchone()[0]
            got = cur.execute(f"SELECT {', '.join(cols)} FROM patients WHERE id = %s",
                              [row_id]).fetchone()
            assert dict(zip(cols, got, strict=True)) == case


def test_simple_protocol_literals_and_search(enc: RunningProxy) -> None:
    email = f"lit-{secrets.token_hex(4)}@example.test"
    with psycopg.connect(dsn(enc), autocommit=True) as conn:
        conn.execute(f"SET tenant_proxy.tenant = '{token(1)}'")
        cur = psycopg.ClientCursor(conn)  # values inlined: the simple protocol with literals
        cur.execute("INSERT INTO patients (name, email, ssn, visits, born) VALUES "
                    "(%s, %s, %s, %s, %s)", ["lit", email, "it's", 7, dt.date(1999, 1, 2)])
        cur.execute("SELECT name, ssn, visits, born FROM patients WHERE email = %s "
                    "AND visits IN (%s, %s)", [email, 7, 8])
        assert cur.fetchall() == [("lit", "it's", 7, dt.date(1999, 1, 2))]
        cur.execute("SELECT count(*) FROM patients WHERE email <> %s AND email IS NOT NULL "
                    "AND name = 'lit'", [email])
        assert cur.fetchone() == (0,)


def test_equality_unique_index_and_join(enc: RunningProxy) -> None:
    email = f"dup-{secrets.token_hex(4)}@example.test"
    with psycopg.connect(dsn(enc), autocommit=True) as conn:
        conn.execute(f"SET tenant_proxy.tenant = '{token(1)}'")
        conn.execute("INSERT INTO patients (name, email) VALUES ('dup', %s)", [email])
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO patients (name, email) VALUES ('dup2', %s)", [email])
        conn.execute("INSERT INTO patients (name, email) VALUES ('dup', %s) ON CONFLICT "
                     "(tenant_id, email) DO UPDATE SET name = 'upserted'", [email])
        assert conn.execute("SELECT name FROM patients WHERE email = %s",
                            [email]).fetchall() == [("upserted",)]
        conn.execute("INSERT INTO contacts (email, note) VALUES (%s, 'friend')", [email])
        rows = conn.execute("SELECT p.name, c.note FROM patients p JOIN contacts c "
                            "ON p.email = c.email WHERE c.email = %s", [email]).fetchall()
        assert rows == [("upserted", "friend")]
    # Another tenant may use the same address: the unique index is per tenant.
    with psycopg.connect(dsn(enc), autocommit=True) as conn:
        conn.execute(f"SET tenant_proxy.tenant = '{token(2)}'")
        conn.execute("INSERT INTO patients (name, email) VALUES ('other', %s)", [email])
        assert conn.execute("SELECT name FROM patients WHERE email = %s",
                            [email]).fetchall() == [("other",)]


class Base(DeclarativeBase):
    pass


class Patient(Base):
    __tablename__ = "patients"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str | None] = mapped_column(String)
    email: Mapped[str | None] = mapped_column(String)
    ssn: Mapped[str | None] = mapped_column(String)
    born: Mapped[dt.date | None] = mapped_column(Date)
    balance: Mapped[Decimal | None] = mapped_column(Numeric)
    photo: Mapped[bytes | None] = mapped_column(LargeBinary)


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_sqlalchemy_orm(enc: RunningProxy, driver: str) -> None:
    email = f"orm-{driver}-{secrets.token_hex(4)}@example.test"
    if driver == "psycopg":
        engine = create_engine(dsn(enc).replace("postgresql://", "postgresql+psycopg://"),
                               connect_args={"options": f"-c tenant_proxy.tenant={token(1)}"})
        with Session(engine) as session:
            _orm_crud(session, email)
        engine.dispose()
        return
    from sqlalchemy.ext.asyncio import create_async_engine

    async def go() -> None:
        engine = create_async_engine(
            dsn(enc).replace("postgresql://", "postgresql+asyncpg://"),
            connect_args={"server_settings": {"tenant_proxy.tenant": token(1)}})
        async with engine.connect() as conn:
            await conn.run_sync(lambda sync: _orm_crud(Session(bind=sync), email))
        await engine.dispose()
    asyncio.run(go())


def _orm_crud(session: Session, email: str) -> None:
    patient = Patient(name="orm", email=email, ssn="orm-ssn", born=dt.date(1991, 3, 4),
                      balance=Decimal("1.50"), photo=b"\x00\x01orm")
    session.add(patient)
    session.commit()
    found = session.scalars(select(Patient).where(Patient.email == email)).one()
    assert (found.ssn, found.born, found.balance, found.photo) == \
        ("orm-ssn", dt.date(1991, 3, 4), Decimal("1.50"), b"\x00\x01orm")
    found.ssn = "changed"
    session.commit()
    session.expire_all()
    assert session.scalars(select(Patient.ssn).where(Patient.email.in_([email, "x"]))).one() \
        == "changed"
    session.add(Patient(name="orm2", email=email))
    with pytest.raises(IntegrityError):
        session.commit()
    session.rollback()


def test_refusals_keep_the_session(enc: RunningProxy) -> None:
    with psycopg.connect(dsn(enc)) as conn:
        conn.execute(f"SET tenant_proxy.tenant = '{token(1)}'")
        conn.commit()  # a rollback would undo the switch, as PostgreSQL undoes SET
        for sql in ("SELECT * FROM patients WHERE email LIKE 'a%'",
                    "SELECT * FROM patients ORDER BY ssn",
                    "SELECT * FROM patients WHERE ssn = 'x'",
                    "SELECT lower(email) FROM patients",
                    "SELECT * FROM patients WHERE born > '2000-01-01'"):
            with pytest.raises(psycopg.errors.FeatureNotSupported) as info:
                conn.execute(sql)
            assert "encrypted column" in str(info.value)
            assert info.value.diag.message_hint
            conn.rollback()
        assert conn.execute("SELECT count(*) FROM patients").fetchone()[0] > 0


def test_copy_from_is_sealed(enc: RunningProxy, db: Database) -> None:
    tag, name = secrets.token_hex(5), f"copy-{secrets.token_hex(3)}"
    with psycopg.connect(dsn(enc), autocommit=True) as conn:
        conn.execute(f"SET tenant_proxy.tenant = '{token(1)}'")
        with conn.cursor().copy("COPY patients (name, ssn, email, visits) FROM STDIN") as copy:
            copy.write_row([name, f"tab\there-{tag}", f"c1-{tag}@x", 5])
            copy.write_row([name, None, f"c2-{tag}@x", None])
        with conn.cursor().copy("COPY patients (name, ssn, email) FROM STDIN WITH (FORMAT csv)"
                                ) as copy:
            copy.write(f'{name},"quoted, ""{tag}""",c3-{tag}@x\n'.encode())
        rows = conn.execute("SELECT ssn, email, visits FROM patients WHERE name = %s "
                            "ORDER BY id", [name]).fetchall()
    assert rows == [(f"tab\there-{tag}", f"c1-{tag}@x", 5), (None, f"c2-{tag}@x", None),
                    (f'quoted, "{tag}"', f"c3-{tag}@x", None)]
    stored = admin_run(db, "SELECT t::text FROM patients t WHERE name = $1", name)
    assert len(stored) == 3
    assert not any(tag in r[0] or tag.encode().hex() in r[0] for r in stored)


def _plaintexts(case: dict[str, object]) -> list[bytes]:
    out = []
    for column in ("ssn", "email"):
        out.append(str(case[column]).encode())
    out.append(case["photo"])  # type: ignore[arg-type]
    out.append(json.dumps(case["profile"]).split('"')[3].encode())
    return out


def test_database_holds_only_ciphertext(enc: RunningProxy, db: Database) -> None:
    case = sample("leak")
    secrets_bytes = _plaintexts(case)
    with psycopg.connect(dsn(enc), autocommit=True) as conn:
        conn.execute(f"SET tenant_proxy.tenant = '{token(1)}'")
        cols = list(case)
        values = [psycopg.types.json.Jsonb(v) if c == "profile" else v for c, v in case.items()]
        conn.execute(f"INSERT INTO patients (name, {', '.join(cols)}) VALUES ('leak', "
                     f"{', '.join(['%s'] * len(cols))})", values)
        cur = psycopg.ClientCursor(conn)
        cur.execute("UPDATE patients SET ssn = %s WHERE email = %s", [case["ssn"], case["email"]])
        cur.execute("SELECT count(*) FROM patients WHERE email = %s", [case["email"]])
        assert cur.fetchone() == (1,)
    rows = admin_run(db, "SELECT t::text AS row, " + ", ".join(TYPES) +
                     " FROM patients t WHERE name = 'leak'")
    assert len(rows) == 1
    for column in TYPES:
        stored = rows[0][column]
        assert stored[0] == 1 and stored[1:2] in (b"R", b"D") and len(stored) > HEADER_SIZE
    text = rows[0]["row"].encode()
    for plain in secrets_bytes:
        assert plain not in text and plain.hex().encode() not in text
    # The heap file and the WAL PostgreSQL wrote hold no plaintext either.
    admin_run(db, "CHECKPOINT")
    path = admin_run(db, "SELECT pg_relation_filepath('patients')")[0][0]
    heap = admin_run(db, "SELECT pg_read_binary_file($1)", path)[0][0]
    wal = b"".join(r[0] for r in admin_run(
        db, "SELECT pg_read_binary_file('pg_wal/' || name) FROM pg_ls_waldir() "
            "WHERE name ~ '^[0-9A-F]{24}$' ORDER BY modification DESC LIMIT 2"))
    for plain in secrets_bytes:
        assert plain not in heap and plain not in wal
    installed = admin_run(db, "SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'")
    assert installed or db.cluster is None  # the suite's own cluster preloads it
    if installed:
        statements = "\n".join(r[0] for r in admin_run(
            db, "SELECT query FROM pg_stat_statements")).encode()
        for plain in secrets_bytes:
            assert plain not in statements


def test_copied_ciphertext_does_not_decrypt(enc: RunningProxy, db: Database) -> None:
    tags = {tenant: f"copy{tenant}-{secrets.token_hex(3)}" for tenant in (1, 2)}
    for tenant, tag in tags.items():
        with psycopg.connect(dsn(enc), autocommit=True) as conn:
            conn.execute(f"SET tenant_proxy.tenant = '{token(tenant)}'")
            conn.execute("INSERT INTO patients (name, ssn, email) VALUES (%s, %s, %s)",
                         [tag, f"secret-{tag}", f"{tag}@x"])
    # Another tenant's ssn, another column's value, and a value of another tenant's
    # deterministic column, each copied in with the database's own privileges.
    admin_run(db, "UPDATE patients SET ssn = (SELECT ssn FROM patients WHERE name = $2) "
                  "WHERE name = $1", tags[1], tags[2])
    with psycopg.connect(dsn(enc), autocommit=True) as conn:
        conn.execute(f"SET tenant_proxy.tenant = '{token(1)}'")
        with pytest.raises(psycopg.errors.DataCorrupted, match="does not decrypt"):
            conn.execute("SELECT ssn FROM patients WHERE name = %s", [tags[1]]).fetchall()
        assert conn.execute("SELECT email FROM patients WHERE name = %s",
                            [tags[1]]).fetchone() == (f"{tags[1]}@x",)
    admin_run(db, "UPDATE patients SET ssn = email WHERE name = $1", tags[1])
    admin_run(db, "UPDATE patients SET email = (SELECT email FROM patients WHERE name = $2) "
                  "WHERE name = $1", tags[1], tags[2])
    with psycopg.connect(dsn(enc), autocommit=True) as conn:
        conn.execute(f"SET tenant_proxy.tenant = '{token(1)}'")
        for column in ("ssn", "email"):
            with pytest.raises(psycopg.errors.DataCorrupted):
                conn.execute(f"SELECT {column} FROM patients WHERE name = %s",
                             [tags[1]]).fetchall()


def keys_cli(db: Database, rules: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TP_TEST_MASTER_KEY": MASTER}
    return subprocess.run([sys.executable, "-m", "proxy.cli.main", "keys", *args,
                           "--rules", str(rules), "--dsn", db.dsn(db.superuser, ENC_DB)],
                          capture_output=True, text=True, env=env, timeout=300, check=False)


def test_rotate_then_reencrypt_under_concurrent_writes(enc: RunningProxy, db: Database,
                                                       rules_file: Path) -> None:
    tag = f"rot-{secrets.token_hex(3)}"
    with psycopg.connect(dsn(enc), autocommit=True) as conn:
        conn.execute(f"SET tenant_proxy.tenant = '{token(1)}'")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO patients (name, ssn, email) VALUES (%s, %s, %s)",
                            [(tag, f"v0-{i}", f"{tag}-{i}@x") for i in range(300)])
    before = {key_version(r[0]) for r in admin_run(
        db, "SELECT ssn FROM patients WHERE name = $1", tag)}
    rotated = keys_cli(db, rules_file, "rotate", "--tenant", "1")
    assert rotated.returncode == 0, rotated.stderr
    time.sleep(1.5)  # the proxy hears of it (NOTIFY, or its refresh)
    expected = {i: f"v0-{i}" for i in range(300)}
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with psycopg.connect(dsn(enc), autocommit=True) as conn:
                conn.execute(f"SET tenant_proxy.tenant = '{token(1)}'")
                n = 0
                while not stop.is_set():
                    i = secrets.randbelow(300)
                    n += 1
                    # Found by equality although most rows still carry the old key.
                    updated = conn.execute("UPDATE patients SET ssn = %s WHERE email = %s",
                                           [f"w{n}-{i}", f"{tag}-{i}@x"]).rowcount
                    assert updated == 1
                    expected[i] = f"w{n}-{i}"
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        result = keys_cli(db, rules_file, "reencrypt", "--tenant", "1", "--batch", "50")
    finally:
        stop.set()
        thread.join(30)
    assert not errors, errors
    assert result.returncode == 0, result.stderr
    with psycopg.connect(dsn(enc), autocommit=True) as conn:
        conn.execute(f"SET tenant_proxy.tenant = '{token(1)}'")
        rows = dict(conn.execute("SELECT email, ssn FROM patients WHERE name = %s",
                                 [tag]).fetchall())
    assert rows == {f"{tag}-{i}@x": v for i, v in expected.items()}
    after = {key_version(r[0]) for r in admin_run(
        db, "SELECT ssn FROM patients WHERE name = $1", tag)}
    assert len(after) == 1 and after.isdisjoint(before)


def test_shred_makes_one_tenant_unreadable(enc: RunningProxy, db: Database,
                                           rules_file: Path) -> None:
    with psycopg.connect(dsn(enc), autocommit=True) as conn:
        conn.execute(f"SET tenant_proxy.tenant = '{token(3)}'")
        conn.execute("INSERT INTO patients (name, ssn) VALUES ('doomed', 'gone soon')")
        assert conn.execute("SELECT ssn FROM patients").fetchall() == [("gone soon",)]
    keep = f"keeper-{secrets.token_hex(3)}"
    with psycopg.connect(dsn(enc), autocommit=True) as conn:
        conn.execute(f"SET tenant_proxy.tenant = '{token(1)}'")
        conn.execute("INSERT INTO patients (name, ssn) VALUES (%s, %s)", [keep, keep])
    result = keys_cli(db, rules_file, "shred", "--tenant", "3", "--yes")
    assert result.returncode == 0, result.stderr
    time.sleep(1.5)
    with psycopg.connect(dsn(enc), autocommit=True) as conn:
        conn.execute(f"SET tenant_proxy.tenant = '{token(3)}'")
        assert conn.execute("SELECT name FROM patients").fetchall() == [("doomed",)]
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="shredded"):
            conn.execute("SELECT ssn FROM patients").fetchall()
    with psycopg.connect(dsn(enc), autocommit=True) as conn:
        conn.execute(f"SET tenant_proxy.tenant = '{token(1)}'")
        assert conn.execute("SELECT ssn FROM patients WHERE name = %s", [keep]).fetchall() \
            == [(keep,)]


def test_bypass_role_sees_ciphertext(enc: RunningProxy) -> None:
    with psycopg.connect(dsn(enc, "migrator")) as conn:
        stored = conn.execute("SELECT ssn FROM patients WHERE ssn IS NOT NULL LIMIT 1"
                              ).fetchone()[0]
    assert isinstance(stored, bytes) and stored[0] == 1


def test_check_reports_encrypted_columns(enc: RunningProxy, db: Database, rules_file: Path,
                                         tmp_path: Path) -> None:
    env = {**os.environ, "TP_TEST_MASTER_KEY": MASTER}

    def check(rules: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "proxy.cli.main", "check", str(rules),
                               "--dsn", db.dsn(db.superuser, ENC_DB)], capture_output=True,
                              text=True, env=env, timeout=120, check=False)

    good = check(rules_file)
    assert good.returncode == 0, good.stdout + good.stderr
    bad = tmp_path / "rules.yaml"
    bad.write_text(RULES.replace("contacts.note:", "contacts.missing:").replace(
        "patients.small:", "patients.name:"))
    result = check(bad)
    assert result.returncode == 1
    assert "encryption.columns.public.contacts.missing: no such column" in result.stdout
    assert "encryption.columns.public.patients.name: is text; encrypted columns are bytea" \
        in result.stdout


POOL = ["a@x", "b@x", "c@x", "d@x", "", "ü@x"]


@pytest.fixture(scope="module")
def mirrored(enc: RunningProxy, db: Database) -> dict[int, str | None]:
    """Rows of tenant 9 with a deterministic email, and the same emails in plaintext
    in a table the proxy never sees, keyed by the same ids."""
    admin_run(db, "CREATE TABLE IF NOT EXISTS plain_mirror (id int PRIMARY KEY, email text)")
    admin_run(db, "TRUNCATE plain_mirror")
    emails: dict[int, str | None] = {}
    with psycopg.connect(dsn(enc), autocommit=True) as conn:
        conn.execute(f"SET tenant_proxy.tenant = '{token(9)}'")
        for n in range(40):
            email = None if n % 7 == 0 else f"{n}-{POOL[n % len(POOL)]}" if n % 3 == 0 \
                else POOL[n % len(POOL)]
            row_id = conn.execute("INSERT INTO contacts (email) VALUES (%s) RETURNING id",
                                  [email]).fetchone()[0]
            emails[row_id] = email
    for row_id, email in emails.items():
        admin_run(db, "INSERT INTO plain_mirror VALUES ($1, $2)", row_id, email)
    return emails


SEARCHES = st.tuples(
    st.sampled_from(["=", "<>", "IN", "NOT IN"]),
    st.lists(st.one_of(st.none(), st.sampled_from([*POOL, "3-d@x", "zz"])), min_size=1,
             max_size=3),
    st.booleans())


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(search=SEARCHES)
def test_searches_equal_plaintext_results(enc: RunningProxy, db: Database,
                                          mirrored: dict[int, str | None],
                                          search: tuple[str, list[str | None], bool]) -> None:
    """= / <> / IN / NOT IN on a deterministic column, with literals or parameters and
    NULLs among them, select exactly the rows the same predicate selects on plaintext."""
    op, values, literal = search
    if op in ("=", "<>"):
        values = values[:1]
        predicate = f"email {op} %s"
    else:
        predicate = f"email {op} ({', '.join(['%s'] * len(values))})"
    expected = {r[0] for r in admin_run(
        db, "SELECT id FROM plain_mirror WHERE " + predicate.replace("%s", "{}").format(
            *[f"${i + 1}" for i in range(len(values))]), *values)}
    with psycopg.connect(dsn(enc), autocommit=True) as conn:
        conn.execute(f"SET tenant_proxy.tenant = '{token(9)}'")
        cur = psycopg.ClientCursor(conn) if literal else conn.cursor()
        got = {r[0] for r in cur.execute(f"SELECT id FROM contacts WHERE {predicate}",
                                         values).fetchall()}
    assert got == expected, (predicate, values)


def test_rows_decrypt_for_clients_that_never_describe(enc: RunningProxy) -> None:
    """Parse, Bind, Execute with no Describe at all (the portal's columns are then
    learned by the proxy's own Describe, whose answer the client never sees), in text and
    binary result formats, and after the unnamed statement is parsed again with
    other columns."""
    client = RawClient.connect(enc.port)
    try:
        client.login("tok", LOGINS["tok"], ENC_DB, options=f"-c tenant_proxy.tenant={token(1)}")
        client.query("INSERT INTO patients (name, ssn, visits) VALUES ('raw', 'raw-ssn', 41)")
        for formats, expected in (((0,), (b"raw-ssn", b"41")),
                                  ((1,), (b"raw-ssn", struct.pack("!i", 41)))):
            client.send(fe.Parse("", "SELECT ssn, visits FROM patients WHERE name = $1"),
                        fe.Bind("", "", (), (b"raw",), formats), fe.Execute("", 0), fe.Sync())
            messages = client.recv_until_ready()
            assert [type(m).__name__ for m in messages] == [
                "ParseComplete", "BindComplete", "DataRow", "CommandComplete", "ReadyForQuery"]
            assert messages[2].values == expected
        client.send(fe.Parse("", "SELECT name, visits FROM patients WHERE name = $1"),
                    fe.Bind("", "", (), (b"raw",), (0,)), fe.Execute("", 0), fe.Sync())
        rows = [m for m in client.recv_until_ready() if isinstance(m, be.DataRow)]
        assert rows[0].values == (b"raw", b"41")
    finally:
        client.close()


def test_returning_is_decrypted(enc: RunningProxy) -> None:
    with psycopg.connect(dsn(enc), autocommit=True) as conn:
        conn.execute(f"SET tenant_proxy.tenant = '{token(1)}'")
        inserted = conn.execute("INSERT INTO patients (name, ssn, born) VALUES "
                                "('ret', %s, %s) RETURNING ssn, born",
                                ["ret-1", dt.date(1999, 9, 9)]).fetchone()
        assert inserted == ("ret-1", dt.date(1999, 9, 9))
        updated = conn.execute("UPDATE patients SET ssn = %s WHERE name = 'ret' "
                               "RETURNING ssn", ["ret-2"]).fetchone()
        assert updated == ("ret-2",)
        deleted = conn.execute("DELETE FROM patients WHERE name = 'ret' RETURNING *"
                               ).fetchone()
        assert deleted is not None and "ret-2" in deleted
