"""Pytest fixtures for the test Kubernetes control plane (see ``support.cluster``).

Register them in a conftest.py::

    from support.cluster_fixture import k8s, k8s_crd_dir  # noqa: F401

``k8s`` is session-scoped: one control plane per test session (per xdist
worker). Override ``k8s_crd_dir`` in a conftest to have CRDs applied (and
Established) before the first test runs.

``real_cluster`` (module-scoped) is a control plane plus one real node on
which pods that opt in actually run (``support.node``); ``real_node`` is that
node. Only one real node runs on a machine at a time.

Set ``AGENTPLANE_TEST_CLUSTER_DIR`` to the ``--dir`` of a cluster started with
``python tests/support/cluster.py up`` to reuse it instead of starting one. The admission policies
such a cluster enforces (``make cluster`` installs the dev ones) are suspended while the session
uses it, as the tests expect a cluster like the one they start, and put back afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support import node
from support.admission import AdmissionProbes, ApiServer
from support.cluster import Cluster, ClusterError, apply_crds, ensure_binaries, load_cluster, running_cluster
from support.service_fixtures import unavailable

REUSE_ENV = "AGENTPLANE_TEST_CLUSTER_DIR"
PLATFORM_POLICIES = "app.kubernetes.io/part-of=agentplane"
"""The label of the platform's admission policies and bindings (`policies/*.yaml`)."""


@contextlib.contextmanager
def policies_suspended(cluster: Cluster) -> Iterator[None]:
    """Remove the platform's ValidatingAdmissionPolicies and bindings from a cluster until the API
    server no longer enforces them; apply them again on exit. (Their TierLimits stay.)"""
    out = cluster.kubectl(
        "get",
        "validatingadmissionpolicies,validatingadmissionpolicybindings",
        "-l",
        PLATFORM_POLICIES,
        "-o",
        "json",
    ).stdout
    found: list[dict[str, Any]] = json.loads(out)["items"]
    if not found:
        yield
        return
    keep = ("name", "labels", "annotations")
    saved = [
        {
            **{k: v for k, v in item.items() if k != "status"},
            "metadata": {k: item["metadata"][k] for k in keep if k in item["metadata"]},
        }
        for item in found
    ]
    listing = json.dumps({"apiVersion": "v1", "kind": "List", "items": saved})
    probes = AdmissionProbes(cluster, ApiServer(cluster))
    probes.install()  # before the deletions: once it is not enforced, neither are they
    try:
        cluster.kubectl("delete", "-f", "-", "--ignore-not-found", input=listing)
    finally:
        probes.uninstall()
    try:
        yield
    finally:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=listing)


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
        with policies_suspended(cluster):
            yield cluster
        return
    workdir = tmp_path_factory.mktemp("k8s")
    with running_cluster(workdir, k8s_crd_dir) as cluster:
        yield cluster


def require_real_node() -> Path:
    """Skip (locally) or fail (in CI) unless this machine can run the real node; return the bin dir."""
    try:
        bin_dir = ensure_binaries()
    except ClusterError as exc:
        unavailable("real Kubernetes node", str(exc))
        raise AssertionError("unreachable") from exc
    missing = node.missing_requirements(bin_dir)
    if missing:
        unavailable("real Kubernetes node", node.requirements_hint(missing))
    return bin_dir


@pytest.fixture(scope="module")
def real_cluster(tmp_path_factory: pytest.TempPathFactory, k8s_crd_dir: Path | None) -> Iterator[Cluster]:
    """A control plane plus one real node (``support.node``), for one test module.

    ``cluster.real_node`` is set; pods run there only with ``node.TOLERATION`` and
    ``node.NODE_SELECTOR`` (``node.on_real_node(spec)``). Reuses the cluster of
    ``$AGENTPLANE_TEST_CLUSTER_DIR`` when that one has a real node. Skipped with the reason when
    the machine cannot run the node (not root, packages missing), except in CI, where that fails.
    """
    reuse = os.environ.get(REUSE_ENV)
    if reuse:
        cluster = load_cluster(Path(reuse))
        if cluster is not None and cluster.real_node is not None:
            if k8s_crd_dir is not None:
                apply_crds(cluster, k8s_crd_dir)
            with policies_suspended(cluster):
                yield cluster
            return
    bin_dir = require_real_node()
    with running_cluster(
        tmp_path_factory.mktemp("k8s-real"), k8s_crd_dir, bin_dir=bin_dir, real_node=True
    ) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def real_node(real_cluster: Cluster) -> node.RealNode:
    """The real node of :func:`real_cluster`: ``name``, ``load_image()``, ``exec_in_node()``."""
    assert real_cluster.real_node is not None
    return real_cluster.real_node
