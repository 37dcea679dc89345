"""The resolved agent config: the one document the operator renders and the runtime serves.

`resolve_agent` turns an Agent and what it references (its Tenant, the pinned Prompt version,
its Tools) into an `AgentConfig` — pure, no I/O — or raises `ResolveError` with the reason the
operator puts in the Agent's `ConfigResolved` condition. What it refuses is decided once, by
`agent_problems`: `agentplane validate` reports every one of them at its field's file and line,
`resolve_agent` (the operator, `agentplane up`, `plan`) stops at the first.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agentplane_platform.api.v1alpha1 import (
    Agent,
    AgentLimits,
    BuiltinTool,
    HttpTool,
    McpTool,
    ModelParameters,
    Prompt,
    PromptVersion,
    SecretRef,
    Tenant,
    Tool,
    ToolAuth,
)
from agentplane_platform.api.v1alpha1.tenant import ModelPrice
from agentplane_platform.templates import BUILTIN_VARIABLES, variables_used

CONFIG_KIND = "AgentConfig"

ResolveReason = Literal[
    "PromptNotFound",
    "PromptVersionNotFound",
    "VariableMissing",
    "VariableNotDeclared",
    "ToolNotFound",
    "ToolNotAllowed",
    "ToolNotDiscovered",
    "ModelNotAllowed",
    "KnowledgeBaseNotFound",
]


FieldPath = tuple[str | int, ...]
"""A field of an Agent: `("spec", "tools", 0, "name")`."""


class ResolveError(Exception):
    """Why an Agent's config cannot be resolved; `reason` is a condition reason, `path` the Agent's
    field it is about, `subject` the name that field holds (the model, Prompt, Tool…), when one."""

    def __init__(
        self, reason: ResolveReason, message: str, path: FieldPath = ("spec",), subject: str | None = None
    ) -> None:
        super().__init__(message)
        self.reason: ResolveReason = reason
        self.message = message
        self.path = path
        self.subject = subject


@dataclass(frozen=True, slots=True)
class Unresolved:
    """One reason an Agent does not resolve."""

    reason: ResolveReason
    path: FieldPath
    """The Agent's field it is about."""
    message: str
    subject: str
    """The name the field holds: the model, Prompt, variable, Tool or knowledge base."""


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ResolvedModel(_Config):
    name: str
    fallbacks: list[str]
    parameters: ModelParameters


class ResolvedPrompt(_Config):
    name: str
    version: int
    template: str
    values: dict[str, str]
    """Every declared variable's value (the agent's, else the default); builtins are filled at serve time."""
    hash: str


class _ResolvedToolBase(_Config):
    name: str
    function_name: str
    description: str
    timeout_seconds: int
    parameters: dict[str, Any] | None
    record_arguments: bool = False
    """The audit trail keeps each call's arguments (the Tool's `spec.audit.recordArguments`)."""


class ResolvedAuth(_Config):
    header: str
    scheme: str
    secret: SecretRef

    @classmethod
    def of(cls, auth: ToolAuth) -> ResolvedAuth:
        return cls(header=auth.header, scheme=auth.scheme, secret=auth.secret_ref)

    def headers(self, secret: str) -> dict[str, str]:
        """The header that carries the credential `secret`."""
        return {self.header: f"{self.scheme} {secret}".strip() if self.scheme else secret}


class ResolvedHttpTool(_ResolvedToolBase):
    type: Literal["http"] = "http"
    url: str
    method: str
    headers: dict[str, str]
    auth: ResolvedAuth | None
    max_response_bytes: int


class ResolvedMcpTool(_ResolvedToolBase):
    """An MCP server's tool; `parameters` is the declared schema, else the discovered one."""

    type: Literal["mcp"] = "mcp"
    url: str
    tool: str
    auth: ResolvedAuth | None
    stateless: bool = False
    """One session per call, never one per conversation."""
    parameters_hash: str | None = None
    """`sha256:` of the discovered schema (None: declared in the spec)."""


class ResolvedBuiltinTool(_ResolvedToolBase):
    type: Literal["builtin"] = "builtin"
    builtin: Literal["retrieval", "calculator"]


ResolvedTool = Annotated[
    ResolvedHttpTool | ResolvedMcpTool | ResolvedBuiltinTool, Field(discriminator="type")
]


class ResolvedKnowledge(_Config):
    name: str
    collection: str
    embedding_model: str
    dimensions: int
    distance: str
    top_k: int
    min_score: float


class ResolvedEgress(_Config):
    """One of the tenant's egress rules, as the runtime checks tool destinations against it."""

    host: str | None = None
    cidr: str | None = None
    ports: list[int]


class ResolvedQuota(_Config):
    """Where the tenant's LLM quota lives. The limits themselves are not in the config: the operator
    writes them to `limits_key` (see `agentplane_platform.quotas`), so a quota change applies at
    once and does not roll the agent's pods."""

    tenant: str
    key_prefix: str
    """Prefix of the Redis keys that hold the tenant's live counters."""
    limits_key: str
    """Redis hash with the tenant's limits (`tokens_per_minute`, `requests_per_minute`, `monthly_budget_usd`)."""


class AgentConfig(_Config):
    """Everything the runtime needs to serve one agent; credentials only by reference."""

    api_version: Literal["agentplane.io/v1alpha1"] = "agentplane.io/v1alpha1"
    kind: Literal["AgentConfig"] = "AgentConfig"
    tenant: str
    namespace: str
    agent: str
    description: str
    model: ResolvedModel
    prompt: ResolvedPrompt
    tools: list[ResolvedTool]
    knowledge: list[ResolvedKnowledge]
    limits: AgentLimits
    quota: ResolvedQuota
    egress: list[ResolvedEgress]
    """The tenant's egress rules (see `agentplane_platform.egress`)."""
    model_prices: dict[str, ModelPrice] = Field(default_factory=dict)
    """The tenant's declared model prices (`spec.modelPrices`); the runtime prefers them to the
    platform's and litellm's."""

    # The config is frozen, so its canonical form is made once: the operator asks for the hash
    # several times a reconcile (the ConfigMap, the pod template, conditions, status), and making
    # it was 4.5 % of the operator's CPU while 1,000 Agents converged.
    @functools.cached_property
    def _canonical(self) -> tuple[str, str]:
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return text, hashlib.sha256(text.encode()).hexdigest()[:16]

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> AgentConfig:
        """A copy; one with changes makes its canonical form anew (never the original's)."""
        copied = super().model_copy(update=update, deep=deep)
        copied.__dict__.pop("_canonical", None)
        return copied

    def canonical_json(self) -> str:
        """The config as canonical JSON (sorted keys, no spaces): what is hashed and mounted."""
        return self._canonical[0]

    def hash(self) -> str:
        """Content hash; a change rolls the agent's pods."""
        return self._canonical[1]


def collection_name(tenant: str, knowledge_base: str) -> str:
    """The Qdrant collection of a tenant's knowledge base."""
    return f"{tenant}--{knowledge_base}"


def quota_key_prefix(tenant: str) -> str:
    """Prefix of a tenant's quota keys in Redis."""
    return f"agentplane:quota:{tenant}"


def quota_limits_key(tenant: str) -> str:
    """The Redis hash holding a tenant's quota limits."""
    return f"{quota_key_prefix(tenant)}:limits"


def content_hash(*parts: str) -> str:
    """sha256 over the parts, hex, 16 characters."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def prompt_version_hash(version: PromptVersion) -> str:
    """Content hash of one prompt version (its template and variables)."""
    return content_hash(version.template, json.dumps([v.model_dump(mode="json") for v in version.variables]))


def discovered_parameters(tool: Tool) -> tuple[dict[str, Any], str] | None:
    """The schema (and its hash) discovered for an MCP Tool without declared parameters, when its
    status holds one for the Tool's current server and tool name."""
    spec = tool.spec
    found = tool.status.discovered if tool.status is not None else None
    if not isinstance(spec, McpTool) or found is None or (found.url, found.tool) != (spec.url, spec.tool):
        return None
    try:
        parameters = json.loads(found.parameters)
    except ValueError:
        return None
    return (parameters, found.parameters_hash) if isinstance(parameters, dict) else None


def _resolve_tool(tool: Tool, path: FieldPath) -> ResolvedHttpTool | ResolvedMcpTool | ResolvedBuiltinTool:
    spec = tool.spec
    common: dict[str, Any] = {
        "name": tool.metadata.name,
        "function_name": tool.function_name,
        "description": spec.description,
        "timeout_seconds": spec.timeout_seconds,
        "parameters": spec.parameters,
        "record_arguments": spec.audit is not None and spec.audit.record_arguments,
    }
    if isinstance(spec, HttpTool):
        auth = ResolvedAuth.of(spec.auth) if spec.auth else None
        return ResolvedHttpTool(
            **common,
            url=spec.url,
            method=spec.method,
            headers=dict(spec.headers),
            auth=auth,
            max_response_bytes=spec.max_response_bytes,
        )
    if isinstance(spec, McpTool):
        auth = ResolvedAuth.of(spec.auth) if spec.auth else None
        digest = None
        if spec.parameters is None:
            discovered = discovered_parameters(tool)
            if discovered is None:
                raise ResolveError(
                    "ToolNotDiscovered",
                    f"Tool {tool.name!r} declares no parameters and the input schema of MCP tool "
                    f"{spec.tool!r} at {spec.url} is not discovered yet (see the Tool's status); "
                    "declare spec.parameters to not depend on the server's listing",
                    path,
                )
            common["parameters"], digest = discovered
        return ResolvedMcpTool(
            **common,
            url=spec.url,
            tool=spec.tool,
            auth=auth,
            stateless=spec.stateless,
            parameters_hash=digest,
        )
    assert isinstance(spec, BuiltinTool)
    return ResolvedBuiltinTool(**common, builtin=spec.builtin)


def undeclared_variables(template: str, declared: Iterable[str]) -> list[str]:
    """The variables a template uses that it neither declares nor gets built in, sorted."""
    used, _ = variables_used(template)
    return sorted(used - set(declared) - BUILTIN_VARIABLES)


def agent_problems(
    agent: Agent, tenant: Tenant, prompts: Mapping[str, Prompt], tools: Mapping[str, Tool]
) -> Iterator[Unresolved]:
    """Every reason the Agent does not resolve against its Tenant and the Prompts and Tools of its
    namespace (by name), in the order `resolve_agent` meets them: a model outside allowedModels, the
    Prompt or its pinned version missing, a variable the version does not declare or a required one
    without a value, a Tool missing or outside allowedTools, a knowledge base the Tenant lacks."""
    spec = agent.spec
    namespace = agent.metadata.namespace or tenant.namespace
    allowed_models = ", ".join(tenant.spec.allowed_models)
    models: list[tuple[FieldPath, str]] = [(("spec", "model", "name"), spec.model.name)]
    models += [(("spec", "model", "fallbacks", i), m) for i, m in enumerate(spec.model.fallbacks)]
    for path, model in models:
        if not tenant.allows_model(model):
            yield Unresolved(
                "ModelNotAllowed",
                path,
                f"model {model!r} is not allowed by Tenant {tenant.name!r} "
                f"(expected one of allowedModels: {allowed_models})",
                model,
            )
    ref = spec.prompt
    prompt = prompts.get(ref.name)
    if prompt is None:
        yield Unresolved(
            "PromptNotFound",
            ("spec", "prompt", "name"),
            f"Prompt {ref.name!r} not found in namespace {namespace}",
            ref.name,
        )
    elif (version := prompt.spec.versions().get(ref.version)) is None:
        available = ", ".join(str(v) for v in sorted(prompt.spec.versions()))
        yield Unresolved(
            "PromptVersionNotFound",
            ("spec", "prompt", "version"),
            f"Prompt {ref.name!r} has no version {ref.version} (expected one of {available})",
            ref.name,
        )
    else:
        declared = {v.name: v for v in version.variables}
        for name in ref.variables:
            if name not in declared:
                yield Unresolved(
                    "VariableNotDeclared",
                    ("spec", "prompt", "variables", name),
                    f"Prompt {ref.name!r} v{version.version} declares no variable {name!r} "
                    f"(declared: {', '.join(declared) or 'none'})",
                    name,
                )
        for name, variable in declared.items():
            if variable.required and variable.default is None and name not in ref.variables:
                yield Unresolved(
                    "VariableMissing",
                    ("spec", "prompt", "variables"),
                    f"required variable {name!r} of Prompt {ref.name!r} v{version.version} has no value "
                    f"(expected spec.prompt.variables.{name})",
                    name,
                )
    for index, tool_ref in enumerate(spec.tools):
        path = ("spec", "tools", index, "name")
        if tool_ref.name not in tools:
            yield Unresolved(
                "ToolNotFound",
                path,
                f"Tool {tool_ref.name!r} not found in namespace {namespace}",
                tool_ref.name,
            )
        if not tenant.allows_tool(tool_ref.name):
            yield Unresolved(
                "ToolNotAllowed",
                path,
                f"tool {tool_ref.name!r} is not allowed by Tenant {tenant.name!r} "
                f"(expected one of allowedTools: {', '.join(tenant.spec.allowed_tools) or 'none'})",
                tool_ref.name,
            )
    bases = {kb.name for kb in tenant.spec.knowledge_bases}
    for index, kref in enumerate(spec.knowledge):
        if kref.name not in bases:
            yield Unresolved(
                "KnowledgeBaseNotFound",
                ("spec", "knowledge", index, "name"),
                f"Tenant {tenant.name!r} has no knowledge base {kref.name!r} "
                f"(expected one of: {', '.join(sorted(bases)) or 'none'})",
                kref.name,
            )


def resolve_agent(
    agent: Agent, tenant: Tenant, prompts: Mapping[str, Prompt], tools: Mapping[str, Tool]
) -> AgentConfig:
    """The agent's resolved config, from the objects of its namespace (by name) and its Tenant;
    raises `ResolveError` with the first of `agent_problems`, or when the pinned template uses an
    undeclared variable or an MCP Tool's schema is not discovered yet."""
    for problem in agent_problems(agent, tenant, prompts, tools):
        raise ResolveError(problem.reason, problem.message, problem.path, problem.subject)
    spec = agent.spec
    tenant_spec = tenant.spec
    prompt = prompts[spec.prompt.name]
    version = prompt.spec.versions()[spec.prompt.version]
    values = {
        variable.name: spec.prompt.variables.get(variable.name, variable.default) or ""
        for variable in version.variables
    }
    undeclared = undeclared_variables(version.template, values)
    if undeclared:
        raise ResolveError(
            "VariableMissing",
            f"the template of Prompt {prompt.name!r} v{version.version} uses {{{{ {undeclared[0]} }}}} "
            "which no variable declares",
            ("spec", "prompt", "version"),
        )
    resolved_tools = [
        _resolve_tool(tools[ref.name], ("spec", "tools", index, "name"))
        for index, ref in enumerate(spec.tools)
    ]
    bases = {kb.name: kb for kb in tenant_spec.knowledge_bases}
    knowledge = []
    for kref in spec.knowledge:
        base = bases[kref.name]
        knowledge.append(
            ResolvedKnowledge(
                name=base.name,
                collection=collection_name(tenant.name, base.name),
                embedding_model=base.embedding_model,
                dimensions=base.dimensions,
                distance=base.distance,
                top_k=kref.top_k,
                min_score=kref.min_score,
            )
        )
    return AgentConfig(
        tenant=tenant.name,
        namespace=tenant.namespace,
        agent=agent.metadata.name,
        description=spec.description,
        model=ResolvedModel(
            name=spec.model.name, fallbacks=list(spec.model.fallbacks), parameters=spec.model.parameters
        ),
        prompt=ResolvedPrompt(
            name=prompt.name,
            version=version.version,
            template=version.template,
            values=values,
            hash=prompt_version_hash(version),
        ),
        tools=resolved_tools,
        knowledge=knowledge,
        limits=spec.limits,
        quota=ResolvedQuota(
            tenant=tenant.name,
            key_prefix=quota_key_prefix(tenant.name),
            limits_key=quota_limits_key(tenant.name),
        ),
        egress=[ResolvedEgress(host=r.host, cidr=r.cidr, ports=list(r.ports)) for r in tenant_spec.egress],
        model_prices=dict(tenant_spec.model_prices),
    )
