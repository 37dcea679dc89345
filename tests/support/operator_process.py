"""Run the real operator (`python -m agentplane_operator run`) against the test cluster.

The operator authenticates as its own ServiceAccount, with exactly the RBAC of `operator/deploy/`,
so every test also proves those permissions are enough. Its metrics are read from `/metrics`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agentplane_platform.contract import LLM_SECRET
from support.cluster import Cluster
from support.ports import free_port
from support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "operator" / "deploy"


def install_operator_rbac(cluster: Cluster, workdir: Path) -> Path:
    """Apply the operator's namespace, peering and RBAC from `operator/deploy/` (not its Deployment:
    the tests run the operator as a local process) and return a kubeconfig for its ServiceAccount."""
    for name in ("00-namespace.yaml", "10-crds.yaml"):
        cluster.kubectl("apply", "--server-side", "-f", str(DEPLOY / name))
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/clusterkopfpeerings.kopf.dev", "--timeout=60s"
    )
    for name in ("15-peering.yaml", "20-rbac.yaml"):
        cluster.kubectl("apply", "--server-side", "-f", str(DEPLOY / name))
    install_llm_secret(cluster, {"OPENAI_API_KEY": "sk-test"})
    token = cluster.kubectl(
        "create", "token", "agentplane-operator", "-n", "agentplane-system", "--duration=24h"
    ).stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": "agentplane-operator", "user": {"token": token}}],
        "contexts": [
            {
                "name": "operator",
                "context": {"cluster": admin["clusters"][0]["name"], "user": "agentplane-operator"},
            }
        ],
        "current-context": "operator",
    }
    path = workdir / "operator.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def install_llm_secret(cluster: Cluster, data: dict[str, str]) -> None:
    """The platform's LLM provider credentials (`agentplane-system/agentplane-llm`), which the
    operator copies into every tenant namespace — what a platform team creates off Azure."""
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": LLM_SECRET, "namespace": "agentplane-system"},
        "stringData": data,
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(secret))


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
"""Metric samples as `OperatorProcess.metrics` reads them: (name, labels) -> value."""


def total_of(samples: Samples, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


@dataclass
class OperatorProcess:
    """One running operator process."""

    process: subprocess.Popen[bytes]
    log: Path
    metrics_url: str

    def metrics(self) -> Samples:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            text = response.read().decode()
        samples = {}
        for line in text.splitlines():
            match = _SAMPLE.match(line)
            if match is None or line.startswith("#"):
                continue
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
            samples[(match["name"], labels)] = float(match["value"])
        return samples

    def total(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples whose labels include `labels`."""
        return total_of(self.metrics(), name, **labels)

    def writes(self) -> float:
        return self.total("agentplane_operator_api_writes_total")

    def reconciles(self, **labels: str) -> float:
        return self.total("agentplane_operator_reconcile_total", **labels)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye to the peers."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def operator_environment(
    *, redis_url: str, database_url: str, qdrant_path: Path, metrics_port: int, resync_seconds: float
) -> dict[str, str]:
    """The `AGENTPLANE_OPERATOR_*` settings the tests run the operator with (also what a benchmark
    renders the operator's objects with, without running it)."""
    return {
        "AGENTPLANE_OPERATOR_REDIS_URL": redis_url,
        "AGENTPLANE_OPERATOR_DATABASE_URL": database_url,
        "AGENTPLANE_OPERATOR_QDRANT_PATH": str(qdrant_path),
        # no Qdrant server here: agent pods get local mode of their own (kwok pods never run it)
        "AGENTPLANE_OPERATOR_RUNTIME_QDRANT_PATH": "/tmp/agentplane/qdrant",
        "AGENTPLANE_OPERATOR_METRICS_HOST": "127.0.0.1",
        "AGENTPLANE_OPERATOR_METRICS_PORT": str(metrics_port),
        "AGENTPLANE_OPERATOR_RESYNC_SECONDS": str(resync_seconds),
        # A SIGKILLed replica's peering record blocks the others until it expires.
        "AGENTPLANE_OPERATOR_PEERING_LIFETIME_SECONDS": "10",
        "AGENTPLANE_OPERATOR_RUNTIME_IMAGE": "registry.test/agentplane/runtime:test",
    }


def start_operator(
    cluster: Cluster,
    kubeconfig: Path,
    workdir: Path,
    *,
    redis_url: str,
    database_url: str,
    qdrant_path: Path,
    resync_seconds: float = 300.0,
    extra_env: dict[str, str] | None = None,
    launcher: Path | None = None,
) -> OperatorProcess:
    """Start the operator and wait until it serves `/healthz`; `launcher`: a Python file that runs the
    operator in its place (`python -m agentplane_operator`), given the same arguments."""
    port = free_port()
    log = workdir / f"operator-{port}.log"
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        **operator_environment(
            redis_url=redis_url, database_url=database_url, qdrant_path=qdrant_path,
            metrics_port=port, resync_seconds=resync_seconds,
        ),
        **(extra_env or {}),
    }  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, *([str(launcher)] if launcher else ["-m", "agentplane_operator"]), "run"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
        )
    running = OperatorProcess(process, log, f"http://127.0.0.1:{port}/metrics")

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"operator exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    try:
        wait_for("the operator's /healthz", healthy, timeout=60)
    except BaseException:
        running.kill()
        raise
    return running


def delete_tenants(cluster: Cluster, *names: str) -> None:
    """Delete Tenants (their finalizer needs a running operator) and wait until the namespaces they
    owned are gone too, so a test that reuses a name never meets a namespace still terminating."""
    for name in names:
        cluster.kubectl("delete", "tenant", name, "--ignore-not-found", "--wait=true", "--timeout=90s")
    for name in names:
        namespace = get(cluster, "namespace", f"tenant-{name}")
        owners = (namespace or {}).get("metadata", {}).get("ownerReferences") or []
        # Only a namespace the Tenant owned goes with it (garbage collection); one made by hand stays.
        if any(o.get("kind") == "Tenant" and o.get("name") == name for o in owners):
            cluster.kubectl("wait", "--for=delete", f"namespace/tenant-{name}", "--timeout=120s")


def apply(cluster: Cluster, *manifests: dict[str, Any]) -> None:
    """`kubectl apply` the manifests as the admin (as a tenant team or Flux would)."""
    cluster.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(m) for m in manifests))


def get(cluster: Cluster, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
    where = ["-n", namespace] if namespace else []
    result = cluster.kubectl("get", kind, name, *where, "-o", "json", check=False)
    if result.returncode != 0:
        if "NotFound" in result.stderr:
            return None
        raise AssertionError(result.stderr)
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def condition(obj: dict[str, Any] | None, kind: str = "Ready") -> dict[str, Any]:
    """The object's condition of `kind` (empty when absent)."""
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return {}


def events(cluster: Cluster, namespace: str, name: str) -> list[tuple[str, str, str]]:
    """(type, reason, message) of the Events about object `name` in `namespace`."""
    listed = json.loads(
        cluster.kubectl(
            "get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}", "-o", "json"
        ).stdout
    )
    return [(e["type"], e["reason"], e.get("message", "")) for e in listed["items"]]
