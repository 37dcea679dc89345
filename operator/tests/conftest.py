"""Fixtures of the operator's own tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def operator_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The least environment `OperatorSettings()` starts from (its required stores); returns the
    monkeypatch, to set more."""
    monkeypatch.setenv("AGENTPLANE_OPERATOR_REDIS_URL", "redis://r/0")
    monkeypatch.setenv("AGENTPLANE_OPERATOR_DATABASE_URL", "sqlite:///x.db")
    monkeypatch.setenv("AGENTPLANE_OPERATOR_QDRANT_URL", "http://q:6333")
    return monkeypatch
