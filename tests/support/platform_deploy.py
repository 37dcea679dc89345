"""The whole platform on the test cluster's real node, as a platform team would install it.

On the host (listening on `netplan.HOST_ADDRESS`, where pods reach them): PostgreSQL, Redis and the
fake LLM provider. In the cluster: the CRDs of the add-ons agents use (Gateway API, monitors, Flux's
GitRepository), the operator from its image and its generated manifests (`operator/deploy/`),
running in-cluster as its own service account, and Traefik as the Gateway API implementation, both
on the real node. Nothing is pulled: the images are built from the real Dockerfiles
(`support.images`) or written from static binaries (`support.oci`) and loaded into the node.

Used by `tests/e2e/` and `loadtests/bench_pods.py`:

    with deployed_platform(cluster, workdir) as platform:
        platform.apply(tenant_manifest, ...)
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from agentplane_operator import manifests as operator_manifests
from agentplane_platform.contract import LLM_SECRET
from support import netplan, node, oci
from support.addons import (
    TRAEFIK_CONTROLLER_NAME,
    install_crds,
    install_traefik_rbac,
    traefik_args,
    traefik_binary,
)
from support.cluster import Cluster
from support.fake_llm import FakeLLM
from support.images import ImageArchive, operator_image, runtime_image
from support.services import Server, create_database, start_postgres, start_redis
from support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
PLATFORM_NAMESPACE = operator_manifests.NAMESPACE
GATEWAY_NAMESPACE = "agentplane-gateway"
GATEWAY = "agentplane"
MONITORING_NAMESPACE = "monitoring"
GITOPS_NAMESPACE = "flux-system"
GITOPS_SOURCE = "agentplane"
TRAEFIK_IMAGE = "agentplane.local/traefik:v3"
TRAEFIK_WEB_PORT = 8000
TRAEFIK_PING_PORT = 8080
T = TypeVar("T")


@dataclass
class Platform:
    """A deployed platform and how tests reach into it."""

    cluster: Cluster
    node: node.RealNode
    postgres: Server
    redis: Server
    fake: FakeLLM
    database_url: str
    redis_url: str
    runtime: ImageArchive
    operator: ImageArchive
    gateway_url: str
    """The gateway's base URL from the host (its Service's ClusterIP)."""
    workdir: Path
    timings: dict[str, float] = field(default_factory=dict)

    # -- kubectl ------------------------------------------------------------------------------

    def apply(self, *objects: Mapping[str, Any]) -> None:
        self.cluster.kubectl(
            "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
        )

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        where = ["-n", namespace] if namespace else []
        result = self.cluster.kubectl("get", kind, name, *where, "-o", "json", check=False)
        if result.returncode != 0:
            if "NotFound" in result.stderr:
                return None
            raise AssertionError(result.stderr)
        found: dict[str, Any] = json.loads(result.stdout)
        return found

    def pods(self, namespace: str, **labels: str) -> list[dict[str, Any]]:
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        listed = self.cluster.kubectl_json("get", "pods", "-n", namespace, "-l", selector)
        return list(listed["items"])

    def agent_pods(self, namespace: str, agent: str) -> list[dict[str, Any]]:
        return self.pods(namespace, **{"agentplane.io/agent": agent})

    def exec(
        self, namespace: str, pod: str, argv: Sequence[str], *, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """`kubectl exec` (through the API server and the kubelet, as a user would)."""
        return self.cluster.kubectl("exec", "-n", namespace, pod, "--", *argv, check=False, timeout=timeout)

    def connects(self, namespace: str, pod: str, host: str, port: int, *, timeout: float = 3.0) -> bool:
        """Whether a TCP connection from inside `pod` (its network namespace) to host:port succeeds."""
        code = (
            "import socket,sys\n"
            "try:\n"
            f"    socket.create_connection(({host!r}, {port}), timeout={timeout}).close()\n"
            "except OSError as e:\n"
            "    print(type(e).__name__, e); sys.exit(1)\n"
        )
        result = self.exec(namespace, pod, ["python3", "-c", code], timeout=timeout + 30)
        return result.returncode == 0

    def python_pod(self, namespace: str, name: str) -> str:
        """A pod of the runtime image that only sleeps, on the real node: an application (or a
        Prometheus) in `namespace` to run Python in, with the OpenAI SDK installed."""
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/name": name}},
            "spec": node.on_real_node(
                {
                    "containers": [
                        {
                            "name": "python",
                            "image": self.runtime.ref,
                            "imagePullPolicy": "Never",
                            "command": ["python3", "-c", "import time; time.sleep(86400)"],
                            "resources": {
                                "requests": {"cpu": "10m", "memory": "64Mi"},
                                "limits": {"memory": "512Mi"},
                            },
                        }
                    ],
                    "terminationGracePeriodSeconds": 1,
                }
            ),
        }
        self.apply(pod)
        self.cluster.kubectl(
            "wait", "--for=condition=Ready", f"pod/{name}", "-n", namespace, "--timeout=180s", timeout=200
        )
        return name

    def python(self, namespace: str, pod: str, code: str, *, timeout: float = 120) -> str:
        """Run Python code in `pod`; its stdout (fails with stderr on a non-zero exit)."""
        result = self.exec(namespace, pod, ["python3", "-c", code], timeout=timeout)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    def service_url(self, namespace: str, name: str) -> str:
        """An agent's API through its Service's ClusterIP (reachable from the tenant's own pods)."""
        service = self.get("service", name, namespace)
        assert service is not None, f"no Service {namespace}/{name}"
        return f"http://{service['spec']['clusterIP']}/v1"

    def route_url(self, tenant: str, agent: str) -> str:
        return f"{self.gateway_url}/t/{tenant}/a/{agent}/v1"

    # -- the platform team's commands ------------------------------------------------------------

    def create_key(self, tenant: str, *extra: str) -> str:
        """`agentplane keys create --tenant T` against the platform database (as a platform team would)."""
        result = subprocess.run(
            [str(Path(sys.executable).parent / "agentplane"), "keys", "create", "--tenant", tenant, *extra],
            env={**os.environ, "AGENTPLANE_DATABASE_URL": self.database_url},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def operator_log(self) -> str:
        return self.cluster.kubectl(
            "logs", "-n", PLATFORM_NAMESPACE, "deployment/agentplane-operator", check=False
        ).stdout

    def diagnose(self) -> str:
        """What to read when something did not come up: pods everywhere, recent events, the operator's log."""
        pods = self.cluster.kubectl("get", "pods", "-A", "-o", "wide", check=False).stdout
        events = self.cluster.kubectl("get", "events", "-A", "--sort-by=.lastTimestamp", check=False).stdout
        return f"{pods}\n{events[-4000:]}\noperator log:\n{self.operator_log()[-6000:]}"

    def wait(self, what: str, probe: Callable[[], T | None], timeout: float = 120.0) -> T:
        """`wait_for`, with the platform's state in the failure."""
        return wait_for(what, probe, timeout=timeout, context=self.diagnose)


# -- building blocks -------------------------------------------------------------------------


def platform_egress(*servers: tuple[str, int]) -> str:
    """`AGENTPLANE_OPERATOR_PLATFORM_EGRESS`: the host's stores and provider, by address and port."""
    by_host: dict[str, list[int]] = {}
    for host, port in servers:
        by_host.setdefault(host, []).append(port)
    return json.dumps(
        [{"cidr": f"{host}/32", "ports": sorted(ports)} for host, ports in sorted(by_host.items())]
    )


def operator_objects(*, image: str, settings: Mapping[str, str]) -> list[dict[str, Any]]:
    """`operator/deploy/` as generated, with what only this environment knows: the images (loaded,
    never pulled), one replica on the real node, and the settings of this cluster."""
    objects = operator_manifests.load(REPO / "operator" / "deploy")
    for obj in objects:
        if obj["kind"] != "Deployment":
            continue
        obj["spec"]["replicas"] = 1
        pod = obj["spec"]["template"]["spec"]
        pod.update(node.on_real_node(pod))
        (container,) = pod["containers"]
        container["image"] = image
        container["imagePullPolicy"] = "Never"
        ours = {f"AGENTPLANE_OPERATOR_{k}": v for k, v in settings.items()}
        env = [
            e
            for e in container["env"]
            if e["name"] not in ours and e["name"] != "AGENTPLANE_OPERATOR_QDRANT_URL"
        ]
        container["env"] = env + [{"name": k, "value": v} for k, v in ours.items()]
    return objects


def gateway_objects(service_account: str = "traefik") -> list[dict[str, Any]]:
    """Traefik on the real node, its Service, a GatewayClass and the Gateway agents' routes attach to."""
    labels = {"app.kubernetes.io/name": "traefik"}
    pod = node.on_real_node(
        {
            "serviceAccountName": service_account,
            "containers": [
                {
                    "name": "traefik",
                    "image": TRAEFIK_IMAGE,
                    "imagePullPolicy": "Never",
                    "args": traefik_args(
                        web_address=f":{TRAEFIK_WEB_PORT}", ping_address=f":{TRAEFIK_PING_PORT}"
                    ),
                    "ports": [{"name": "web", "containerPort": TRAEFIK_WEB_PORT}],
                    "readinessProbe": {
                        "httpGet": {"path": "/ping", "port": TRAEFIK_PING_PORT},
                        "periodSeconds": 2,
                    },
                    "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True},
                }
            ],
        }
    )
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "traefik", "namespace": GATEWAY_NAMESPACE, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": pod},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "traefik", "namespace": GATEWAY_NAMESPACE},
            "spec": {"selector": labels, "ports": [{"name": "web", "port": 80, "targetPort": "web"}]},
        },
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GatewayClass",
            "metadata": {"name": GATEWAY},
            "spec": {"controllerName": TRAEFIK_CONTROLLER_NAME},
        },
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": GATEWAY, "namespace": GATEWAY_NAMESPACE},
            "spec": {
                "gatewayClassName": GATEWAY,
                "listeners": [
                    {
                        "name": "web",
                        "protocol": "HTTP",
                        "port": TRAEFIK_WEB_PORT,
                        "allowedRoutes": {
                            "namespaces": {
                                "from": "Selector",
                                "selector": {
                                    "matchExpressions": [
                                        {"key": "agentplane.io/tenant", "operator": "Exists"}
                                    ]
                                },
                            }
                        },
                    }
                ],
            },
        },
    ]


def _namespace(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def _secret(name: str, namespace: str, data: Mapping[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": dict(data),
    }


def _available(platform: Platform, namespace: str, name: str) -> bool:
    deployment = platform.get("deployment", name, namespace)
    status = (deployment or {}).get("status") or {}
    return bool(status.get("availableReplicas"))


@contextlib.contextmanager
def deployed_platform(
    cluster: Cluster,
    workdir: Path,
    *,
    resync_seconds: float = 300.0,
    extra_settings: Mapping[str, str] | None = None,
) -> Iterator[Platform]:
    """Install the platform on `cluster` (which has a real node); stop the host servers after."""
    real = cluster.real_node
    assert real is not None, "the platform needs the cluster's real node"
    timings: dict[str, float] = {}
    started = time.monotonic()
    runtime, operator = runtime_image(), operator_image()
    timings["images"] = time.monotonic() - started
    mark = time.monotonic()
    real.load_image(runtime.path)
    real.load_image(operator.path)
    traefik_tar = workdir / "traefik.tar"
    oci.write_image(
        traefik_tar, TRAEFIK_IMAGE, files={"/traefik": traefik_binary()}, entrypoint=["/traefik"],
        directories={"/tmp": 0o1777},
    )  # fmt: skip
    real.load_image(traefik_tar)
    timings["load images"] = time.monotonic() - mark

    host = netplan.HOST_ADDRESS
    with contextlib.ExitStack() as stack:
        postgres = start_postgres(workdir / "postgres", host=host, clients="198.18.0.0/15")
        stack.callback(postgres.stop)
        redis = start_redis(workdir / "redis", host=host)
        stack.callback(redis.stop)
        fake = FakeLLM().start(host=host)
        stack.callback(fake.stop)
        database_url = create_database(postgres, "agentplane_e2e")

        install_crds(cluster, ["gateway-api", "prometheus-operator", "flux-source"])
        cluster.kubectl(
            "apply", "-f", "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
                _namespace(GATEWAY_NAMESPACE), _namespace(MONITORING_NAMESPACE), _namespace(GITOPS_NAMESPACE)]}),
        )  # fmt: skip
        install_traefik_rbac(cluster, namespace=GATEWAY_NAMESPACE, service_account="traefik")
        cluster.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": gateway_objects()}),
        )
        service = cluster.kubectl_json("get", "service", "traefik", "-n", GATEWAY_NAMESPACE)
        gateway_url = f"http://{service['spec']['clusterIP']}"

        fake_port = fake.port
        settings = {
            "RUNTIME_IMAGE": runtime.ref,
            "IMAGE_PULL_POLICY": "Never",
            "QDRANT_PATH": "/tmp/qdrant",
            # no Qdrant server here: each agent pod gets Qdrant local mode of its own, chosen explicitly
            "RUNTIME_QDRANT_PATH": "/tmp/agentplane/qdrant",
            "PLATFORM_EGRESS": platform_egress((host, postgres.port), (host, redis.port), (host, fake_port)),
            "GATEWAY_NAME": GATEWAY,
            "GATEWAY_NAMESPACE": GATEWAY_NAMESPACE,
            "GATEWAY_URL": gateway_url,
            "MONITORING_NAMESPACE": MONITORING_NAMESPACE,
            "AGENT_NODE_SELECTOR": json.dumps(dict(node.NODE_SELECTOR)),
            "AGENT_TOLERATIONS": json.dumps([dict(node.TOLERATION)]),
            "GITOPS_SOURCE": f"{GITOPS_NAMESPACE}/{GITOPS_SOURCE}",
            "RESYNC_SECONDS": str(resync_seconds),
            **(extra_settings or {}),
        }
        objects = operator_objects(image=operator.ref, settings=settings)
        definitions = [o for o in objects if o["kind"] in ("Namespace", "CustomResourceDefinition")]
        cluster.kubectl(
            "apply",
            "--server-side",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": definitions}),
        )
        cluster.kubectl(
            "wait", "--for=condition=Established", "crd/clusterkopfpeerings.kopf.dev", "--timeout=60s"
        )
        cluster.kubectl(
            "apply", "-f", "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
                _secret(operator_manifests.CREDENTIALS_SECRET, PLATFORM_NAMESPACE, {
                    "redis-url": redis.url.rsplit("/", 1)[0] + "/0", "database-url": database_url}),
                _secret(LLM_SECRET, PLATFORM_NAMESPACE, {
                    "OPENAI_API_KEY": "sk-e2e", "OPENAI_API_BASE": fake.base_url,
                    "AZURE_API_KEY": "az-e2e", "AZURE_API_BASE": fake.root_url}),
            ]}),
        )  # fmt: skip
        rest = [o for o in objects if o not in definitions]
        cluster.kubectl(
            "apply",
            "--server-side",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": rest}),
        )
        platform = Platform(
            cluster=cluster, node=real, postgres=postgres, redis=redis, fake=fake, database_url=database_url,
            redis_url=redis.url, runtime=runtime, operator=operator, gateway_url=gateway_url, workdir=workdir,
            timings=timings,
        )  # fmt: skip
        mark = time.monotonic()
        try:
            wait_for(
                "the operator's pod available",
                lambda: _available(platform, PLATFORM_NAMESPACE, "agentplane-operator"),
                timeout=240,
            )
            wait_for(
                "Traefik available", lambda: _available(platform, GATEWAY_NAMESPACE, "traefik"), timeout=120
            )
        except AssertionError:
            log = platform.operator_log()
            pods = cluster.kubectl("get", "pods", "-A", "-o", "wide", check=False).stdout
            raise AssertionError(f"the platform did not come up\n{pods}\n{log[-4000:]}") from None
        timings["platform ready"] = time.monotonic() - mark
        yield platform
