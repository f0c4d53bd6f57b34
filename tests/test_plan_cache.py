"""The plan cache: hits skip planning, LRU eviction, flushed on rules reload, and
plans are tenant-independent templates."""

from __future__ import annotations

import pytest

from proxy.errors import Refused
from proxy.policy.rules import parse_rules
from proxy.session.engine import Engine
from proxy.session.startup import open_session

RULES = """
version: 1
tables:
  orders: {scope: tenant}
  countries: {scope: shared}
users:
  a: {identity: bound, tenant: 1}
  b: {identity: bound, tenant: 2}
"""


def test_hits_misses_and_one_plan_for_every_tenant() -> None:
    engine = Engine(parse_rules(RULES))
    one, _ = open_session(engine, "a", {})
    two, _ = open_session(engine, "b", {})
    sql = "SELECT id FROM orders WHERE total > 10"
    first, second = one.query(sql), two.query(sql)
    assert engine.cache.misses == 1 and engine.cache.hits == 1 and len(engine.cache) == 1
    assert first is not None and second is not None
    assert first.replace('"tenant_id" = 1', '"tenant_id" = 2') == second


def test_lru_eviction() -> None:
    engine = Engine(parse_rules(RULES), cache_size=2)
    session, _ = open_session(engine, "a", {})
    one, two, three = ("SELECT code FROM countries", "SELECT name FROM countries",
                       "SELECT id FROM orders")
    for sql in (one, two, one, three):
        session.query(sql)
    assert engine.cache.evictions == 1
    session.query(one)  # used more recently than the second: still cached
    assert engine.cache.hits == 2
    session.query(two)  # evicted
    assert engine.cache.misses == 4


def test_literals_share_one_template() -> None:
    engine = Engine(parse_rules(RULES))
    session, _ = open_session(engine, "a", {})
    first = session.query("SELECT id FROM orders WHERE id = 1 AND note = 'x'")
    second = session.query("SELECT id FROM orders WHERE id = -22 AND note = 'it''s'")
    assert engine.cache.misses == 1 and engine.cache.hits == 1
    assert first is not None and second is not None
    assert first.endswith("WHERE id = 1 AND note = 'x'")
    assert second.endswith("WHERE id = -22 AND note = 'it''s'")
    with pytest.raises(Refused, match="tenant value 2"):
        session.query("INSERT INTO orders (tenant_id, note) VALUES (2, 'x')")
    # The tenant's own value needs no edit: the statement goes out exactly as written.
    assert session.query("INSERT INTO orders (tenant_id, note) VALUES (1, 'x')") is None


def test_reload_flushes_and_changes_the_key() -> None:
    engine = Engine(parse_rules(RULES))
    session, _ = open_session(engine, "a", {})
    assert session.query("SELECT code FROM countries") is None
    engine.swap(parse_rules(RULES.replace("countries: {scope: shared}",
                                          "countries: {scope: deny}")))
    assert len(engine.cache) == 0
    with pytest.raises(Refused, match="denied"):
        session.query("SELECT code FROM countries")


def test_identity_statements_are_never_cached() -> None:
    engine = Engine(parse_rules(RULES.replace("a: {identity: bound, tenant: 1}",
                                              "a: {identity: trusted}")))
    session, _ = open_session(engine, "a", {})
    assert session.query("SET tenant_proxy.tenant = '5'") == \
        "SET tenant_proxy.tenant = '5'"
    assert session.current is None  # switched when the server confirms it
    session.ready(b"I", 1)
    assert session.current == "5"
    assert not any("'5'" in key[2] for key in engine.cache._entries)


def test_unicode_identifiers_are_kept_as_written() -> None:
    """The rewrite splices around the client's text, so U&"id" stays an identifier."""
    engine = Engine(parse_rules(RULES))
    session, _ = open_session(engine, "a", {})
    sent = session.query('SELECT U&"id" FROM orders')
    assert sent is not None and sent.startswith('SELECT U&"id" FROM (SELECT * FROM')
    assert session.query('SELECT U&"code" FROM countries') is None  # forwarded as written
