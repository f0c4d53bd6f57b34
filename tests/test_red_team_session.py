"""Red-team pass over session state and protocol sequences: what it found.

Each test asserts the secure behaviour and is expected to fail until fixed.
All findings share one shape: the proxy changes the session's tenant when it
*plans* an identity statement (``TenantSession._identity``, called from
``query``/``parse``), not when PostgreSQL runs and keeps it. PostgreSQL rolls
``SET`` back with its transaction or savepoint, skips it after an earlier error
in the pipeline, and never runs a Parse that is not executed; the proxy keeps
the new tenant anyway. From then on the proxy scopes statements to one tenant
while ``tenant_proxy.tenant`` upstream (what ``SHOW`` reports and what the
PostgreSQL floor's policies key on) names another: the session serves rows of a
tenant that PostgreSQL RLS for the session's tenant would not show.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from proxy.wire import backend as be
from proxy.wire import frontend as fe
from tests.corpus_harness import CORPUS_DB
from tests.harness import RunningProxy
from tests.rawclient import RawClient
from tests.test_isolation_live import LOGINS, iso, token  # noqa: F401


@contextmanager
def tok_session(proxy: RunningProxy) -> Iterator[RawClient]:
    """A token-identity session holding tenant 1."""
    client = RawClient.connect(proxy.port)
    seen = client.login("tok", LOGINS["tok"], CORPUS_DB)
    assert not any(isinstance(m, be.ErrorResponse) for m in seen), seen
    try:
        ok = client.query(f"SET tenant_proxy.tenant = '{token('1')}'")
        assert not any(isinstance(m, be.ErrorResponse) for m in ok), ok
        yield client
    finally:
        client.close()


def _rows(messages: list[be.BackendMessage]) -> list[tuple[str | None, ...]]:
    return [tuple(None if v is None else v.decode() for v in m.values)
            for m in messages if isinstance(m, be.DataRow)]


def assert_tenant_agrees(client: RawClient) -> None:
    """The rows served belong to the tenant PostgreSQL holds for the session (the one
    RLS keyed on tenant_proxy.tenant would show), and PostgreSQL still holds one."""
    shown = _rows(client.query("SHOW tenant_proxy.tenant"))
    served = {r[0] for r in _rows(client.query("SELECT tenant_id FROM users"))}
    assert shown, "SHOW tenant_proxy.tenant returned nothing"
    assert served and served <= {shown[0][0]}, \
        f"server holds tenant {shown[0][0]!r}, proxy served rows of tenants {served}"


def test_set_tenant_rolled_back_with_transaction(iso: RunningProxy) -> None:  # noqa: F811
    with tok_session(iso) as c:
        c.query("BEGIN")
        c.query(f"SET tenant_proxy.tenant = '{token('2')}'")
        c.query("ROLLBACK")
        assert_tenant_agrees(c)


def test_set_local_tenant_rolled_back_to_savepoint(iso: RunningProxy) -> None:  # noqa: F811
    with tok_session(iso) as c:
        c.query("BEGIN")
        c.query("SAVEPOINT a")
        c.query(f"SET LOCAL tenant_proxy.tenant = '{token('2')}'")
        c.query("ROLLBACK TO SAVEPOINT a")
        try:
            assert_tenant_agrees(c)
        finally:
            c.query("ROLLBACK")


def test_set_after_set_local_in_transaction(iso: RunningProxy) -> None:  # noqa: F811
    """A session-level SET after SET LOCAL replaces it, on both sides."""
    with tok_session(iso) as c:
        c.query("BEGIN")
        c.query(f"SET LOCAL tenant_proxy.tenant = '{token('2')}'")
        answer = c.query(f"SET tenant_proxy.tenant = '{token('1')}'")
        refused = [m for m in answer if isinstance(m, be.ErrorResponse)]
        try:
            if not refused:
                assert_tenant_agrees(c)
        finally:
            c.query("ROLLBACK")
        assert_tenant_agrees(c)


def test_a_pending_switch_blocks_the_statements_pipelined_after_it(
        iso: RunningProxy) -> None:  # noqa: F811
    """Statements sent before the server confirmed a switch are refused, never planned
    for a tenant the server may not hold."""
    with tok_session(iso) as c:
        c.send(fe.Parse("", f"SET tenant_proxy.tenant = '{token('2')}'"),
               fe.Bind("", "", (), ()), fe.Execute("", 0),
               fe.Parse("", "SELECT tenant_id FROM users"), fe.Bind("", "", (), ()),
               fe.Execute("", 0), fe.Sync())
        answer = c.recv_until_ready()
        errors = [m for m in answer if isinstance(m, be.ErrorResponse)]
        assert errors and "not confirmed" in errors[0].message
        assert not any(isinstance(m, be.DataRow) for m in answer)
        assert_tenant_agrees(c)


def test_parse_of_set_tenant_without_execute(iso: RunningProxy) -> None:  # noqa: F811
    with tok_session(iso) as c:
        c.send(fe.Parse("", f"SET tenant_proxy.tenant = '{token('2')}'"), fe.Sync())
        c.recv_until_ready()
        assert_tenant_agrees(c)


def test_set_tenant_skipped_after_pipeline_error(iso: RunningProxy) -> None:  # noqa: F811
    with tok_session(iso) as c:
        c.send(fe.Parse("", "SELECT 1/0"), fe.Bind("", "", (), ()), fe.Execute("", 0),
               fe.Parse("", f"SET tenant_proxy.tenant = '{token('2')}'"),
               fe.Bind("", "", (), ()), fe.Execute("", 0), fe.Sync())
        answer = c.recv_until_ready()
        assert any(isinstance(m, be.ErrorResponse) for m in answer)
        assert_tenant_agrees(c)


def test_set_tenant_in_aborted_transaction(iso: RunningProxy) -> None:  # noqa: F811
    with tok_session(iso) as c:
        c.query("BEGIN")
        c.query(f"SET tenant_proxy.tenant = '{token('2')}'")
        c.query("SELECT 1/0")
        c.query("COMMIT")  # answers ROLLBACK
        assert_tenant_agrees(c)


def test_sanity_consistent_switch(iso: RunningProxy) -> None:  # noqa: F811
    """Control: a committed switch agrees on both sides (the helper can pass)."""
    with tok_session(iso) as c:
        c.query(f"SET tenant_proxy.tenant = '{token('2')}'")
        assert_tenant_agrees(c)


def test_switch_in_a_block_is_kept_by_commit(iso: RunningProxy) -> None:  # noqa: F811
    """Control for the rollback cases: COMMIT keeps a switch made in a block."""
    with tok_session(iso) as c:
        c.query("BEGIN")
        c.query(f"SET tenant_proxy.tenant = '{token('2')}'")
        c.query("COMMIT")
        assert _rows(c.query("SHOW tenant_proxy.tenant")) == [("2",)]
        assert_tenant_agrees(c)


def test_switch_after_a_savepoint_is_refused(iso: RunningProxy) -> None:  # noqa: F811
    with tok_session(iso) as c:
        c.query("BEGIN")
        c.query("SAVEPOINT a")
        answer = c.query(f"SET tenant_proxy.tenant = '{token('2')}'")
        assert any(isinstance(m, be.ErrorResponse) and m.sqlstate == "42501" for m in answer)
        c.query("ROLLBACK")
        assert_tenant_agrees(c)
