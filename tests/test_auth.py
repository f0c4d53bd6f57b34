"""Client-side SCRAM against stored verifiers; upstream SCRAM, md5, cleartext,
trust and TLS modes against a real PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import psycopg
import pytest

from proxy.auth.scram import ScramClient, ScramServer, ScramVerifier, make_verifier
from proxy.errors import InvalidPassword
from proxy.localpg.cluster import LocalCluster
from tests.certs import CertFiles
from tests.harness import Database, proxy_settings, running_proxy


def test_scram_exchange_in_memory() -> None:
    verifier = make_verifier("s3cret")
    client, server = ScramClient("s3cret"), ScramServer("app", verifier)
    first = server.first("SCRAM-SHA-256", client.first())
    client.verify(server.final(client.final(first)))
    bad_client, server = ScramClient("wrong"), ScramServer("app", verifier)
    first = server.first("SCRAM-SHA-256", bad_client.first())
    with pytest.raises(InvalidPassword, match='password authentication failed for user "app"'):
        server.final(bad_client.final(first))


def test_unknown_user_fails_like_a_wrong_password() -> None:
    client, server = ScramClient("anything"), ScramServer("ghost", None)
    first = server.first("SCRAM-SHA-256", client.first())
    with pytest.raises(InvalidPassword):
        server.final(client.final(first))


def test_verifier_format_is_postgresql_s(db: Database) -> None:
    """PostgreSQL accepts our verifier as a stored password and authenticates with it."""
    verifier = make_verifier("made-by-proxy")
    assert ScramVerifier.parse(str(verifier)) == verifier
    with psycopg.connect(db.dsn(db.superuser, "postgres"), autocommit=True) as admin:
        admin.execute("DROP ROLE IF EXISTS verifier_check")
        admin.execute(f"CREATE ROLE verifier_check LOGIN PASSWORD '{verifier}'")
        stored = admin.execute("SELECT rolpassword FROM pg_authid "
                               "WHERE rolname = 'verifier_check'").fetchone()[0]
    assert stored == str(verifier)
    with psycopg.connect(db.dsn("verifier_check", "postgres", "made-by-proxy")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("verifier_check",)


def test_passwd_command_prints_a_usable_verifier() -> None:
    proc = subprocess.run([sys.executable, "-m", "proxy.cli.main", "passwd", "app"],
                          input="hunter2\n", capture_output=True, text=True, check=True)
    user, _, quoted = proc.stdout.strip().partition(": ")
    verifier = ScramVerifier.parse(quoted.strip('"'))
    assert user == "app"
    client, server = ScramClient("hunter2"), ScramServer("app", verifier)
    client.verify(server.final(client.final(server.first("SCRAM-SHA-256", client.first()))))


@pytest.mark.parametrize("role", ["app", "md5user", "clearuser", "trustuser"])
def test_upstream_auth_methods(local_cluster: LocalCluster, db: Database, certs: CertFiles,
                               role: str) -> None:
    method = {"app": "scram-sha-256", "md5user": "md5", "clearuser": "password",
              "trustuser": "trust"}[role]
    with running_proxy(proxy_settings(db, certs)) as proxy, \
            psycopg.connect(proxy.dsn(db, role)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (role,)
    with psycopg.connect(db.dsn(db.superuser, "postgres")) as admin:
        hba = admin.execute("SELECT auth_method FROM pg_hba_file_rules "
                            "WHERE %s = ANY(user_name)", (role,)).fetchall()
    assert (method,) in hba or role == "app"


@pytest.mark.parametrize("sslmode,rootcert,works", [
    ("disable", False, False),   # tlsuser is only allowed over hostssl
    ("require", False, True),
    ("verify-ca", True, True),
    ("verify-full", True, True),
    ("verify-full", False, False),  # system CAs do not know our test CA
])
def test_upstream_tls_modes(local_cluster: LocalCluster, db: Database, certs: CertFiles,
                            sslmode: str, rootcert: bool, works: bool) -> None:
    settings = proxy_settings(db, certs)
    upstream = replace(settings.upstream, sslmode=sslmode, host="localhost" if rootcert
                       else "127.0.0.1", sslrootcert=str(certs.ca) if rootcert else None)
    with running_proxy(replace(settings, upstream=upstream)) as proxy:
        if works:
            with psycopg.connect(proxy.dsn(db, "tlsuser")) as conn:
                row = conn.execute("SELECT ssl FROM pg_stat_ssl "
                                   "WHERE pid = pg_backend_pid()").fetchone()
            assert row == (True,)
        else:
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(proxy.dsn(db, "tlsuser"))


def test_upstream_password_missing_is_explained(db: Database, certs: CertFiles) -> None:
    settings = proxy_settings(db, certs)
    settings = replace(settings, upstream=replace(settings.upstream, passwords={}))
    with running_proxy(settings) as proxy, \
            pytest.raises(psycopg.OperationalError, match="none is configured"):
        psycopg.connect(proxy.dsn(db))
