"""Helpers of the operator's own tests."""

from __future__ import annotations

import pytest


def least_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The least environment `OperatorSettings()` starts from: its required stores."""
    monkeypatch.setenv("AGENTPLANE_OPERATOR_REDIS_URL", "redis://r/0")
    monkeypatch.setenv("AGENTPLANE_OPERATOR_DATABASE_URL", "sqlite:///x.db")
    monkeypatch.setenv("AGENTPLANE_OPERATOR_QDRANT_URL", "http://q:6333")
