"""The base of a plan from the live cluster, and the API server's own verdict on the new objects.

kubectl (with the current kubeconfig, `KUBECONFIG` included) reads the live Tenants, Agents,
Tools and Prompts, and applies each new object with a server-side dry run: what the API server
refuses (schema, CEL and transition rules of the CRDs, admission policies) is an error of the plan,
and nothing is written. kubectl rather than an HTTP client: it is what knows every kubeconfig's
ways to authenticate (client certificates, tokens, exec plugins such as AKS's kubelogin).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, replace

import yaml
from pydantic import ValidationError

from agentplane_platform.api.v1alpha1 import KINDS, Agent, Prompt, Resource, Tenant, Tool
from agentplane_platform.jsontypes import JsonObject, JsonValue
from agentplane_platform.specs import Document, Loaded, Position, Problem, SpecSet

from ._model import Base
from ._tree import SpecTree

FIELD_MANAGER = "agentplane-plan"
PLAN_KINDS = ("tenants.agentplane.io", "agents.agentplane.io", "tools.agentplane.io", "prompts.agentplane.io")


class ClusterError(Exception):
    """kubectl could not read the cluster: the message says why."""


@dataclass(frozen=True, slots=True)
class Kubectl:
    """kubectl with the current kubeconfig."""

    binary: str = "kubectl"

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [self.binary, *args], input=stdin, capture_output=True, text=True, check=False, timeout=120
            )
        except FileNotFoundError:
            raise ClusterError(
                f"{self.binary} is not installed (agentplane plan --cluster uses kubectl)"
            ) from None
        except subprocess.TimeoutExpired:
            raise ClusterError(f"kubectl {' '.join(args)} did not answer within 120 s") from None

    def json(self, *args: str) -> JsonValue:
        done = self.run(*args, "-o", "json")
        if done.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        parsed: JsonValue = json.loads(done.stdout)
        return parsed


def _live(item: JsonObject) -> Loaded[Resource] | None:
    kind = KINDS.get(str(item.get("kind")))
    if kind is None:
        return None
    meta = item.get("metadata")
    if not isinstance(meta, dict):
        return None
    namespace = f"{meta['namespace']}/" if meta.get("namespace") else ""
    where = f"cluster:{item.get('kind')}/{namespace}{meta.get('name')}"
    try:
        resource = kind.model_validate(item, by_alias=True, by_name=False)
    except ValidationError:
        return None  # an object the models refuse is left out, as the operator leaves it unresolved
    return Loaded(resource, Document(where, 0, item, Position(1, 1)))


def live_tree(kubectl: Kubectl) -> tuple[SpecTree, Base]:
    """The live objects as a spec tree (knowledge files are not in a cluster: none), and the base."""
    context = kubectl.run("config", "current-context").stdout.strip() or "the current context"
    listing = kubectl.json("get", ",".join(PLAN_KINDS), "--all-namespaces")
    items = listing.get("items") if isinstance(listing, dict) else None
    specs = SpecSet()
    for item in items if isinstance(items, list) else []:
        loaded = _live(item) if isinstance(item, dict) else None
        if loaded is None:
            continue
        resource = loaded.resource
        key = (resource.metadata.namespace or "", resource.metadata.name)
        if isinstance(resource, Tenant):
            specs.tenants[resource.metadata.name] = Loaded(resource, loaded.document)
        elif isinstance(resource, Agent):
            specs.agents[key] = Loaded(resource, loaded.document)
        elif isinstance(resource, Tool):
            specs.tools[key] = Loaded(resource, loaded.document)
        elif isinstance(resource, Prompt):
            specs.prompts[key] = Loaded(resource, loaded.document)
    return SpecTree(specs), Base("cluster", "", f"the live cluster, kubeconfig context {context}")


def with_live_status(new: SpecTree, live: SpecTree) -> SpecTree:
    """The new tree with the live Tools' status (an MCP Tool's discovered schema is read from it, as
    the operator reads it), so agents using such Tools resolve as they will in the cluster."""
    tools = dict(new.specs.tools)
    for key, loaded in tools.items():
        found = live.specs.tools.get(key)
        if found is not None and found.resource.status is not None:
            tools[key] = Loaded(
                loaded.resource.model_copy(update={"status": found.resource.status}), loaded.document
            )
    return replace(new, specs=replace(new.specs, tools=tools))


def server_dry_run(kubectl: Kubectl, new: SpecTree, live: SpecTree) -> list[Problem]:
    """Each new or changed object applied with a server-side dry run; what the API server refuses."""
    problems: list[Problem] = []
    objects: Sequence[Loaded[Resource]] = [
        *new.specs.tenants.values(),
        *new.specs.prompts.values(),
        *new.specs.tools.values(),
        *new.specs.agents.values(),
    ]
    for loaded in objects:
        data = loaded.document.data
        if not isinstance(data, dict):
            continue
        namespace = loaded.resource.metadata.namespace
        tenant = namespace.removeprefix("tenant-") if namespace else None
        done = kubectl.run(
            "apply", "--server-side", "--dry-run=server", "--force-conflicts",
            f"--field-manager={FIELD_MANAGER}", "-o", "json", "-f", "-",
            stdin=yaml.safe_dump(data),
        )  # fmt: skip
        if done.returncode == 0:
            continue
        message = done.stderr.strip().removeprefix("Error from server").strip()
        if (
            tenant is not None
            and tenant not in live.specs.tenants
            and f'namespaces "{namespace}" not found' in message
        ):
            continue  # a new tenant's namespace is made by the operator after the merge
        problems.append(loaded.at((), f"the API server refuses it (server-side dry run): {message}"))
    return problems
