"""`agentplane keys create|list|revoke` against the platform database: a key is printed once, only its
hash is stored, listing never shows a secret, revocation and expiry show in the list."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from agentplane_platform.cli import parse_expiry, run
from agentplane_platform.db import create_engine
from agentplane_platform.keys import split_key
from support.services import Server, create_database


def agentplane(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = run(list(argv), out=out)
    return code, out.getvalue()


def stored_hashes(url: str, tenant: str) -> dict[str, str]:
    async def read() -> dict[str, str]:
        engine = create_engine(url)
        try:
            async with engine.connect() as connection:
                rows = await connection.execute(
                    text("SELECT id, secret_hash FROM api_keys WHERE tenant = :t"), {"t": tenant}
                )
                return {row[0]: row[1] for row in rows}
        finally:
            await engine.dispose()

    return asyncio.run(read())


def lifecycle(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, printed = agentplane(
        "keys",
        "create",
        "--tenant",
        "acme",
        "--agent",
        "support-bot",
        "--expires",
        "30d",
        "--database-url",
        url,
    )
    assert code == 0
    key = printed.strip()
    parts = split_key(key)
    assert parts is not None, printed
    key_id, secret = parts
    assert "shown once" in capsys.readouterr().err
    # only the hash of the secret is stored
    assert stored_hashes(url, "acme") == {key_id: hashlib.sha256(secret.encode()).hexdigest()}

    code, other = agentplane(
        "keys", "create", "--tenant", "acme", "--name", "ci", "--format", "json", "--database-url", url
    )
    other_id = json.loads(other)["id"]
    code, listed = agentplane("keys", "list", "--tenant", "acme", "--format", "json", "--database-url", url)
    assert code == 0
    rows = {row["id"]: row for row in json.loads(listed)}
    assert set(rows) == {key_id, other_id}
    assert rows[key_id]["agents"] == ["support-bot"]
    assert rows[key_id]["state"] == "active"
    assert rows[key_id]["expires"] is not None
    assert secret not in listed
    # scoped listing: a key for one agent does not show for another
    _, only = agentplane(
        "keys", "list", "--tenant", "acme", "--agent", "billing", "--format", "json", "--database-url", url
    )
    assert [row["id"] for row in json.loads(only)] == [other_id]

    assert (
        agentplane("keys", "revoke", key, "--tenant", "acme", "--database-url", url)[0] == 0
    )  # the key itself
    _, table = agentplane("keys", "list", "--tenant", "acme", "--database-url", url)
    assert f"{key_id}  cli   support-bot  revoked" in table
    assert agentplane("keys", "revoke", key_id, "--tenant", "acme", "--database-url", url)[0] == 1
    # another tenant cannot revoke (or see) acme's keys
    assert agentplane("keys", "revoke", other_id, "--tenant", "globex", "--database-url", url)[0] == 1
    _, theirs = agentplane("keys", "list", "--tenant", "globex", "--format", "json", "--database-url", url)
    assert json.loads(theirs) == []


@pytest.mark.postgres
def test_keys_on_postgresql(postgres: Server, capsys: pytest.CaptureFixture[str]) -> None:
    lifecycle(create_database(postgres, "keys_cli"), capsys)


def test_keys_on_the_sqlite_database_of_agentplane_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lifecycle(f"sqlite:///{tmp_path / 'agentplane.db'}", capsys)


def test_bad_input_is_refused_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AGENTPLANE_DATABASE_URL", raising=False)
    assert agentplane("keys", "list", "--tenant", "acme")[0] == 2
    assert "AGENTPLANE_DATABASE_URL" in capsys.readouterr().err
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    assert agentplane("keys", "create", "--tenant", "Not_A_Tenant", "--database-url", url)[0] == 2
    assert (
        agentplane("keys", "create", "--tenant", "acme", "--expires", "soon", "--database-url", url)[0] == 2
    )
    assert "give a duration" in capsys.readouterr().err
    now = datetime(2026, 11, 30, 12, tzinfo=UTC)
    assert parse_expiry("12h", now) == now + timedelta(hours=12)
    assert parse_expiry("2027-01-31", now) == datetime(2027, 1, 31, tzinfo=UTC)
    with pytest.raises(ValueError, match="in the past"):
        parse_expiry("2026-01-01", now)


def rotation(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    common = ("--tenant", "acme", "--database-url", url)
    code, printed = agentplane(
        "keys", "create", *common, "--name", "billing", "--agent", "support-bot", "--role", "admin",
        "--expires", "30d", "--tokens-per-minute", "500", "--requests-per-minute", "7", "--format", "json",
    )  # fmt: skip
    assert code == 0
    old_id = json.loads(printed)["id"]
    before = datetime.now(UTC)
    code, printed = agentplane("keys", "rotate", old_id, *common, "--overlap", "2h", "--format", "json")
    after = datetime.now(UTC)
    assert code == 0, capsys.readouterr().err
    rotated = json.loads(printed)
    new_id, new_key = rotated["id"], rotated["key"]
    assert rotated["replaces"] == old_id
    assert new_id != old_id
    new_secret = (split_key(new_key) or ("", ""))[1]
    assert stored_hashes(url, "acme")[new_id] == hashlib.sha256(new_secret.encode()).hexdigest()

    _, listed = agentplane("keys", "list", *common, "--format", "json")
    rows = {row["id"]: row for row in json.loads(listed)}
    assert new_secret not in listed
    old, new = rows[old_id], rows[new_id]
    for field in ("name", "agents", "roles", "tokens_per_minute", "requests_per_minute"):
        assert new[field] == old[field], field
    assert (new["name"], new["roles"], new["requests_per_minute"]) == ("billing", ["admin"], 7)
    # both work during the overlap; the old one then expires, the new one keeps a 30-day lifetime
    assert old["state"] == new["state"] == "active"
    old_expires = datetime.fromisoformat(old["expires"])
    assert before + timedelta(hours=2) <= old_expires <= after + timedelta(hours=2)
    assert old_expires == datetime.fromisoformat(rotated["old_expires"])
    # (the lifetime is counted from the database's created_at: SQLite's has whole seconds)
    new_expires = datetime.fromisoformat(new["expires"])
    assert (
        before + timedelta(days=30) - timedelta(seconds=2)
        <= new_expires
        <= after + timedelta(days=30, seconds=2)
    )

    # an overlap never extends an earlier expiry
    code, printed = agentplane("keys", "create", *common, "--expires", "1h", "--format", "json")
    short_id = json.loads(printed)["id"]
    _, listed = agentplane("keys", "list", *common, "--format", "json")
    short_expires = {row["id"]: row["expires"] for row in json.loads(listed)}[short_id]
    assert agentplane("keys", "rotate", short_id, *common, "--overlap", "7d")[0] == 0
    _, listed = agentplane("keys", "list", *common, "--format", "json")
    assert {row["id"]: row["expires"] for row in json.loads(listed)}[short_id] == short_expires
    capsys.readouterr()

    # a zero overlap ends the old key now; a key that never expires is replaced by one that never does
    _, printed = agentplane("keys", "create", *common, "--format", "json")
    forever_id = json.loads(printed)["id"]
    _, printed = agentplane("keys", "rotate", forever_id, *common, "--overlap", "0m", "--format", "json")
    forever_new = json.loads(printed)["id"]
    _, listed = agentplane("keys", "list", *common, "--format", "json")
    rows = {row["id"]: row for row in json.loads(listed)}
    assert rows[forever_id]["state"] == "expired"
    assert (rows[forever_new]["state"], rows[forever_new]["expires"]) == ("active", None)

    # only an active key of the tenant can be rotated
    assert agentplane("keys", "rotate", forever_id, *common)[0] == 1
    assert "is expired" in capsys.readouterr().err
    assert agentplane("keys", "revoke", new_id, *common)[0] == 0
    assert agentplane("keys", "rotate", new_id, *common)[0] == 1
    assert "is revoked" in capsys.readouterr().err
    assert agentplane("keys", "rotate", old_id, "--tenant", "globex", "--database-url", url)[0] == 1
    assert "has no key" in capsys.readouterr().err
    _, theirs = agentplane("keys", "list", "--tenant", "globex", "--format", "json", "--database-url", url)
    assert json.loads(theirs) == []
    assert agentplane("keys", "rotate", old_id, *common, "--overlap", "8d")[0] == 2
    assert "longer than 7 days" in capsys.readouterr().err
    assert agentplane("keys", "rotate", old_id, *common, "--overlap", "soon")[0] == 2
    assert "give a duration" in capsys.readouterr().err


@pytest.mark.postgres
def test_keys_rotate_on_postgresql(postgres: Server, capsys: pytest.CaptureFixture[str]) -> None:
    rotation(create_database(postgres, "keys_rotate_cli"), capsys)


def test_keys_rotate_on_sqlite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rotation(f"sqlite:///{tmp_path / 'agentplane.db'}", capsys)
