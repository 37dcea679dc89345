"""Checks that span objects and files: names, namespaces, duplicates, references, inline secrets."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePath
from urllib.parse import urlsplit

from agentplane_platform import egress, max_agents
from agentplane_platform.api.v1alpha1 import (
    Agent,
    HttpTool,
    McpTool,
    Prompt,
    Resource,
    Tenant,
    Tool,
    namespace_of,
    tenant_of,
)
from agentplane_platform.config import agent_problems, undeclared_variables
from agentplane_platform.schemas import JsonDict, openapi_schema
from agentplane_platform.templates import variables_used
from agentplane_platform.tool_schema import parameters_problems

from ._load import Loaded, LoadResult, RawObject
from ._problems import Problem
from ._yaml import Path_


@dataclass(slots=True)
class SpecSet:
    """The valid objects of a spec tree, indexed the way references are resolved."""

    tenants: dict[str, Loaded[Tenant]] = field(default_factory=dict)
    agents: dict[tuple[str, str], Loaded[Agent]] = field(default_factory=dict)
    tools: dict[tuple[str, str], Loaded[Tool]] = field(default_factory=dict)
    prompts: dict[tuple[str, str], Loaded[Prompt]] = field(default_factory=dict)

    def tenant_of(self, namespace: str) -> Loaded[Tenant] | None:
        name = tenant_of(namespace)
        return self.tenants.get(name) if name is not None else None

    def prompts_in(self, namespace: str) -> dict[str, Prompt]:
        """The Prompts of a namespace, by name."""
        return {name: p.resource for (ns, name), p in self.prompts.items() if ns == namespace}

    def tools_in(self, namespace: str) -> dict[str, Tool]:
        """The Tools of a namespace, by name."""
        return {name: t.resource for (ns, name), t in self.tools.items() if ns == namespace}

    def beyond_max_agents(self) -> dict[tuple[str, str], Problem]:
        """The Agents their Tenant's `quotas.maxAgents` refuses (`agentplane_platform.max_agents`,
        the operator's rule), by (namespace, name): the problem at each, whose message is the reason
        the operator writes in the Agent's condition."""
        by_namespace: dict[str, list[Loaded[Agent]]] = defaultdict(list)
        for (namespace, _), loaded in self.agents.items():
            by_namespace[namespace].append(loaded)
        found: dict[tuple[str, str], Problem] = {}
        for namespace, agents in sorted(by_namespace.items()):
            tenant = self.tenant_of(namespace)
            if tenant is None:
                continue
            admission = max_agents.admit(
                tenant.resource,
                (
                    max_agents.Candidate.of(a.resource.metadata.name, a.resource.metadata.creation_timestamp)
                    for a in agents
                ),
            )
            for loaded in agents:
                why = admission.refused.get(loaded.resource.metadata.name)
                if why is not None:
                    found[(namespace, loaded.resource.metadata.name)] = loaded.at(("metadata", "name"), why)
        return found

    def __len__(self) -> int:
        return len(self.tenants) + len(self.agents) + len(self.tools) + len(self.prompts)


CREDENTIAL_NAME = re.compile(
    r"(^|[-_.])(authorization|api[-_]?key|apikey|token|secret|password|passwd|pwd|cookie|credentials?|"
    r"access[-_]?key|private[-_]?key|client[-_]?secret|auth)($|[-_.])",
    re.IGNORECASE,
)
CREDENTIAL_VALUE = re.compile(
    r"^(bearer|basic|token)\s+\S{8,}|"
    r"^sk-[A-Za-z0-9_-]{16,}|^gh[pousr]_[A-Za-z0-9]{20,}|^xox[abprs]-[A-Za-z0-9-]{10,}|"
    r"^AKIA[0-9A-Z]{16}$|^eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.|^AIza[0-9A-Za-z_-]{30,}",
    re.IGNORECASE,
)
SECRET_HINT = "credentials must not be written in specs (expected spec.auth.secretRef naming a Secret or Key Vault secret)"


def tenant_dir(file: str) -> str | None:
    """`acme` for a file under `.../tenants/acme/...`."""
    parts = PurePath(file).parts
    for index, part in enumerate(parts[:-2]):
        if part == "tenants":
            return parts[index + 1]
    return None


def _check_names(result: LoadResult) -> Iterator[Problem]:
    for loaded in result.objects:
        resource: Resource = loaded.resource
        pattern, max_length, what = resource.name_rule
        name = resource.metadata.name
        if len(name) > max_length or not re.match(pattern, name):
            yield loaded.at(
                ("metadata", "name"),
                f"got {name!r} (expected {what}, at most {max_length} characters)",
            )
        namespace = resource.metadata.namespace
        folder = tenant_dir(loaded.file)
        if not resource.namespaced:
            if namespace is not None:
                yield loaded.at(
                    ("metadata", "namespace"),
                    f"{resource.kind_name} is cluster-scoped (expected no namespace)",
                )
            if folder is not None and folder != name:
                yield loaded.at(
                    ("metadata", "name"), f"file is under tenants/{folder}/ (expected name {folder!r})"
                )
            continue
        if namespace is None:
            expected = f"tenant-{folder}" if folder else "tenant-<tenant>"
            yield loaded.at(
                ("metadata", "namespace"), f"required for a namespaced kind (expected {expected})"
            )
        elif tenant_of(namespace) is None:
            yield loaded.at(("metadata", "namespace"), f"got {namespace!r} (expected tenant-<tenant>)")
        elif folder is not None and namespace != namespace_of(folder):
            yield loaded.at(
                ("metadata", "namespace"),
                f"got {namespace!r} but the file is under tenants/{folder}/ (expected {namespace_of(folder)})",
            )


def _check_duplicates(raw: list[RawObject]) -> Iterator[Problem]:
    seen: dict[tuple[str, str | None, str], RawObject] = {}
    for obj in raw:
        key = (obj.kind, obj.namespace, obj.name)
        first = seen.get(key)
        if first is None:
            seen[key] = obj
            continue
        where = f"{first.document.file}:{first.document.position(('metadata', 'name')).line}"
        scope = f" in namespace {obj.namespace}" if obj.namespace else ""
        yield Problem(
            obj.document.file,
            obj.document.position(("metadata", "name")),
            f"duplicate {obj.kind} {obj.name!r}{scope} (first defined at {where})",
            kind=obj.kind,
            name=obj.name,
            path="metadata.name",
        )


def _check_lists(loaded: Loaded[Resource]) -> Iterator[Problem]:
    """Uniqueness of list-map keys and set items, as the API server enforces them."""
    schema = openapi_schema(type(loaded.resource))
    data: object = loaded.document.data
    pending: list[tuple[JsonDict, object, Path_]] = [(schema, data, ())]
    while pending:
        node, data, path = pending.pop()
        if isinstance(data, dict):
            properties = node.get("properties", {})
            for key, value in data.items():
                if key in properties:
                    pending.append((properties[key], value, (*path, key)))
        elif isinstance(data, list):
            list_type = node.get("x-kubernetes-list-type")
            keys = node.get("x-kubernetes-list-map-keys", [])
            seen: dict[object, int] = {}
            for index, item in enumerate(data):
                ident: object
                if list_type == "map" and isinstance(item, dict):
                    ident = tuple(str(item.get(k)) for k in keys)
                    label = ", ".join(f"{k}={item.get(k)!r}" for k in keys)
                elif list_type == "set":
                    ident, label = repr(item), repr(item)
                else:
                    ident = None
                if ident is not None:
                    if ident in seen:
                        yield loaded.at(
                            (*path, index), f"duplicate entry {label} (first at index {seen[ident]})"
                        )
                    else:
                        seen[ident] = index
                pending.append((node.get("items", {}), item, (*path, index)))


def _check_prompt(loaded: Loaded[Prompt]) -> Iterator[Problem]:
    spec = loaded.resource.spec
    versions: list[tuple[Path_, str, list[str]]] = [
        (("spec",), spec.template, [v.name for v in spec.variables])
    ]
    for index, previous in enumerate(spec.previous_versions):
        versions.append(
            (("spec", "previousVersions", index), previous.template, [v.name for v in previous.variables])
        )
    for base, template, declared in versions:
        used, malformed = variables_used(template)
        for placeholder in malformed:
            yield loaded.at(
                (*base, "template"), f"malformed placeholder {placeholder!r} (expected {{{{ name }}}})"
            )
        for name in undeclared_variables(template, declared):
            yield loaded.at(
                (*base, "template"),
                f"template uses {{{{ {name} }}}} but variables does not declare it "
                f"(declared: {', '.join(declared) or 'none'})",
            )
        for index, name in enumerate(declared):
            if name not in used:
                yield loaded.at(
                    (*base, "variables", index, "name"),
                    f"variable {name!r} is declared but the template never uses it",
                    severity="warning",
                )


def _walk_defaults(node: object, path: Path_) -> Iterator[tuple[Path_, str, object]]:
    """`(path, property name, default)` for every default in a JSON Schema."""
    pending: list[tuple[object, Path_, str]] = [(node, path, "")]
    while pending:
        current, where, prop = pending.pop()
        if isinstance(current, dict):
            if "default" in current:
                yield (*where, "default"), prop, current["default"]
            for key, value in current.items():
                if key == "properties" and isinstance(value, dict):
                    for name, sub in value.items():
                        pending.append((sub, (*where, "properties", name), name))
                elif key != "default":
                    pending.append((value, (*where, key), prop))
        elif isinstance(current, list):
            for index, value in enumerate(current):
                pending.append((value, (*where, index), prop))


def _looks_secret(value: object) -> bool:
    return isinstance(value, str) and CREDENTIAL_VALUE.search(value.strip()) is not None


def _check_tool(loaded: Loaded[Tool], specs: SpecSet) -> Iterator[Problem]:
    spec = loaded.resource.spec
    if isinstance(spec, HttpTool):
        for header, value in spec.headers.items():
            if CREDENTIAL_NAME.search(header) or _looks_secret(value):
                yield loaded.at(
                    ("spec", "headers", header), f"header {header!r} carries a credential: {SECRET_HINT}"
                )
    parameters = spec.parameters
    if parameters is not None:
        for problem in parameters_problems(parameters):
            yield loaded.at(("spec", "parameters", *problem.path), problem.message)
        for path, prop, default in _walk_defaults(parameters, ("spec", "parameters")):
            if (
                prop and CREDENTIAL_NAME.search(prop) and isinstance(default, str) and default
            ) or _looks_secret(default):
                yield loaded.at(
                    path, f"default of {prop or 'parameter'!r} looks like a credential: {SECRET_HINT}"
                )
    if isinstance(spec, HttpTool | McpTool):
        url = urlsplit(spec.url)
        if url.username or url.password:
            yield loaded.at(("spec", "url"), f"the URL carries a user or password: {SECRET_HINT}")
        for key in re.findall(r"(?:^|&)([^=&]+)=", url.query):
            if CREDENTIAL_NAME.search(key):
                yield loaded.at(
                    ("spec", "url"), f"query parameter {key!r} carries a credential: {SECRET_HINT}"
                )
        namespace = loaded.resource.metadata.namespace or ""
        tenant = specs.tenant_of(namespace)
        host = url.hostname or ""
        if tenant is not None and not egress.allows_url(tenant.resource.spec.egress, spec.url):
            yield loaded.at(
                ("spec", "url"),
                f"host {host!r} is not in Tenant {tenant.resource.name!r}'s egress allowlist "
                "(expected a spec.egress entry for it, or the tool's calls will be blocked)",
            )


def _check_agent(
    loaded: Loaded[Agent],
    specs: SpecSet,
    present: set[tuple[str, str | None, str]],
    in_namespace: Callable[[str], tuple[dict[str, Prompt], dict[str, Tool]]],
) -> Iterator[Problem]:
    """What keeps the Agent from resolving (`agentplane_platform.config.agent_problems`, the rule
    `resolve_agent` applies), each at its field."""
    agent = loaded.resource
    namespace = agent.metadata.namespace or ""
    tenant = specs.tenant_of(namespace)
    if tenant is None:
        if tenant_of(namespace) is not None and ("Tenant", None, tenant_of(namespace)) not in present:
            yield loaded.at(
                ("metadata", "namespace"),
                f"no Tenant {tenant_of(namespace)!r} for namespace {namespace} (expected a Tenant spec)",
            )
        return
    prompts, tools = in_namespace(namespace)
    for problem in agent_problems(agent, tenant.resource, prompts, tools):
        missing = {"PromptNotFound": "Prompt", "ToolNotFound": "Tool"}.get(problem.reason)
        if missing is not None and (missing, namespace, problem.subject) in present:
            continue  # it is there but invalid: its own problems say why
        path = problem.path
        if problem.reason == "VariableMissing" and "variables" not in _prompt_data(loaded):
            path = ("spec", "prompt")
        yield loaded.at(path, problem.message)


def _prompt_data(loaded: Loaded[Agent]) -> dict[str, object]:
    data: object = loaded.document.data
    spec = data.get("spec") if isinstance(data, dict) else None
    prompt = spec.get("prompt") if isinstance(spec, dict) else None
    return prompt if isinstance(prompt, dict) else {}


def index(result: LoadResult) -> tuple[SpecSet, list[Problem]]:
    """The valid objects by name, and the duplicates found while indexing them."""
    specs = SpecSet()
    for loaded in result.objects:
        resource = loaded.resource
        key = (resource.metadata.namespace or "", resource.metadata.name)
        if (tenant := loaded.of(Tenant)) is not None:
            specs.tenants.setdefault(resource.metadata.name, tenant)
        elif (agent := loaded.of(Agent)) is not None:
            specs.agents.setdefault(key, agent)
        elif (tool := loaded.of(Tool)) is not None:
            specs.tools.setdefault(key, tool)
        elif (prompt := loaded.of(Prompt)) is not None:
            specs.prompts.setdefault(key, prompt)
    return specs, list(_check_duplicates(result.raw))


def check(result: LoadResult) -> tuple[SpecSet, list[Problem]]:
    """Every cross-object problem of a loaded spec tree."""
    specs, problems = index(result)
    present = {(raw.kind, raw.namespace if raw.kind != "Tenant" else None, raw.name) for raw in result.raw}
    problems.extend(_check_names(result))
    namespaces: dict[str, tuple[dict[str, Prompt], dict[str, Tool]]] = {}

    def in_namespace(namespace: str) -> tuple[dict[str, Prompt], dict[str, Tool]]:
        if namespace not in namespaces:
            namespaces[namespace] = (specs.prompts_in(namespace), specs.tools_in(namespace))
        return namespaces[namespace]

    for loaded in result.objects:
        problems.extend(_check_lists(loaded))
        resource = loaded.resource
        if (prompt := loaded.of(Prompt)) is not None:
            problems.extend(_check_prompt(prompt))
        elif (tool := loaded.of(Tool)) is not None:
            problems.extend(_check_tool(tool, specs))
        elif (agent := loaded.of(Agent)) is not None:
            problems.extend(_check_agent(agent, specs, present, in_namespace))
        if resource.namespaced and isinstance(resource, Tool | Prompt):
            namespace = resource.metadata.namespace or ""
            name = tenant_of(namespace)
            if name is not None and name not in specs.tenants and ("Tenant", None, name) not in present:
                problems.append(
                    loaded.at(
                        ("metadata", "namespace"),
                        f"no Tenant {name!r} for namespace {namespace} (expected a Tenant spec)",
                    )
                )
    problems.extend(specs.beyond_max_agents().values())
    return specs, problems


__all__ = ["SpecSet", "check", "index"]
