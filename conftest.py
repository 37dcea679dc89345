"""Session-wide pytest plugins: the real servers the tests run against (see tests/support/)."""

from pathlib import Path

import pytest

pytest_plugins = ["support.service_fixtures", "support.cluster_fixture"]

REPO = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def k8s_crd_dir() -> Path | None:
    """Every test cluster gets the generated CRDs from specs/crds/."""
    return REPO / "specs" / "crds"
