"""`agentplane plan --cluster` against a real API server: the live objects are the base, and what the
API server refuses of the new ones (here the Prompt CRD's transition rule) is an error, while the
server-side dry run writes nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.cluster import Cluster

pytestmark = pytest.mark.k8s

REPO = Path(__file__).resolve().parents[2]
TENANT = "planned"
NAMESPACE = f"tenant-{TENANT}"


BYSTANDER = {
    "apiVersion": "agentplane.io/v1alpha1",
    "kind": "Tenant",
    "metadata": {
        "name": "bystander",
        "labels": {"agentplane.io/team": "b", "agentplane.io/cost-center": "cc-1"},
    },
    "spec": {"owners": [{"name": "b@example.test"}], "allowedModels": ["azure/gpt-4o-mini"]},
}
"""A live tenant the spec copy does not hold."""


@pytest.fixture
def applied(k8s: Cluster, tmp_path: Path) -> Iterator[Path]:
    """A copy of globex renamed `planned`, applied to the cluster; the copy's root."""
    tree = tmp_path / "specs" / "tenants" / TENANT
    shutil.copytree(REPO / "specs" / "tenants" / "globex", tree)
    for path in tree.rglob("*.yaml"):
        path.write_text(path.read_text().replace("globex", TENANT))
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    k8s.kubectl("apply", "-f", "-", input=yaml.safe_dump(namespace))
    k8s.kubectl("apply", "--server-side", "--field-manager=flux", "-R", "-f", str(tree))
    k8s.kubectl("apply", "-f", "-", input=yaml.safe_dump(BYSTANDER))
    yield tmp_path
    k8s.kubectl("delete", "-R", "-f", str(tree), "--ignore-not-found", "--wait=false")
    k8s.kubectl("delete", "tenant", "bystander", "--ignore-not-found", "--wait=false")


def _plan(k8s: Cluster, root: Path, path: str = f"specs/tenants/{TENANT}") -> tuple[int, dict[str, Any]]:
    env = {**k8s.env(), "PATH": f"{k8s.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        [sys.executable, "-m", "agentplane_platform", "plan", "--cluster", "--format", "json",
         "--policies", str(REPO / "policies"), "--environment", "dev", path],
        cwd=root, env=env, capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def _tenant(plan: dict[str, Any]) -> dict[str, Any]:
    return next(t for t in plan["tenants"] if t["name"] == TENANT)


def test_plan_against_the_live_cluster(k8s: Cluster, applied: Path) -> None:
    tree = applied / "specs" / "tenants" / TENANT
    code, plan = _plan(k8s, applied)
    assert plan["base"]["ref"] == "cluster"
    assert plan["base"]["how"].startswith("the live cluster, kubeconfig context ")
    assert (code, plan["tenants"]) == (0, []), (
        "an applied tenant has no change; other tenants are out of scope"
    )
    code, plan = _plan(k8s, applied, "specs/tenants")
    assert not any(t["name"] == TENANT for t in plan["tenants"])
    bystander = next(t for t in plan["tenants"] if t["name"] == "bystander")
    assert bystander["action"] == "removed"  # the whole tree does not hold it: Flux would prune it

    tenant_file = tree / "tenant.yaml"
    tenant_file.write_text(tenant_file.read_text().replace("maxAgents: 3", "maxAgents: 4"))
    prompt_file = tree / "prompts" / "oncall.yaml"
    live_template = k8s.kubectl_json("get", "prompt", "oncall", "-n", NAMESPACE)["spec"]["template"]
    prompt_file.write_text(prompt_file.read_text().replace("You assist", "You really assist", 1))
    code, plan = _plan(k8s, applied)
    assert code == 2
    tenant = _tenant(plan)
    assert {"path": "quotas.maxAgents", "before": 3, "after": 4} in tenant["quotas"]
    (refusal,) = [p for p in tenant["problems"] if p["kind"] == "Prompt"]
    assert refusal["name"] == "oncall"
    assert refusal["file"] == "specs/tenants/planned/prompts/oncall.yaml"
    assert "the API server refuses it (server-side dry run)" in refusal["message"]
    assert "changing the template requires a higher version" in refusal["message"]
    rolled = [r["agent"] for r in tenant["rolls"]]
    assert rolled == ["oncall-helper"]
    assert k8s.kubectl_json("get", "prompt", "oncall", "-n", NAMESPACE)["spec"]["template"] == live_template
    assert k8s.kubectl_json("get", "tenant", TENANT)["spec"]["quotas"]["maxAgents"] == 3
