"""pytest fixtures for the real servers: started lazily, once per session, stopped at the end.

A test that needs a server it cannot get is skipped with the reason — except in CI (`CI=true`),
where a missing server is a failure.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.services import Server, ServiceUnavailable, start_postgres, start_redis


def in_ci() -> bool:
    """Whether we run in CI, where nothing may be skipped for a missing service."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def unavailable(what: str, why: str) -> None:
    """Skip (locally) or fail (in CI) a test whose server cannot run."""
    message = f"{what} unavailable: {why}"
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _serve(tmp: pytest.TempPathFactory, start: Callable[[Path], Server], what: str) -> Iterator[Server]:
    try:
        server = start(tmp.mktemp(what))
    except (ServiceUnavailable, OSError) as exc:
        unavailable(what, str(exc))
        raise AssertionError("unreachable") from exc
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A PostgreSQL server with an empty `agentplane` database."""
    yield from _serve(tmp_path_factory, start_postgres, "postgresql")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A Redis server."""
    yield from _serve(tmp_path_factory, start_redis, "redis")
