"""Pytest fixtures for the test Kubernetes control plane (see ``support.cluster``).

Register them in a conftest.py::

    from support.cluster_fixture import k8s, k8s_crd_dir  # noqa: F401

``k8s`` is session-scoped: one control plane per test session (per xdist
worker). Override ``k8s_crd_dir`` in a conftest to have CRDs applied (and
Established) before the first test runs.

Set ``AGENTPLANE_TEST_CLUSTER_DIR`` to the ``--dir`` of a cluster started with
``python tests/support/cluster.py up`` to reuse it instead of starting one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.cluster import Cluster, apply_crds, load_cluster, running_cluster

REUSE_ENV = "AGENTPLANE_TEST_CLUSTER_DIR"


@pytest.fixture(scope="session")
def k8s_crd_dir() -> Path | None:
    """CRD manifests (file or directory) to apply to the cluster; none by default."""
    return None


@pytest.fixture(scope="session")
def k8s(tmp_path_factory: pytest.TempPathFactory, k8s_crd_dir: Path | None) -> Iterator[Cluster]:
    """A running control plane (etcd, apiserver, controller-manager, scheduler, kwok)."""
    reuse = os.environ.get(REUSE_ENV)
    if reuse:
        cluster = load_cluster(Path(reuse))
        if cluster is None:
            pytest.fail(f"${REUSE_ENV}={reuse} but no running cluster found there")
        if k8s_crd_dir is not None:
            apply_crds(cluster, k8s_crd_dir)
        yield cluster
        return
    workdir = tmp_path_factory.mktemp("k8s")
    with running_cluster(workdir, k8s_crd_dir) as cluster:
        yield cluster
