"""Session-wide pytest plugins: the real servers the tests run against (see tests/support/)."""

import os
from pathlib import Path

import pytest

# Nothing may phone home, whether the tests run through `make test` (which exports these) or a bare
# `uv run pytest`: litellm would try to fetch its cost map at import, Hugging Face libraries the hub.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytest_plugins = ["support.service_fixtures", "support.cluster_fixture", "support.example_specs"]

REPO = Path(__file__).resolve().parent

# What `make test-fast` leaves out, marked here once rather than in each module: a test that needs a
# Kubernetes control plane (it asks for a cluster fixture, or lives in a folder of cluster tests),
# one that builds images (buildah), and one that needs the `dense` extra (torch).
CLUSTER_FIXTURES = frozenset({"k8s", "real_cluster"})
CLUSTER_FOLDERS = ("tests/k8s/", "tests/cluster/", "tests/e2e/")
IMAGE_FOLDERS = ("tests/images/",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        where = item.path.relative_to(REPO).as_posix() if item.path.is_relative_to(REPO) else ""
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & CLUSTER_FIXTURES or where.startswith(CLUSTER_FOLDERS):
            item.add_marker(pytest.mark.k8s)
        if where.startswith(IMAGE_FOLDERS):
            item.add_marker(pytest.mark.images)


@pytest.fixture(scope="session")
def k8s_crd_dir() -> Path | None:
    """Every test cluster gets the generated CRDs from specs/crds/."""
    return REPO / "specs" / "crds"
