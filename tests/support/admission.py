"""Ask the API server for its admission verdict on an object, without storing it.

``dry_run_create`` and ``dry_run_update`` send the object with ``dryRun=All``: every admission
step runs (defaulting, schema validation, ValidatingAdmissionPolicies) and nothing is persisted.
The answer is the API server's own: HTTP 200/201 is an admission, anything else a refusal with the
``Status`` message it returned (not kubectl's rendering of it).
"""

from __future__ import annotations

import base64
import json
import ssl
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agentplane_platform.api.v1alpha1 import TIER_LABEL
from support.cluster import Cluster


@dataclass(frozen=True)
class Answer:
    """The API server's verdict on one request."""

    allowed: bool
    status: int
    """HTTP status code."""
    message: str
    """``Status.message`` of a refusal; empty when allowed."""
    reason: str
    """``Status.reason`` of a refusal (``Invalid``, ``Forbidden``, ...); empty when allowed."""


class ApiServer:
    """A client of one cluster's API server, as its admin (the kubeconfig's client certificate)."""

    def __init__(self, cluster: Cluster) -> None:
        config = yaml.safe_load(cluster.kubeconfig.read_text())
        self.server: str = config["clusters"][0]["cluster"]["server"]
        user = config["users"][0]["user"]
        self._context = ssl.create_default_context(
            cadata=base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"]).decode()
        )
        # load_cert_chain reads files only: the pair lives in a private directory for this call.
        with tempfile.TemporaryDirectory() as directory:
            cert, key = Path(directory, "client.crt"), Path(directory, "client.key")
            cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
            key.touch(mode=0o600)
            key.write_bytes(base64.b64decode(user["client-key-data"]))
            self._context.load_cert_chain(str(cert), str(key))

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """Send one request; the status code and the decoded JSON answer (errors included)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.server + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, context=self._context, timeout=30) as response:
                status: int = response.status
                payload: dict[str, Any] = json.loads(response.read() or b"{}")
                return status, payload
        except urllib.error.HTTPError as error:
            with error:
                return error.code, json.loads(error.read() or b"{}")

    def answer(self, method: str, path: str, body: dict[str, Any]) -> Answer:
        status, payload = self.request(method, path, body)
        if status < 300:
            return Answer(True, status, "", "")
        return Answer(False, status, str(payload.get("message", "")), str(payload.get("reason", "")))

    def dry_run_create(self, obj: dict[str, Any]) -> Answer:
        """What the API server answers to creating ``obj`` (nothing is stored)."""
        return self.answer("POST", collection_path(obj) + "?dryRun=All", obj)

    def dry_run_update(self, obj: dict[str, Any]) -> Answer:
        """What the API server answers to replacing the stored object with ``obj`` (nothing is
        stored). The stored object's resourceVersion is sent along: custom resources refuse an
        unconditional update."""
        path = f"{collection_path(obj)}/{urllib.parse.quote(obj['metadata']['name'])}"
        status, stored = self.request("GET", path)
        if status != 200:
            raise AssertionError(f"GET {path}: {status} {stored.get('message')}")
        metadata = {**obj["metadata"], "resourceVersion": stored["metadata"]["resourceVersion"]}
        return self.answer("PUT", f"{path}?dryRun=All", {**obj, "metadata": metadata})


# Plural resource names of the kinds the policies see (agentplane's CRDs name them so).
_PLURALS = {"Tenant": "tenants", "Agent": "agents", "Tool": "tools", "Prompt": "prompts"}


def collection_path(obj: dict[str, Any]) -> str:
    """The URL path of the collection ``obj`` belongs to (an agentplane kind, or a core one)."""
    kind: str = obj["kind"]
    plural = _PLURALS.get(kind) or f"{kind.lower()}s"
    api_version: str = obj["apiVersion"]
    prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    namespace = obj["metadata"].get("namespace")
    return f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"


# --------------------------------------------------------------------------
# Knowing when the API server enforces what was installed
#
# The API server loads policies, bindings and parameters through three informers (one watch each)
# and namespaces through a fourth; requests are judged against those caches, which lag the writes.
# Each watch delivers events in order, so an object written *after* others shows, once it takes
# effect, that the others have too. The probes are such objects: policies of their own that judge
# only ConfigMaps labelled for them (sent as dry runs), and say in their message what they saw.

PROBE_LABEL = "agentplane.io/admission-probe"
PROBE_NAMESPACE = "agentplane-admission-probe"
PROBE_TIER = "probe"
_ADMISSION = "admissionregistration.k8s.io/v1"
_NO_PARAMS = "no params found"


def _probe_policy(name: str, probe: str, message: str, param_kind: dict[str, str] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "failurePolicy": "Fail",
        "matchConstraints": {
            "resourceRules": [
                {
                    "apiGroups": [""],
                    "apiVersions": ["v1"],
                    "operations": ["CREATE"],
                    "resources": ["configmaps"],
                }
            ],
            "objectSelector": {"matchLabels": {PROBE_LABEL: probe}},
        },
        "validations": [{"expression": "false", "messageExpression": message}],
    }
    if param_kind is not None:
        spec["paramKind"] = param_kind
    return {
        "apiVersion": _ADMISSION,
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }


def _probe_binding(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": _ADMISSION,
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"], **spec},
    }


class AdmissionProbes:
    """Probe policies that show when the API server's caches caught up with what was written.

    ``install`` (after the policies under test): returns once the API server enforces them.
    ``sync_params`` (after parameters changed): returns once every change is in effect.
    ``wait_for_tier`` (after a namespace was labelled): returns once the label is in effect.
    ``uninstall`` (after the policies under test were deleted): returns once none is enforced.
    """

    NAMESPACE_PROBE = "agentplane-test-probe-namespace"
    PARAMS_PROBE = "agentplane-test-probe-params"

    def __init__(
        self, cluster: Cluster, api: ApiServer, param: dict[str, Any] | None = None, *, timeout: float = 60.0
    ) -> None:
        """``param``: a parameter object of the policies under test, copied (renamed) as the
        sentinel of ``sync_params``; without one there is no parameter probe."""
        self.cluster, self.api, self.timeout = cluster, api, timeout
        self.param = param
        self._sentinels = 0
        self._installed = False

    def manifests(self) -> list[dict[str, Any]]:
        namespace_probe = [
            _probe_policy(
                self.NAMESPACE_PROBE,
                "namespace",
                f"'tier ' + namespaceObject.metadata.labels['{TIER_LABEL}']",
                None,
            ),
            _probe_binding(
                self.NAMESPACE_PROBE,
                {
                    "matchResources": {
                        "namespaceSelector": {"matchExpressions": [{"key": TIER_LABEL, "operator": "Exists"}]}
                    }
                },
            ),
        ]
        if self.param is None:
            return namespace_probe
        param_kind = {"apiVersion": self.param["apiVersion"], "kind": self.param["kind"]}
        return [
            *namespace_probe,
            _probe_policy(self.PARAMS_PROBE, "params", "'params ' + params.metadata.name", param_kind),
            _probe_binding(
                self.PARAMS_PROBE,
                {
                    "paramRef": {
                        "selector": {"matchLabels": {PROBE_LABEL: "sentinel"}},
                        "parameterNotFoundAction": "Deny",
                    }
                },
            ),
        ]

    def _probe(self, namespace: str, probe: str) -> Answer:
        return self.api.dry_run_create(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "probe", "namespace": namespace, "labels": {PROBE_LABEL: probe}},
            }
        )

    def _wait(self, what: str, done: Callable[[Answer], bool], namespace: str, probe: str) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            answer = self._probe(namespace, probe)
            if done(answer):
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {self.timeout:.0f}s waiting for {what} (last: {answer})"
                )
            time.sleep(0.1)

    def install(self) -> None:
        """Install the probes; return once they (and so everything installed before them) are enforced."""
        self._installed = True
        self.cluster.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": PROBE_NAMESPACE, "labels": {TIER_LABEL: PROBE_TIER}},
                }
            ),
        )
        self.cluster.kubectl(
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": self.manifests()}),
        )
        expected = f"tier {PROBE_TIER}"
        self._wait(
            "the probe policies to be enforced",
            lambda a: not a.allowed and a.message.endswith(expected),
            PROBE_NAMESPACE,
            "namespace",
        )

    def sync_params(self) -> None:
        """Return once every parameter written before is in effect: a sentinel parameter written
        after them is seen, then its deletion is."""
        assert self.param is not None, "sync_params needs a parameter object to copy"
        self._sentinels += 1
        name = f"agentplane-test-sentinel-{self._sentinels}"
        sentinel = {
            **self.param,
            "metadata": {"name": name, "labels": {PROBE_LABEL: "sentinel"}},
        }
        manifest = json.dumps(sentinel)
        self.cluster.kubectl("create", "-f", "-", input=manifest)
        try:
            self._wait(
                f"parameter {name} to be in effect",
                lambda a: not a.allowed and a.message.endswith(f"params {name}"),
                PROBE_NAMESPACE,
                "params",
            )
        finally:
            self.cluster.kubectl("delete", "-f", "-", "--ignore-not-found", input=manifest)
        self._wait(
            f"parameter {name} to be gone",
            lambda a: not a.allowed and _NO_PARAMS in a.message,
            PROBE_NAMESPACE,
            "params",
        )

    def wait_for_tier(self, namespace: str, tier: str) -> None:
        """Return once the API server judges requests in ``namespace`` with its label ``tier``."""
        self._wait(
            f"namespace {namespace} to be labelled {TIER_LABEL}={tier} for admission",
            lambda a: not a.allowed and a.message.endswith(f"tier {tier}"),
            namespace,
            "namespace",
        )

    def wait_for_no_tier(self, namespace: str) -> None:
        """Return once the API server judges requests in ``namespace`` without a tier label."""
        self._wait(
            f"namespace {namespace} to lose its {TIER_LABEL} label for admission",
            lambda a: a.allowed,
            namespace,
            "namespace",
        )

    def uninstall(self) -> None:
        """Delete the probes (after the policies under test); return once the API server enforces
        neither them nor anything deleted before them."""
        for kind in ("ValidatingAdmissionPolicyBinding", "ValidatingAdmissionPolicy"):
            for name in (self.NAMESPACE_PROBE, self.PARAMS_PROBE):
                self.cluster.kubectl(
                    "delete", f"{kind.lower()}.admissionregistration.k8s.io", name, "--ignore-not-found"
                )
        if self._installed:
            self._wait("the probe policies to be gone", lambda a: a.allowed, PROBE_NAMESPACE, "namespace")
        self.cluster.kubectl("delete", "namespace", PROBE_NAMESPACE, "--ignore-not-found", "--wait=false")
