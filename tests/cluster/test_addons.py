"""The third-party add-ons (tests/support/addons.py) work as the operator will rely on them:
kstatus' verdicts, the upstream CRDs on the API server, and Traefik routing a Gateway API
HTTPRoute to a real backend."""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from support.addons import (
    CRD_SETS,
    TRAEFIK_CONTROLLER_NAME,
    AddonUnavailable,
    KStatus,
    Traefik,
    build_addon,
    crd_files,
    install_crds,
    install_traefik_rbac,
    kstatus,
    kstatus_many,
    running_traefik,
    service_account_kubeconfig,
)
from support.cluster import Cluster, ClusterError, KubectlError
from support.service_fixtures import unavailable
from support.waiting import wait_for

TIMEOUT = 90.0
ROUTE_LABEL = {"agentplane.io/gateway": "shared"}


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Cluster:
    """The session's control plane; skipped (failed under CI=true) when it cannot be built."""
    try:
        k8s: Cluster = request.getfixturevalue("k8s")
    except ClusterError as exc:
        unavailable("Kubernetes control plane", str(exc))
        raise AssertionError("unreachable") from exc
    return k8s


@pytest.fixture(scope="module")
def kstatus_cli() -> Path:
    try:
        return build_addon("kstatus") / "kstatus"
    except AddonUnavailable as exc:
        unavailable("kstatus CLI", str(exc))
        raise AssertionError("unreachable") from exc


@pytest.fixture(scope="module")
def traefik_bin() -> Path:
    try:
        return build_addon("traefik") / "traefik"
    except AddonUnavailable as exc:
        unavailable("traefik", str(exc))
        raise AssertionError("unreachable") from exc


@pytest.fixture(scope="module")
def crds_built() -> None:
    try:
        build_addon("crds")
    except AddonUnavailable as exc:
        unavailable("upstream CRDs", str(exc))


def apply(cluster: Cluster, *objects: dict[str, Any]) -> None:
    cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
    )


def make_namespace(cluster: Cluster, prefix: str, labels: dict[str, str] | None = None) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    apply(
        cluster, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}}
    )
    return name


def conditions(obj: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in obj.get("status", {}).get("conditions", [])}


# --------------------------------------------------------------------------
# kstatus


def custom(conds: list[dict[str, str]], *, generation: int = 3, observed: int = 3) -> dict[str, Any]:
    """An object of a kind kstatus has no special rules for (like our Agent)."""
    return {
        "apiVersion": "agentplane.io/v1alpha1",
        "kind": "Agent",
        "metadata": {"name": "bot", "namespace": "tenant-acme", "generation": generation},
        "status": {"observedGeneration": observed, "conditions": conds},
    }


def deployment(*, available: bool) -> dict[str, Any]:
    ready = 2 if available else 1
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "bot", "namespace": "tenant-acme", "generation": 1},
        "spec": {"replicas": 2},
        "status": {
            "observedGeneration": 1,
            "replicas": 2,
            "updatedReplicas": 2,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "conditions": [{"type": "Available", "status": "True" if available else "False"}],
        },
    }


def test_kstatus_verdicts_follow_the_conventions(kstatus_cli: Path) -> None:
    stalled = {
        "type": "Stalled",
        "status": "True",
        "reason": "PromptNotFound",
        "message": "prompt greet v2 missing",
    }
    reconciling = {"type": "Reconciling", "status": "True", "reason": "Progressing", "message": "rolling out"}
    ready = {"type": "Ready", "status": "True", "reason": "Deployed", "message": ""}
    verdicts = kstatus_many(
        [
            custom([ready, stalled]),
            custom([reconciling]),
            custom([ready]),
            custom([ready], generation=4, observed=3),
            custom([{"type": "Ready", "status": "False", "reason": "Deploying", "message": "0/2 ready"}]),
            deployment(available=True),
            deployment(available=False),
            {**custom([ready]), "metadata": {"name": "bot", "deletionTimestamp": "2026-01-01T00:00:00Z"}},
        ],
        binary=kstatus_cli,
    )
    assert [v.status for v in verdicts] == [
        "Failed",
        "InProgress",
        "Current",
        "InProgress",
        "InProgress",
        "Current",
        "InProgress",
        "Terminating",
    ]
    assert verdicts[0].message == "prompt greet v2 missing"
    assert verdicts[1].message == "rolling out"
    assert "generation" in verdicts[3].message
    assert verdicts[5] == KStatus("Current", "Deployment is available. Replicas: 2")


def test_kstatus_reads_lists_and_reports_bad_input(kstatus_cli: Path) -> None:
    kube_list = {"apiVersion": "v1", "kind": "List", "items": [deployment(available=True), custom([])]}
    assert [v.status for v in kstatus_many([kube_list], binary=kstatus_cli)] == ["Current", "Current"]
    # The CLI itself reads lists, arrays and a stream of JSON values.
    stream = json.dumps(kube_list) + "\n" + json.dumps([custom([]), custom([])])
    out = subprocess.run([kstatus_cli], input=stream, capture_output=True, text=True, check=True).stdout
    assert [json.loads(line)["status"] for line in out.splitlines()] == ["Current"] * 4
    bad = subprocess.run([kstatus_cli], input="{not json", capture_output=True, text=True, check=False)
    assert bad.returncode == 2
    assert "input value 1" in bad.stderr
    # A field of the wrong type is the object's problem (Unknown), not the CLI's.
    broken = {**custom([]), "metadata": {"name": "bot", "generation": "three"}}
    assert kstatus(broken, binary=kstatus_cli).status == "Unknown"


@pytest.mark.k8s
def test_kstatus_of_a_live_deployment(cluster: Cluster, kstatus_cli: Path) -> None:
    ns = make_namespace(cluster, "kstatus")
    try:
        manifest = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
                },
            },
        }
        apply(cluster, manifest)

        def current() -> KStatus | None:
            verdict = kstatus(cluster.kubectl_json("get", "deployment/web", "-n", ns), binary=kstatus_cli)
            return verdict if verdict.status == "Current" else None

        assert wait_for("kstatus Current", current, timeout=TIMEOUT).message.startswith(
            "Deployment is available"
        )
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


# --------------------------------------------------------------------------
# Upstream CRDs


VALID: dict[str, dict[str, Any]] = {
    "PodMonitor": {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": "agent-bot"},
        "spec": {
            "selector": {"matchLabels": {"agentplane.io/agent": "bot"}},
            "podMetricsEndpoints": [{"port": "http", "path": "/metrics", "interval": "30s"}],
        },
    },
    "ServiceMonitor": {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "agent-bot"},
        "spec": {
            "selector": {"matchLabels": {"agentplane.io/agent": "bot"}},
            "endpoints": [{"port": "http", "path": "/metrics", "interval": "30s"}],
        },
    },
    "SecretProviderClass": {
        "apiVersion": "secrets-store.csi.x-k8s.io/v1",
        "kind": "SecretProviderClass",
        "metadata": {"name": "agent-bot"},
        "spec": {
            "provider": "azure",
            "parameters": {
                "clientID": "00000000-0000-0000-0000-000000000001",
                "keyvaultName": "agentplane-dev",
                "tenantId": "00000000-0000-0000-0000-000000000002",
                "objects": "array:\n  - |\n    objectName: llm-openai-api-key\n    objectType: secret\n",
            },
            "secretObjects": [
                {
                    "secretName": "agent-bot-llm",
                    "type": "Opaque",
                    "data": [{"objectName": "llm-openai-api-key", "key": "OPENAI_API_KEY"}],
                }
            ],
        },
    },
    "GitRepository": {
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "GitRepository",
        "metadata": {"name": "tenants"},
        "spec": {
            "url": "https://git.example.invalid/agentplane/specs.git",
            "interval": "1m",
            "ref": {"branch": "main"},
        },
    },
}

# One schema violation per kind, and what the API server says about it.
INVALID: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "PodMonitor": (lambda o: o["spec"]["podMetricsEndpoints"][0].update(interval="30 seconds"), "interval"),
    "ServiceMonitor": (lambda o: o["spec"]["endpoints"][0].update(scheme="gopher"), "scheme"),
    "SecretProviderClass": (lambda o: o["spec"].update(provider=5), "spec.provider"),
    "GitRepository": (lambda o: o["spec"].update(url="ftp://git.example.invalid/specs"), "spec.url"),
}


def dry_run(cluster: Cluster, namespace: str, obj: dict[str, Any]) -> None:
    cluster.kubectl("create", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(obj))


@pytest.mark.k8s
def test_upstream_crds_install_and_validate(cluster: Cluster, crds_built: None) -> None:
    files = crd_files()
    applied = install_crds(cluster)
    assert sorted(n.split("/", 1)[1] for n in applied) == sorted(files)
    for name in (
        "gatewayclasses.gateway.networking.k8s.io",
        "gateways.gateway.networking.k8s.io",
        "httproutes.gateway.networking.k8s.io",
        "referencegrants.gateway.networking.k8s.io",
        "podmonitors.monitoring.coreos.com",
        "servicemonitors.monitoring.coreos.com",
        "secretproviderclasses.secrets-store.csi.x-k8s.io",
        "gitrepositories.source.toolkit.fluxcd.io",
    ):
        assert name in files
    assert set(crd_files(CRD_SETS[0])) < set(files)

    ns = make_namespace(cluster, "crds")
    try:
        for kind, obj in VALID.items():
            dry_run(cluster, ns, obj)
            bad = json.loads(json.dumps(obj))
            break_it, field = INVALID[kind]
            break_it(bad)
            with pytest.raises(KubectlError) as rejected:
                dry_run(cluster, ns, bad)
            assert field in str(rejected.value), kind
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


# --------------------------------------------------------------------------
# Traefik with the Gateway API provider


@dataclass
class Backend:
    """A real HTTP server on 127.0.0.1 recording the paths it was asked for."""

    port: int
    paths: list[str]


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    paths: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            paths.append(self.path)
            body = json.dumps({"path": self.path}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Backend(port=server.server_address[1], paths=paths)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def traefik(
    cluster: Cluster, traefik_bin: Path, crds_built: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Traefik]:
    """Traefik on the host, as a ServiceAccount holding only TRAEFIK_GATEWAY_RULES."""
    install_crds(cluster, "gateway-api")
    install_traefik_rbac(cluster, namespace="traefik", service_account="traefik")
    workdir = tmp_path_factory.mktemp("traefik")
    kubeconfig = service_account_kubeconfig(
        cluster, namespace="traefik", name="traefik", path=workdir / "traefik.kubeconfig"
    )
    with running_traefik(cluster, workdir, kubeconfig=kubeconfig, binary=traefik_bin) as process:
        yield process


@dataclass
class Gateway:
    name: str
    namespace: str
    class_name: str


@pytest.fixture(scope="module")
def gateway(cluster: Cluster, traefik: Traefik) -> Iterator[Gateway]:
    """A GatewayClass for Traefik and a Gateway with one HTTP listener on Traefik's `web`
    entryPoint, taking routes from namespaces labelled ROUTE_LABEL."""
    suffix = uuid.uuid4().hex[:8]
    gw = Gateway(name="shared", namespace=make_namespace(cluster, "gateway"), class_name=f"traefik-{suffix}")
    apply(
        cluster,
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GatewayClass",
            "metadata": {"name": gw.class_name},
            "spec": {"controllerName": TRAEFIK_CONTROLLER_NAME},
        },
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": gw.name, "namespace": gw.namespace},
            "spec": {
                "gatewayClassName": gw.class_name,
                "listeners": [
                    {
                        "name": "http",
                        "protocol": "HTTP",
                        "port": traefik.web_port,
                        "allowedRoutes": {
                            "namespaces": {"from": "Selector", "selector": {"matchLabels": ROUTE_LABEL}}
                        },
                    }
                ],
            },
        },
    )
    try:
        yield gw
    finally:
        cluster.kubectl("delete", "namespace", gw.namespace, "--wait=false", check=False)
        cluster.kubectl("delete", "gatewayclass", gw.class_name, "--wait=false", check=False)


def agent_backend(namespace: str, port: int) -> list[dict[str, Any]]:
    """A Service without a selector and a hand-written EndpointSlice pointing at 127.0.0.1:port
    (kwok pods have fake IPs; this is how a route reaches a real process).

    The API server refuses loopback addresses in IPv4 slices, and FQDN slices want a name of at
    least two labels (not ``localhost``); "127.0.0.1" is one, and Traefik, which does not look
    at the address type, dials it. Everything else is as for a pod: the Service port's name
    selects the slice port, and only ready endpoints count."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "bot", "namespace": namespace},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": port, "protocol": "TCP"}]},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "bot-local",
                "namespace": namespace,
                "labels": {
                    "kubernetes.io/service-name": "bot",
                    "endpointslice.kubernetes.io/managed-by": "agentplane-tests",
                },
            },
            "addressType": "FQDN",
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
        },
    ]


def http_route(namespace: str, gw: Gateway, prefix: str) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "bot", "namespace": namespace},
        "spec": {
            "parentRefs": [{"name": gw.name, "namespace": gw.namespace, "sectionName": "http"}],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": prefix}}],
                    "filters": [
                        {
                            "type": "URLRewrite",
                            "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}},
                        }
                    ],
                    "backendRefs": [{"name": "bot", "port": 80}],
                }
            ],
        },
    }


def route_conditions(cluster: Cluster, namespace: str) -> dict[str, dict[str, Any]]:
    """Conditions Traefik set on the HTTPRoute `bot` (type -> condition)."""
    route = cluster.kubectl_json("get", "httproute/bot", "-n", namespace)
    for parent in route.get("status", {}).get("parents", []):
        if parent.get("controllerName") == TRAEFIK_CONTROLLER_NAME:
            return {c["type"]: c for c in parent.get("conditions", [])}
    return {}


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.k8s
def test_traefik_routes_an_httproute_with_prefix_rewrite(
    cluster: Cluster, traefik: Traefik, gateway: Gateway, backend: Backend
) -> None:
    ns = make_namespace(cluster, "tenant", ROUTE_LABEL)
    try:
        apply(cluster, *agent_backend(ns, backend.port), http_route(ns, gateway, "/t/acme/a/bot/"))

        def route_ok() -> dict[str, dict[str, Any]] | None:
            conds = route_conditions(cluster, ns)
            ok = all(conds.get(t, {}).get("status") == "True" for t in ("Accepted", "ResolvedRefs"))
            return conds if ok else None

        wait_for("HTTPRoute Accepted and ResolvedRefs", route_ok, timeout=TIMEOUT)

        gw = cluster.kubectl_json("get", f"gateway/{gateway.name}", "-n", gateway.namespace)
        assert conditions(gw).get("Programmed") == "True", gw.get("status")
        assert conditions(gw).get("Accepted") == "True"
        assert {"type": "IPAddress", "value": "127.0.0.1"} in gw["status"]["addresses"]
        listener = gw["status"]["listeners"][0]
        assert listener["attachedRoutes"] == 1
        gw_class = cluster.kubectl_json("get", f"gatewayclass/{gateway.class_name}")
        assert conditions(gw_class).get("Accepted") == "True"

        # Statuses can be written before the router is live; wait for the first 200.
        url = f"{traefik.url}/t/acme/a/bot/v1/models"
        wait_for("route served", lambda: get(url)[0] == 200 or None, timeout=TIMEOUT)
        status, body = get(url)
        assert (status, json.loads(body)) == (200, {"path": "/v1/models"})
        status, body = get(f"{traefik.url}/t/acme/a/bot/v1/models?limit=2")
        assert (status, json.loads(body)) == (200, {"path": "/v1/models?limit=2"})
        before = list(backend.paths)
        assert get(f"{traefik.url}/t/acme/a/other/v1/models")[0] == 404
        assert backend.paths == before
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    # Least privilege held: nothing Traefik watched or wrote was refused.
    assert "forbidden" not in traefik.log_text().lower()


@pytest.mark.k8s
def test_traefik_refuses_a_route_from_an_unlabelled_namespace(
    cluster: Cluster, traefik: Traefik, gateway: Gateway, backend: Backend
) -> None:
    ns = make_namespace(cluster, "stranger")
    try:
        apply(cluster, *agent_backend(ns, backend.port), http_route(ns, gateway, "/t/evil/a/bot/"))

        def refused() -> dict[str, Any] | None:
            accepted = route_conditions(cluster, ns).get("Accepted")
            return accepted if accepted and accepted["status"] == "False" else None

        assert wait_for("HTTPRoute refused", refused, timeout=TIMEOUT)["reason"] == "NotAllowedByListeners"
        assert get(f"{traefik.url}/t/evil/a/bot/v1/models")[0] == 404
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
