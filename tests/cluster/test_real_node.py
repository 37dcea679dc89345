"""The real test node: pods run, Services route, NetworkPolicy holds, and teardown leaves nothing.

The module's ``real_cluster`` (``support.cluster_fixture``) serves every test; the last tests
stop it and compare the host with a snapshot taken before it started, then do the same for a
test process that is killed outright while it holds a real node.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support import netplan, node, oci
from support.cluster import REPO_ROOT, Cluster, stop_cluster
from support.cluster_fixture import REUSE_ENV, require_real_node
from support.node import HostSnapshot, RealNode
from support.waiting import wait_for

pytestmark = pytest.mark.k8s

TIMEOUT = 60.0
WEB_PORT = 8080
KUBECTL_IMAGE = "agentplane.local/kubectl:v1.36.3"

wait_until = functools.partial(wait_for, timeout=TIMEOUT)


@dataclass
class RealCluster:
    cluster: Cluster
    node: RealNode
    before: HostSnapshot
    workdir: Path


@pytest.fixture(scope="module")
def host_before() -> HostSnapshot:
    """The host before this module's real cluster starts (requested first, so taken first)."""
    return node.snapshot_host()


@pytest.fixture(scope="module")
def real(host_before: HostSnapshot, real_cluster: Cluster, real_node: RealNode) -> RealCluster:
    return RealCluster(real_cluster, real_node, host_before, real_cluster.workdir)


@pytest.fixture
def namespace(real: RealCluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    real.cluster.kubectl("create", "namespace", name)
    yield name
    real.cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def apply(cluster: Cluster, *manifests: Mapping[str, Any]) -> None:
    cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests})
    )


def pod(
    name: str,
    namespace: str,
    args: Sequence[str],
    *,
    image: str = node.AGNHOST_IMAGE,
    labels: Mapping[str, str] | None = None,
    probe: bool = False,
    restart: str = "Always",
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main",
        "image": image,
        "imagePullPolicy": "Never",
        "args": list(args),
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "128Mi"}},
    }
    if probe:
        container["readinessProbe"] = {"httpGet": {"path": "/healthz", "port": WEB_PORT}, "periodSeconds": 1}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {"app": name})},
        "spec": node.on_real_node(
            {"containers": [container], "restartPolicy": restart, "terminationGracePeriodSeconds": 0}
        ),
    }


def web_pod(name: str, namespace: str, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    return pod(name, namespace, ["netexec", f"--http-port={WEB_PORT}"], labels=labels, probe=True)


def client_pod(name: str, namespace: str) -> dict[str, Any]:
    return pod(name, namespace, ["pause"])


def wait_ready(cluster: Cluster, namespace: str, *names: str) -> None:
    cluster.kubectl(
        "wait",
        "-n",
        namespace,
        "--for=condition=Ready",
        f"--timeout={TIMEOUT:.0f}s",
        *(f"pod/{n}" for n in names),
    )


def pod_ip(cluster: Cluster, namespace: str, name: str) -> str:
    return cluster.kubectl("get", "pod", "-n", namespace, name, "-o", "jsonpath={.status.podIP}").stdout


def http_get(url: str, timeout: float = 2.0) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return str(response.read().decode())
    except (urllib.error.URLError, OSError):
        return None


def can_connect(cluster: Cluster, namespace: str, client: str, target: str) -> bool:
    """Whether ``client`` (an agnhost pod) opens a TCP connection to ``target`` (host:port)."""
    result = cluster.kubectl(
        "exec", "-n", namespace, client, "--", "/agnhost", "connect", target, "--timeout=2s", check=False
    )
    return result.returncode == 0


def eventually(
    what: str, cluster: Cluster, namespace: str, client: str, target: str, *, allowed: bool
) -> None:
    wait_until(
        f"{namespace}/{client} -> {target} to be {'allowed' if allowed else 'blocked'} ({what})",
        lambda: can_connect(cluster, namespace, client, target) == allowed,
    )


# --------------------------------------------------------------------------
# The node and its pods


def test_node_registers_ready_with_its_taint_and_label(real: RealCluster) -> None:
    got = real.cluster.kubectl_json("get", "node", node.NODE_NAME)
    ready = [c["status"] for c in got["status"]["conditions"] if c["type"] == "Ready"]
    assert ready == ["True"]
    assert got["metadata"]["labels"][node.REAL_NODE_LABEL] == "true"
    assert {"key": node.REAL_NODE_LABEL, "value": "true", "effect": "NoSchedule"} in got["spec"]["taints"]
    addresses = {a["type"]: a["address"] for a in got["status"]["addresses"]}
    assert addresses["InternalIP"] == netplan.NODE_ADDRESS
    assert got["status"]["nodeInfo"]["kubeletVersion"] == "v1.36.3"
    assert got["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")


def test_ordinary_pods_keep_going_to_kwok_nodes(real: RealCluster, namespace: str) -> None:
    plain = pod("plain", namespace, ["pause"])
    plain["spec"].pop("tolerations")
    plain["spec"].pop("nodeSelector")
    apply(real.cluster, plain)
    wait_ready(real.cluster, namespace, "plain")
    scheduled = real.cluster.kubectl(
        "get", "pod", "-n", namespace, "plain", "-o", "jsonpath={.spec.nodeName}"
    )
    assert scheduled.stdout.startswith("kwok-node-")


def test_agnhost_pod_runs_and_passes_its_http_readiness_probe(real: RealCluster, namespace: str) -> None:
    apply(real.cluster, web_pod("web", namespace))
    wait_ready(real.cluster, namespace, "web")
    got = real.cluster.kubectl_json("get", "pod", "-n", namespace, "web")
    assert got["spec"]["nodeName"] == node.NODE_NAME
    assert got["status"]["phase"] == "Running"
    ip = got["status"]["podIP"]
    assert ip.startswith("198.18.0.")
    # The probe really ran: netexec logs every request.
    assert "GET /healthz" in real.cluster.kubectl("logs", "-n", namespace, "web").stdout
    # The host reaches the pod IP directly.
    assert http_get(f"http://{ip}:{WEB_PORT}/hostname") == "web"
    images = real.node.exec_in_node(
        ["ctr", f"--address={real.node.containerd_socket}", "--namespace=k8s.io", "images", "ls", "-q"]
    )
    assert node.AGNHOST_IMAGE in images.stdout.split()


def test_cluster_ip_service_is_reachable_from_the_host_and_from_a_pod(
    real: RealCluster, namespace: str
) -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": WEB_PORT}]},
    }
    apply(real.cluster, web_pod("web", namespace), web_pod("client", namespace), service)
    wait_ready(real.cluster, namespace, "web", "client")
    cluster_ip = real.cluster.kubectl(
        "get", "service", "-n", namespace, "web", "-o", "jsonpath={.spec.clusterIP}"
    ).stdout
    assert cluster_ip.startswith("198.19.")

    wait_until("the Service from the host", lambda: http_get(f"http://{cluster_ip}/hostname") == "web")

    client = pod_ip(real.cluster, namespace, "client")
    dial = f"http://{client}:{WEB_PORT}/dial?request=hostname&protocol=http&host={cluster_ip}&port=80&tries=1"

    def from_pod() -> bool:
        body = http_get(dial, timeout=5)
        return body is not None and json.loads(body).get("responses") == ["web"]

    wait_until("the Service from another pod", from_pod)


def test_network_policy_namespace_selector_decides_who_gets_in(real: RealCluster) -> None:
    suffix = uuid.uuid4().hex[:8]
    server_ns, denied_ns, allowed_ns = f"np-a-{suffix}", f"np-b-{suffix}", f"np-c-{suffix}"
    namespaces = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "labels": labels}}
        for n, labels in ((server_ns, {}), (denied_ns, {}), (allowed_ns, {"np-test": f"allowed-{suffix}"}))
    ]
    apply(real.cluster, *namespaces)
    try:
        apply(
            real.cluster,
            web_pod("server", server_ns),
            client_pod("client", denied_ns),
            client_pod("client", allowed_ns),
        )
        for ns, name in ((server_ns, "server"), (denied_ns, "client"), (allowed_ns, "client")):
            wait_ready(real.cluster, ns, name)
        target = f"{pod_ip(real.cluster, server_ns, 'server')}:{WEB_PORT}"
        # Without policies both get in: what follows is the policies' doing.
        eventually("no policy yet", real.cluster, denied_ns, "client", target, allowed=True)

        deny_all = {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "default-deny", "namespace": server_ns},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
        }
        allow_labelled = {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "allow-labelled-namespaces", "namespace": server_ns},
            "spec": {
                "podSelector": {"matchLabels": {"app": "server"}},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {
                        "from": [{"namespaceSelector": {"matchLabels": {"np-test": f"allowed-{suffix}"}}}],
                        "ports": [{"protocol": "TCP", "port": WEB_PORT}],
                    }
                ],
            },
        }
        apply(real.cluster, deny_all, allow_labelled)
        eventually("default deny", real.cluster, denied_ns, "client", target, allowed=False)
        eventually("namespaceSelector", real.cluster, allowed_ns, "client", target, allowed=True)
        # Stable, not a race: the denied client stays out.
        assert not can_connect(real.cluster, denied_ns, "client", target)
    finally:
        for ns in (server_ns, denied_ns, allowed_ns):
            real.cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@contextlib.contextmanager
def listening(address: str) -> Iterator[int]:
    """A TCP socket listening on the host at ``address`` (the kernel completes handshakes)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind((address, 0))
        server.listen(64)
        yield int(server.getsockname()[1])


def test_network_policy_egress_ip_block_allows_one_host_and_blocks_another(
    real: RealCluster, namespace: str
) -> None:
    allowed_host, blocked_host = netplan.host_address(10), netplan.host_address(20)
    real.node.add_host_address(allowed_host)
    real.node.add_host_address(blocked_host)
    try:
        with listening(allowed_host) as allowed_port, listening(blocked_host) as blocked_port:
            apply(real.cluster, client_pod("client", namespace))
            wait_ready(real.cluster, namespace, "client")
            allowed, blocked = f"{allowed_host}:{allowed_port}", f"{blocked_host}:{blocked_port}"
            eventually("no policy yet", real.cluster, namespace, "client", blocked, allowed=True)

            egress = {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": "egress-to-one-host", "namespace": namespace},
                "spec": {
                    "podSelector": {},
                    "policyTypes": ["Egress"],
                    "egress": [{"to": [{"ipBlock": {"cidr": f"{allowed_host}/32"}}]}],
                },
            }
            apply(real.cluster, egress)
            eventually("ipBlock egress", real.cluster, namespace, "client", blocked, allowed=False)
            assert can_connect(real.cluster, namespace, "client", allowed)
    finally:
        real.node.remove_host_address(allowed_host)
        real.node.remove_host_address(blocked_host)


def test_pod_reaches_the_api_server_with_its_service_account_token(real: RealCluster, namespace: str) -> None:
    endpoints = real.cluster.kubectl(
        "get", "endpointslices", "-n", "default", "-l", "kubernetes.io/service-name=kubernetes",
        "-o", "jsonpath={.items[*].endpoints[*].addresses[*]}",
    ).stdout  # fmt: skip
    assert endpoints.split() == [netplan.HOST_ADDRESS]

    tar = real.workdir / "kubectl-image.tar"
    oci.write_image(
        tar,
        KUBECTL_IMAGE,
        files={"/kubectl": real.cluster.bin_dir / "kubectl"},
        directories={"/tmp": 0o1777},
        entrypoint=["/kubectl"],
        env={"HOME": "/tmp"},
    )
    real.node.load_image(tar)
    # kubectl without a kubeconfig uses the in-cluster config: KUBERNETES_SERVICE_HOST (the
    # kubernetes Service's ClusterIP), the mounted token and CA.
    whoami = pod(
        "whoami",
        namespace,
        ["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"],
        image=KUBECTL_IMAGE,
        restart="Never",
    )
    apply(real.cluster, whoami)
    real.cluster.kubectl(
        "wait",
        "-n",
        namespace,
        "--for=jsonpath={.status.phase}=Succeeded",
        f"--timeout={TIMEOUT:.0f}s",
        "pod/whoami",
    )
    log = real.cluster.kubectl("logs", "-n", namespace, "whoami").stdout.strip()
    assert log == f"system:serviceaccount:{namespace}:default"
    got = real.cluster.kubectl_json("get", "pod", "-n", namespace, "whoami")
    assert got["spec"]["nodeName"] == node.NODE_NAME


# --------------------------------------------------------------------------
# Teardown (keep these last: they stop the module's node)


def assert_nothing_left(before: HostSnapshot, workdir: Path) -> None:
    """No difference from ``before`` -- allowing a few seconds for killed processes to be reaped."""
    with contextlib.suppress(pytest.fail.Exception):
        wait_until(
            "no leftovers", lambda: not node.host_leftovers(before, node.snapshot_host(workdir)), timeout=10
        )
    assert node.host_leftovers(before, node.snapshot_host(workdir)) == []


def test_node_processes_are_its_components(real: RealCluster) -> None:
    rss = real.node.rss_bytes()
    for component in ("containerd", "kubelet", "kube-proxy", "kube-router"):
        assert rss.get(component, 0) > 0, f"{component} not among the node's processes: {sorted(rss)}"


def test_teardown_leaves_nothing_behind(real: RealCluster) -> None:
    if os.environ.get(REUSE_ENV):
        pytest.skip(f"${REUSE_ENV} is set: the reused cluster is not this test's to stop")
    during = node.snapshot_host(real.workdir)
    created = node.host_leftovers(real.before, during)
    assert any(f"link {real.node.network.veth}" in item for item in created), created  # the check can fail
    stop_cluster(real.cluster)
    assert not real.node.alive()
    assert real.node.network.status()["phase"] == "stopped", real.node.network.log.read_text()
    assert_nothing_left(real.before, real.workdir)


def no_other_real_node() -> None:
    if os.environ.get(REUSE_ENV):
        pytest.skip(f"${REUSE_ENV} is set: a real node may be running, and only one can")


def test_killed_test_process_leaves_nothing_behind(tmp_path: Path) -> None:
    """A test process killed with SIGKILL: the watchdog still removes the node and its network."""
    bin_dir = require_real_node()
    no_other_real_node()
    workdir = tmp_path / "killed"
    before = node.snapshot_host(workdir)
    child = textwrap.dedent(
        """
        import sys, time
        from pathlib import Path
        from support.cluster import start_cluster
        start_cluster(Path(sys.argv[1]), bin_dir=Path(sys.argv[2]), real_node=True)
        time.sleep(600)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "tests")}
    with open(tmp_path / "child.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", child, str(workdir), str(bin_dir)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            "the child's cluster with a real node",
            lambda: (workdir / "cluster.json").is_file() or proc.poll() is not None,
            timeout=120,
        )
        assert proc.poll() is None, (tmp_path / "child.log").read_text()
        watchdog = json.loads((workdir / "node" / "watch-status.json").read_text())["pid"]
        assert node.host_leftovers(before, node.snapshot_host(workdir))  # the node is there
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    wait_until("the watchdog to clean up and exit", lambda: not Path(f"/proc/{watchdog}").exists())
    assert_nothing_left(before, workdir)


def test_next_start_removes_what_a_killed_watchdog_left(tmp_path: Path) -> None:
    """What only a SIGKILLed watchdog leaves -- apn-* netns, veth, cgroups -- goes at the next start."""
    require_real_node()
    no_other_real_node()
    before = node.snapshot_host()
    stale = f"{node.PREFIX}stale0"
    netns_file = Path("/run/netns") / stale
    created_netns_dir = not netns_file.parent.exists()
    netns_file.parent.mkdir(exist_ok=True)
    netns_file.touch()
    subprocess.run(["unshare", f"--net={netns_file}", "true"], check=True)
    subprocess.run(
        ["ip", "link", "add", stale, "type", "veth", "peer", "name", "eth0", "netns", stale], check=True
    )
    unified = Path("/sys/fs/cgroup/cgroup.procs").exists()
    cgroup = Path("/sys/fs/cgroup") / ("" if unified else "memory") / stale / "kubepods"
    cgroup.mkdir(parents=True)
    left = node.host_leftovers(before)
    assert f"+ link {stale}" in left
    assert f"+ netns {stale}" in left

    removed = node.cleanup_leftovers()
    assert f"netns {stale}" in removed
    assert f"cgroup {cgroup.parent}" in removed
    if created_netns_dir:
        assert not netns_file.parent.exists()
    assert_nothing_left(before, tmp_path)
