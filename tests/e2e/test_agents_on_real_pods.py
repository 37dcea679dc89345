"""Agents that really run: the operator, in-cluster from its image and generated manifests, deploys
agents on the test cluster's real node (containerd, runc, CNI, kube-proxy, a NetworkPolicy
enforcer) from the runtime image built from its Dockerfile; PostgreSQL, Redis and the fake LLM
provider run on the host. Everything a deployed agent needs is checked end to end: probes and
Ready, keys made with `agentplane keys`, answers through the Service and the gateway, usage in
PostgreSQL, quotas in Redis, network isolation, rollouts, knowledge sync, failure reasons, and a
clean tenant deletion.

The tests share one deployment and run in file order (each builds on the agents before it).
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import shutil
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import psycopg
import pytest
import redis
from openai.types.chat import ChatCompletionMessageParam

from support import netplan
from support.addons import kstatus
from support.cluster import Cluster
from support.fake_llm import reply, tool_calls
from support.platform_deploy import (
    GITOPS_NAMESPACE,
    GITOPS_SOURCE,
    MONITORING_NAMESPACE,
    PLATFORM_NAMESPACE,
    Platform,
    deployed_platform,
)

pytestmark = [pytest.mark.k8s]

REPO = Path(__file__).resolve().parents[2]
API = "agentplane.io/v1alpha1"
INSIDE = netplan.host_address(10)
"""A host in tenant e2e's declared egress (a CIDR rule)."""
OUTSIDE = netplan.host_address(20)
"""A host no tenant declares."""
TOOL_PORT = 18080
RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
TOOLS_MODEL = "openai/e2e-tools"
"""alpha's model: the fake provider's scripts for it do not touch the other agents."""


# -- specs, as a tenant team writes them -------------------------------------------------------


def tenant(name: str, **spec: Any) -> dict[str, Any]:
    body = {
        "owners": [{"kind": "Group", "name": f"{name}-team"}],
        "allowedModels": ["openai/*"],
        "quotas": {"llm": {"tokensPerMinute": 200000, "requestsPerMinute": 600, "monthlyBudgetUsd": 100}},
        "deletionPolicy": "Delete",
        **spec,
    }
    return {"apiVersion": API, "kind": "Tenant", "metadata": {"name": name}, "spec": body}


def prompt(
    tenant: str, version: int, template: str, previous: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    spec: dict[str, Any] = {"version": version, "template": template}
    if previous:
        spec["previousVersions"] = previous
    return {
        "apiVersion": API,
        "kind": "Prompt",
        "metadata": {"name": "assistant", "namespace": f"tenant-{tenant}"},
        "spec": spec,
    }


def agent(
    tenant: str, name: str, *, model: str = "openai/gpt-4o-mini", version: int = 1, **spec: Any
) -> dict[str, Any]:
    body = {
        "model": {"name": model},
        "prompt": {"name": "assistant", "version": version},
        "runtime": {"replicas": 1, "resources": RESOURCES},
        **spec,
    }
    return {
        "apiVersion": API,
        "kind": "Agent",
        "metadata": {"name": name, "namespace": f"tenant-{tenant}"},
        "spec": body,
    }


def lookup_tool(tenant: str, name: str, host: str) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "Tool",
        "metadata": {"name": name, "namespace": f"tenant-{tenant}"},
        "spec": {
            "type": "http",
            "description": "Look an order up",
            "url": f"http://{host}:{TOOL_PORT}/lookup",
            "method": "POST",
            "parameters": {
                "type": "object",
                "properties": {"order": {"type": "string"}},
                "required": ["order"],
            },
            "timeoutSeconds": 5,
        },
    }


V1 = "You are the e2e assistant, version one."
V2 = "You are the e2e assistant, version two."
KNOWLEDGE_BASE = {"name": "handbook", "embeddingModel": "openai/text-embedding-3-small", "dimensions": 64}


# -- the deployment ----------------------------------------------------------------------------


class ToolServer:
    """An HTTP tool on an "external host" of the test network, recording its calls."""

    def __init__(self, host: str) -> None:
        calls = self.calls = list[dict[str, Any]]()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                calls.append(json.loads(self.rfile.read(length) or b"{}"))
                body = json.dumps({"order": "A-17", "status": "shipped"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((host, TOOL_PORT), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def platform(real_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    workdir = tmp_path_factory.mktemp("platform")
    node = real_cluster.real_node
    assert node is not None
    for address in (INSIDE, OUTSIDE):
        node.add_host_address(address)
    with deployed_platform(real_cluster, workdir, resync_seconds=600) as deployed:
        yield deployed


@pytest.fixture(scope="module")
def tools(platform: Platform) -> Iterator[dict[str, ToolServer]]:
    servers = {"inside": ToolServer(INSIDE), "outside": ToolServer(OUTSIDE)}
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture(scope="module")
def applied(platform: Platform, tools: dict[str, ToolServer]) -> dict[str, float]:
    """Three tenants' specs applied as `kubectl apply` of a spec tree would; when it happened."""
    started = time.monotonic()
    platform.apply(
        tenant(
            "e2e",
            egress=[{"cidr": f"{INSIDE}/32", "ports": [TOOL_PORT]}],
            knowledgeBases=[KNOWLEDGE_BASE],
            # the fake upstream's own model: litellm has no price for it, so the tenant declares one
            modelPrices={TOOLS_MODEL: {"inputPerMillionTokens": 0, "outputPerMillionTokens": 0}},
        ),
        tenant("e2e-other"),
        tenant(
            "e2e-quota",
            quotas={"llm": {"tokensPerMinute": 200000, "requestsPerMinute": 3, "monthlyBudgetUsd": 100}},
        ),
    )
    platform.wait(
        "the tenant namespaces",
        lambda: all(platform.get("namespace", f"tenant-{t}") for t in ("e2e", "e2e-other", "e2e-quota")),
    )
    platform.apply(
        prompt("e2e", 1, V1),
        prompt("e2e-other", 1, V1),
        prompt("e2e-quota", 1, V1),
        lookup_tool("e2e", "lookup", INSIDE),
        agent("e2e", "alpha", model=TOOLS_MODEL, tools=[{"name": "lookup"}]),
        agent("e2e", "beta"),
        agent("e2e-other", "gamma"),
        agent("e2e-quota", "tight"),
    )
    return {"applied": started}


def ask(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


Client = Callable[[str, str], openai.OpenAI]


@pytest.fixture
def client() -> Iterator[Client]:
    """OpenAI SDK clients for a base URL and key, closed after the test."""
    made: list[openai.OpenAI] = []

    def make(url: str, key: str) -> openai.OpenAI:
        made.append(openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=60))
        return made[-1]

    yield make
    for opened in made:
        opened.close()


# -- the tests ------------------------------------------------------------------------------


def test_agents_run_the_built_image_pass_their_probes_and_turn_ready(
    platform: Platform, applied: dict[str, float]
) -> None:
    ready = platform.cluster.kubectl(
        "wait", "--for=condition=Ready", "agent/alpha", "agent/beta", "-n", "tenant-e2e", "--timeout=300s",
        timeout=330, check=False,
    )  # fmt: skip
    assert ready.returncode == 0, ready.stderr + platform.operator_log()[-3000:]
    for namespace, name in (("tenant-e2e-other", "gamma"), ("tenant-e2e-quota", "tight")):
        platform.cluster.kubectl(
            "wait", "--for=condition=Ready", f"agent/{name}", "-n", namespace, "--timeout=300s", timeout=330
        )
    for name in ("alpha", "beta"):
        (pod,) = platform.agent_pods("tenant-e2e", name)
        assert pod["spec"]["nodeName"] == platform.node.name
        (status,) = pod["status"]["containerStatuses"]
        assert status["ready"] is True
        assert status["image"].endswith(platform.runtime.ref.split("/", 1)[1])
        obj = platform.get("agent", name, "tenant-e2e")
        assert obj is not None
        assert obj["status"]["url"] == platform.route_url("e2e", name)
        assert kstatus(obj).status == "Current"


def test_a_key_from_the_cli_gets_answers_through_the_gateway_and_the_service(
    platform: Platform, applied: dict[str, float], client: Client
) -> None:
    key = platform.create_key("e2e")
    question = ask("Where is my order?")
    # from outside the cluster: the gateway, /t/<tenant>/a/<agent>/v1 on Traefik, through the
    # HTTPRoute the operator made
    assert platform.get("httproute", "beta", "tenant-e2e") is not None
    through_gateway = platform.wait(
        "an answer through the gateway",
        lambda: _try_chat(client(platform.route_url("e2e", "beta"), key), question),
        timeout=120,
    )
    assert through_gateway == "Fake answer to: Where is my order?"
    stream = client(platform.route_url("e2e", "beta"), key).chat.completions.create(
        model="beta", messages=question, stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == "Fake answer to: Where is my order?"
    )
    assert chunks[-1].usage is not None
    # the system prompt the agent sent is the Prompt's v1
    system = [
        r.body["messages"][0]["content"]
        for r in platform.fake.requests
        if r.body.get("model") == "gpt-4o-mini"
    ]
    assert any(V1 in s for s in system)

    # from an application of the tenant, in its namespace: the agent's Service, with the OpenAI SDK
    app = platform.python_pod("tenant-e2e", "app")
    answer = platform.python(
        "tenant-e2e",
        app,
        "import openai\n"
        f"client = openai.OpenAI(base_url={platform.service_url('tenant-e2e', 'beta')!r}, api_key={key!r}, max_retries=0)\n"
        "print(client.chat.completions.create(model='beta', messages=[{'role': 'user', 'content': 'Hi from the app'}]).choices[0].message.content)\n",
    )
    assert answer.strip() == "Fake answer to: Hi from the app"
    # ... but not from outside the cluster around the gateway
    service = platform.service_url("tenant-e2e", "beta").removeprefix("http://").removesuffix("/v1")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://{service}/healthz/ready", timeout=5)

    # a wrong key is refused by the pod with an OpenAI-shaped error and a request id
    with pytest.raises(openai.AuthenticationError) as refused:
        client(platform.route_url("e2e", "beta"), key[:-2] + "xx").chat.completions.create(
            model="beta", messages=question
        )
    assert refused.value.response.headers.get("x-request-id")

    # usage lands in PostgreSQL, quota counters in Redis
    def usage_rows() -> int:
        with psycopg.connect(platform.database_url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM usage_records WHERE tenant = 'e2e' AND agent = 'beta'"
            ).fetchone()
        return int(row[0]) if row else 0

    assert platform.wait("three usage rows", lambda: usage_rows() >= 3, timeout=60)
    store = redis.Redis.from_url(platform.redis_url, decode_responses=True)
    try:
        keys = set(store.scan_iter(match="agentplane:quota:e2e:*"))
        assert "agentplane:quota:e2e:limits" in keys
        assert len(keys) > 1, keys  # the live counters beside the limits
    finally:
        store.close()


def _try_chat(client: openai.OpenAI, messages: list[ChatCompletionMessageParam]) -> str | None:
    try:
        answer = client.chat.completions.create(model="beta", messages=messages)
    except (
        openai.APIConnectionError,
        openai.NotFoundError,
        openai.InternalServerError,
        openai.APIStatusError,
    ):
        return None
    return answer.choices[0].message.content


def test_an_exhausted_quota_is_a_429_from_the_pod(platform: Platform, applied: dict[str, float]) -> None:
    key = platform.create_key("e2e-quota")
    url = platform.route_url("e2e-quota", "tight")
    statuses = []
    for n in range(5):
        response = httpx.post(
            f"{url}/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "tight", "messages": [{"role": "user", "content": f"question {n}"}]},
            timeout=60,
        )
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) >= 1
            assert response.json()["error"]["type"]
    assert statuses[:3] == [200, 200, 200]
    assert 429 in statuses[3:], statuses


def test_tools_reach_declared_egress_and_the_network_stops_the_rest(
    platform: Platform, applied: dict[str, float], tools: dict[str, ToolServer], client: Client
) -> None:
    key = platform.create_key("e2e")
    platform.fake.script("e2e-tools", [tool_calls(("lookup", {"order": "A-17"})), reply("A-17 has shipped.")])
    answer = client(platform.route_url("e2e", "alpha"), key).chat.completions.create(
        model="alpha",
        messages=ask("Where is A-17?"),
    )
    assert answer.choices[0].message.content == "A-17 has shipped."
    assert tools["inside"].calls == [{"order": "A-17"}]  # the pod reached the declared host
    (pod,) = platform.agent_pods("tenant-e2e", "alpha")
    name = pod["metadata"]["name"]
    assert platform.connects("tenant-e2e", name, INSIDE, TOOL_PORT)
    # the same port on a host the tenant never declared: dropped by the network, not by the runtime
    assert not platform.connects("tenant-e2e", name, OUTSIDE, TOOL_PORT)
    assert tools["outside"].calls == []


def _pod_ip(platform: Platform, namespace: str, agent: str) -> str:
    (pod,) = platform.agent_pods(namespace, agent)
    return str(pod["status"]["podIP"])


def test_tenants_cannot_reach_each_other_and_monitoring_reaches_only_metrics(
    platform: Platform, applied: dict[str, float]
) -> None:
    alpha = _pod_ip(platform, "tenant-e2e", "alpha")
    (beta,) = platform.agent_pods("tenant-e2e", "beta")
    (gamma,) = platform.agent_pods("tenant-e2e-other", "gamma")
    assert platform.connects("tenant-e2e", beta["metadata"]["name"], alpha, 8080)  # same tenant
    assert not platform.connects("tenant-e2e-other", gamma["metadata"]["name"], alpha, 8080)
    assert not platform.connects("tenant-e2e-other", gamma["metadata"]["name"], alpha, 9090)
    # a pod of the monitoring namespace (Prometheus' place) scrapes /metrics, and nothing else
    scraper = platform.python_pod(MONITORING_NAMESPACE, "scraper")
    metrics = platform.python(
        MONITORING_NAMESPACE, scraper,
        f"import urllib.request; print(urllib.request.urlopen('http://{alpha}:9090/metrics', timeout=5).read().decode())",
    )  # fmt: skip
    answered = [line for line in metrics.splitlines() if line.startswith("agentplane_requests_total{")]
    assert any('agent="alpha"' in line and 'tenant="e2e"' in line for line in answered), answered
    assert not platform.connects(MONITORING_NAMESPACE, scraper, alpha, 8080)
    # the metrics port is not the API's: through the gateway, /metrics is not there
    metrics_through_gateway = platform.route_url("e2e", "alpha").removesuffix("/v1") + "/metrics"
    assert httpx.get(metrics_through_gateway, timeout=10).status_code == 404
    # the monitors the platform installs are accepted by the API server (kube-prometheus-stack's CRDs)
    platform.cluster.kubectl("apply", "-f", str(REPO / "operator" / "deploy" / "monitoring"))


def test_a_prompt_version_bump_rolls_the_pods_and_the_new_prompt_answers(
    platform: Platform, applied: dict[str, float], client: Client
) -> None:
    (old,) = platform.agent_pods("tenant-e2e", "beta")
    (alpha,) = platform.agent_pods("tenant-e2e", "alpha")
    v1 = {"version": 1, "template": V1}
    platform.apply(prompt("e2e", 2, V2, previous=[v1]), agent("e2e", "beta", version=2))

    def rolled() -> dict[str, Any] | None:
        pods = [
            p
            for p in platform.agent_pods("tenant-e2e", "beta")
            if p["metadata"]["name"] != old["metadata"]["name"]
        ]
        ready = [p for p in pods if all(c.get("ready") for c in p["status"].get("containerStatuses") or [{}])]
        gone = all(
            p["metadata"]["name"] != old["metadata"]["name"]
            for p in platform.agent_pods("tenant-e2e", "beta")
        )
        return ready[0] if ready and gone else None

    new = platform.wait("beta's pods rolled to prompt v2", rolled, timeout=240)
    assert (
        new["metadata"]["annotations"]["agentplane.io/config-hash"]
        != old["metadata"]["annotations"]["agentplane.io/config-hash"]
    )
    platform.cluster.kubectl(
        "wait", "--for=condition=Ready", "agent/beta", "-n", "tenant-e2e", "--timeout=120s", timeout=150
    )
    key = platform.create_key("e2e")
    platform.fake.requests.clear()
    client(platform.route_url("e2e", "beta"), key).chat.completions.create(
        model="beta",
        messages=ask("hello"),
    )
    (request,) = [r for r in platform.fake.requests if r.body.get("model") == "gpt-4o-mini"]
    assert V2 in request.body["messages"][0]["content"]
    # alpha, pinned to v1, kept its pod
    assert [p["metadata"]["name"] for p in platform.agent_pods("tenant-e2e", "alpha")] == [
        alpha["metadata"]["name"]
    ]


def _artifact(platform: Platform, revision: str, tree: Path) -> str:
    """Serve a tarball of `tree` from the host, as Flux's source-controller serves an artifact."""
    served = platform.workdir / "artifacts"
    served.mkdir(exist_ok=True)
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as tar:
        for path in sorted(tree.rglob("*")):
            tar.add(path, arcname=path.relative_to(tree).as_posix(), recursive=False)
    name = hashlib.sha256(revision.encode()).hexdigest()[:12] + ".tar.gz"
    (served / name).write_bytes(data.getvalue())
    return name


@pytest.fixture(scope="module")
def artifact_server(platform: Platform) -> Iterator[str]:
    root = platform.workdir / "artifacts"
    root.mkdir(exist_ok=True)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer((netplan.HOST_ADDRESS, 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://{netplan.HOST_ADDRESS}:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_new_gitops_revision_syncs_the_tenants_knowledge_in_a_job(
    platform: Platform, applied: dict[str, float], artifact_server: str
) -> None:
    repo = platform.workdir / "repo"
    handbook = repo / "specs" / "tenants" / "e2e" / "knowledge" / "handbook"
    handbook.mkdir(parents=True)
    (handbook / "returns.md").write_text("# Returns\n\nItems can be returned within 30 days.\n")
    (handbook / "shipping.md").write_text("# Shipping\n\nOrders ship within two days.\n")
    shutil.copy(
        REPO / "specs" / "tenants" / "acme" / "tenant.yaml", repo / "specs" / "tenants" / "e2e-acme.yaml.txt"
    )
    (repo / "specs" / "tenants" / "e2e" / "tenant.yaml").write_text(json.dumps(tenant(
        "e2e", egress=[{"cidr": f"{INSIDE}/32", "ports": [TOOL_PORT]}], knowledgeBases=[KNOWLEDGE_BASE])))  # fmt: skip
    revision = "main@sha1:" + hashlib.sha1(b"e2e-1").hexdigest()
    name = _artifact(platform, revision, repo)
    source = {
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "GitRepository",
        "metadata": {"name": GITOPS_SOURCE, "namespace": GITOPS_NAMESPACE},
        "spec": {"url": "https://git.example/agentplane.git", "interval": "1m", "ref": {"branch": "main"}},
    }
    platform.apply(source)
    # what source-controller writes when it has fetched a revision
    artifact = {
        "path": f"gitrepository/{GITOPS_NAMESPACE}/{GITOPS_SOURCE}/{name}",
        "url": f"{artifact_server}/{name}",
        "revision": revision,
        "digest": "sha256:"
        + hashlib.sha256((platform.workdir / "artifacts" / name).read_bytes()).hexdigest(),
        "lastUpdateTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "size": (platform.workdir / "artifacts" / name).stat().st_size,
    }
    platform.cluster.kubectl(
        "patch", "gitrepository", GITOPS_SOURCE, "-n", GITOPS_NAMESPACE, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"artifact": artifact}}),
    )  # fmt: skip

    def synced() -> dict[str, Any] | None:
        obj = platform.get("tenant", "e2e")
        found = ((obj or {}).get("status") or {}).get("knowledgeSync") or {}
        return found if found.get("revision") == revision and found.get("state") != "Running" else None

    result = platform.wait("the knowledge-sync Job's summary on the Tenant", synced, timeout=300)
    assert result["state"] == "Succeeded", result
    assert (result["ingested"], result["removed"], result["failed"]) == (2, 0, [])
    job = platform.get("job", result["job"], PLATFORM_NAMESPACE)
    assert job is not None
    (pod,) = platform.pods(PLATFORM_NAMESPACE, **{"job-name": result["job"]})
    assert pod["spec"]["containers"][0]["image"] == platform.runtime.ref


def _secret_keys(platform: Platform, namespace: str, name: str) -> dict[str, str]:
    secret = platform.get("secret", name, namespace)
    assert secret is not None
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def test_a_runtime_without_its_stores_never_turns_ready_and_the_agent_says_why(
    platform: Platform, applied: dict[str, float]
) -> None:
    ns = "tenant-e2e-other"
    # the stores unreachable: the runtime refuses to start, and the Agent carries its reason
    stores = _secret_keys(platform, ns, "agentplane-runtime")
    broken = {
        **stores,
        "AGENTPLANE_REDIS_URL": f"redis://{netplan.HOST_ADDRESS}:1/0",
        "AGENTPLANE_STARTUP_TIMEOUT_SECONDS": "3",
    }
    platform.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "agentplane-runtime", "namespace": ns},
            "stringData": broken,
        }
    )
    platform.apply(agent("e2e-other", "doomed"))

    def stalled(name: str) -> dict[str, Any] | None:
        obj = platform.get("agent", name, ns)
        cond = {c["type"]: c for c in ((obj or {}).get("status") or {}).get("conditions") or []}
        return (
            obj
            if cond.get("Stalled", {}).get("status") == "True"
            and cond["Stalled"]["reason"] != "ConfigNotResolved"
            else None
        )

    doomed = platform.wait("the doomed agent Stalled", lambda: stalled("doomed"), timeout=240)
    deployed = next(c for c in doomed["status"]["conditions"] if c["type"] == "Deployed")
    assert deployed["reason"] in ("CrashLoopBackOff", "ContainerExited")
    assert "agentplane runtime cannot start: redis at" in deployed["message"]
    assert kstatus(doomed).status == "Failed"
    (pod,) = platform.agent_pods(ns, "doomed")
    assert not pod["status"]["containerStatuses"][0]["ready"]

    # the Secret gone: the pod is never even started, and the Agent says which Secret
    platform.cluster.kubectl("delete", "secret", "agentplane-runtime", "-n", ns)
    platform.cluster.kubectl("delete", "pod", "-n", ns, "-l", "agentplane.io/agent=doomed", "--wait=false")

    def missing() -> dict[str, Any] | None:
        obj = platform.get("agent", "doomed", ns)
        conditions: list[dict[str, Any]] = ((obj or {}).get("status") or {}).get("conditions") or []
        deployed = next((c for c in conditions if c["type"] == "Deployed"), {})
        return deployed if deployed.get("reason") == "CreateContainerConfigError" else None

    reason = platform.wait("CreateContainerConfigError on the Agent", missing, timeout=180)
    assert 'secret "agentplane-runtime" not found' in reason["message"]
    platform.cluster.kubectl("delete", "agent", "doomed", "-n", ns)


def test_deleting_a_tenant_leaves_nothing_behind(platform: Platform, applied: dict[str, float]) -> None:
    of_tenant = platform.node.exec_in_node(
        ["ctr", f"--address={platform.node.containerd_socket}", "--namespace=k8s.io", "containers", "list", "-q",
         'labels."io.kubernetes.pod.namespace"==tenant-e2e-other'],
    ).stdout.split()  # fmt: skip
    assert of_tenant, "gamma's containers run on the node before the deletion"
    platform.cluster.kubectl("delete", "tenant", "e2e-other", "--timeout=180s", timeout=200)
    platform.wait(
        "tenant-e2e-other gone", lambda: platform.get("namespace", "tenant-e2e-other") is None, timeout=180
    )
    client = redis.Redis.from_url(platform.redis_url, decode_responses=True)
    try:
        assert list(client.scan_iter(match="agentplane:quota:e2e-other:*")) == []
    finally:
        client.close()
    with psycopg.connect(platform.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM tenant_quotas WHERE tenant = 'e2e-other'").fetchone() == (
            0,
        )

    def no_pods_of_the_tenant() -> bool:
        of_tenant = platform.node.exec_in_node(
            ["ctr", f"--address={platform.node.containerd_socket}", "--namespace=k8s.io", "containers", "list", "-q",
             'labels."io.kubernetes.pod.namespace"==tenant-e2e-other'],
        ).stdout.split()  # fmt: skip
        return not of_tenant

    platform.wait("the tenant's pods gone from the node", no_pods_of_the_tenant, timeout=120)
