"""Session-wide pytest plugins: the real servers the tests run against (see tests/support/)."""

import os
from pathlib import Path

import pytest

# Nothing may phone home, whether the tests run through `make test` (which exports these) or a bare
# `uv run pytest`: litellm would try to fetch its cost map at import, Hugging Face libraries the hub.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytest_plugins = ["support.service_fixtures", "support.cluster_fixture"]

REPO = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def k8s_crd_dir() -> Path | None:
    """Every test cluster gets the generated CRDs from specs/crds/."""
    return REPO / "specs" / "crds"
