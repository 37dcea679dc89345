"""The harness's servers are real: PostgreSQL answers SQL, Redis runs Lua, both on private ports."""

from __future__ import annotations

import psycopg
import redis

from support.services import Server


def test_postgres_is_a_real_server(postgres: Server) -> None:
    with psycopg.connect(postgres.url, connect_timeout=5) as conn:
        conn.execute("CREATE TABLE probe (id serial PRIMARY KEY, body jsonb NOT NULL)")
        conn.execute("INSERT INTO probe (body) VALUES (%s::jsonb)", ['{"ok": true}'])
        row = conn.execute("SELECT body->>'ok', current_database(), version() FROM probe").fetchone()
    assert row is not None
    assert row[0] == "true"
    assert row[1] == "agentplane"
    assert row[2].startswith("PostgreSQL ")
    assert postgres.port not in (5432,)


def test_redis_is_a_real_server(redis_server: Server) -> None:
    client = redis.Redis.from_url(redis_server.url)
    try:
        script = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
        assert client.eval(script, 1, "probe", 5) == 5
        assert client.eval(script, 1, "probe", 2) == 7
        assert redis_server.port != 6379
    finally:
        client.close()
