"""Fixtures: a real PostgreSQL (TEST_DATABASE_URL or a throwaway cluster) and
the proxy in front of it. Never a mock of PostgreSQL."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.localpg.cluster import ClusterError, LocalCluster
from tests.certs import CertFiles, make_certs
from tests.harness import (
    HBA,
    Database,
    ProxyErrors,
    RunningProxy,
    database_from_url,
    env_database_url,
    provision,
    proxy_settings,
)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
def db(certs: CertFiles) -> Iterator[Database]:
    url = env_database_url()
    if url:
        database = database_from_url(url)
        provision(database)
        yield database
        return
    try:
        cluster = LocalCluster(hba=HBA, ssl_cert=(str(certs.server_cert), str(certs.server_key)))
        cluster.start()
    except ClusterError as exc:
        pytest.fail(f"cannot start a throwaway PostgreSQL: {exc}", pytrace=False)
    database = Database("127.0.0.1", cluster.port, "postgres", cluster.superuser_password,
                        cluster)
    try:
        provision(database)
        yield database
    finally:
        cluster.destroy()


@pytest.fixture
def local_cluster(db: Database) -> LocalCluster:
    """Tests that depend on pg_hba lines or restart the server need our own cluster."""
    if db.cluster is None:
        pytest.skip("needs the throwaway cluster (TEST_DATABASE_URL is set): "
                    "it controls pg_hba.conf and server restarts")
    return db.cluster


@pytest.fixture(scope="session")
def proxy_errors() -> Iterator[ProxyErrors]:
    handler = ProxyErrors()
    logger = logging.getLogger("tenant_proxy")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture(scope="session")
def proxy(db: Database, certs: CertFiles, proxy_errors: ProxyErrors) -> Iterator[RunningProxy]:
    running = RunningProxy(proxy_settings(db, certs))
    yield running
    running.stop()
    crashes = [r.getMessage() for r in proxy_errors.records if r.exc_info]
    assert not crashes, f"the proxy logged exceptions (bugs): {crashes}"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that need PostgreSQL (the ``db`` fixture, directly or through another)
    are ``live``: ``pytest -m 'not live'`` is the fast pure subset."""
    live = pytest.mark.live
    for item in items:
        if "db" in getattr(item, "fixturenames", ()):
            item.add_marker(live)
