"""What `agentplane up` serves, from a spec tree: validated and resolved by the platform
(`validate_paths`, `resolve_agent` — the code the operator runs), with the schemas of MCP Tools
without parameters discovered as the operator discovers them; agents that do not resolve, or lie
beyond their Tenant's maxAgents, are listed with the reason."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx

from agentplane_platform.api.v1alpha1 import McpTool, Tenant, Tool, ToolDiscovery, ToolStatus, tenant_of
from agentplane_platform.config import AgentConfig, ResolveError, resolve_agent
from agentplane_platform.mcp import McpError, discover_tool, needs_discovery
from agentplane_platform.quotas import QuotaLimits
from agentplane_platform.report_text import format_report
from agentplane_platform.specs import Report, SpecSet, validate_paths
from agentplane_runtime.core.config import Settings
from agentplane_runtime.tools import SecretReader, ToolError

AgentKey = tuple[str, str]


@dataclass
class LocalSpecs:
    """What `up` serves, derived purely from a validated spec tree."""

    report: Report
    agents: list[AgentConfig] = field(default_factory=list)
    tenants: dict[str, Tenant] = field(default_factory=dict)
    errors: dict[AgentKey, str] = field(default_factory=dict)
    """Agents that are not served, by (tenant, agent): those that do not resolve (missing prompt
    version, tool, ...) and those beyond their Tenant's maxAgents."""
    refused: set[AgentKey] = field(default_factory=set)
    """Of `errors`, the Agents beyond their Tenant's maxAgents: as in a cluster, the others are
    served (`agentplane_platform.max_agents`), so these do not keep `up` from starting."""

    @property
    def ok(self) -> bool:
        return self.report.ok and not self.errors.keys() - self.refused

    @property
    def limits(self) -> dict[str, QuotaLimits]:
        return {name: QuotaLimits.of(tenant) for name, tenant in self.tenants.items()}

    def problems(self, paths: list[Path]) -> str:
        """The problems as `agentplane validate` prints them, then the agents that do not resolve."""
        text = format_report(self.report, paths) if not self.report.ok else ""
        return text + "".join(error + "\n" for error in self.errors.values())


class LocalDiscovery:
    """`up`'s MCP schema discovery: what the operator does when it reconciles an MCP Tool without
    parameters (`agentplane_platform.mcp.discover_tool`: egress-checked, bounded, with a timeout),
    done each time the specs are loaded. As in a cluster, a server that cannot be listed keeps the
    schema last discovered for the same server and tool, if any; without one, the agents using the
    tool are not served, and the error says why."""

    def __init__(self, secrets: SecretReader, *, timeout: float) -> None:
        self.secrets = secrets
        self.timeout = timeout
        self.found: dict[AgentKey, ToolDiscovery] = {}
        """(namespace, tool) -> the schema last discovered."""

    def run(self, specs: SpecSet) -> dict[AgentKey, str]:
        """List the servers of the tree's MCP Tools without parameters (concurrently, in a loop of
        its own); why each one that failed did, by (namespace, tool)."""
        return asyncio.run(self._run(specs))

    async def _run(self, specs: SpecSet) -> dict[AgentKey, str]:
        wanted = [
            (key, loaded.resource, tenant.resource)
            for key, loaded in sorted(specs.tools.items())
            if needs_discovery(loaded.resource) and (tenant := specs.tenant_of(key[0])) is not None
        ]
        failures: dict[AgentKey, str] = {}
        async with httpx.AsyncClient(timeout=httpx.Timeout(self.timeout)) as http:

            async def one(key: AgentKey, tool: Tool, tenant: Tenant) -> None:
                auth = tool.spec.auth if isinstance(tool.spec, McpTool) else None
                try:
                    credential = self.secrets.read(tool.name, auth.secret_ref) if auth else None
                    self.found[key] = await discover_tool(
                        http,
                        tool,
                        tenant.spec.egress,
                        credential=credential,
                        previous=self.found.get(key),
                        timeout=self.timeout,
                    )
                except (McpError, ToolError) as exc:
                    failures[key] = str(exc)

            await asyncio.gather(*(one(key, tool, tenant) for key, tool, tenant in wanted))
        return failures

    def tools_in(self, specs: SpecSet, namespace: str) -> dict[str, Tool]:
        """The namespace's Tools, with the schemas discovered in their status."""
        tools = specs.tools_in(namespace)
        for name, tool in tools.items():
            found = self.found.get((namespace, name))
            if found is not None and needs_discovery(tool):
                tools[name] = tool.model_copy(update={"status": ToolStatus(discovered=found)})
        return tools


def load_specs(path: Path, discovery: LocalDiscovery | None = None) -> LocalSpecs:
    """Validate the tree, discover the schemas of MCP Tools without parameters (with `discovery`)
    and resolve every Agent; `errors` lists agents that do not resolve, and those beyond their
    Tenant's maxAgents (which `refused` names; the tree's other agents are served)."""
    report = validate_paths([path])
    beyond = report.specs.beyond_max_agents()
    # an Agent beyond maxAgents is refused alone, as the operator refuses it, not the whole tree
    said = set(beyond.values())
    report = replace(report, problems=[p for p in report.problems if p not in said])
    result = LocalSpecs(report)
    for (namespace, name), problem in sorted(beyond.items()):
        key = (tenant_of(namespace) or namespace, name)
        result.errors[key] = f"{problem.file}: Agent {namespace}/{name}: {problem.message}"
        result.refused.add(key)
    if not report.ok:
        return result
    failures = discovery.run(report.specs) if discovery is not None else {}
    result.tenants = {name: loaded.resource for name, loaded in report.specs.tenants.items()}
    for (namespace, name), loaded in sorted(report.specs.agents.items()):
        if (namespace, name) in beyond:
            continue
        tenant = report.specs.tenant_of(namespace)
        if tenant is None:
            result.errors[(namespace, name)] = (
                f"{loaded.document.file}: Agent {namespace}/{name}: no Tenant for {namespace}"
            )
            continue
        tools = (
            discovery.tools_in(report.specs, namespace)
            if discovery is not None
            else report.specs.tools_in(namespace)
        )
        try:
            result.agents.append(
                resolve_agent(loaded.resource, tenant.resource, report.specs.prompts_in(namespace), tools)
            )
        except ResolveError as exc:
            why = str(exc)
            if exc.reason == "ToolNotDiscovered":
                failed = [r.name for r in loaded.resource.spec.tools if (namespace, r.name) in failures]
                if failed:
                    spec = tools[failed[0]].spec
                    why = (
                        f"Tool {failed[0]!r} declares no parameters and its MCP server cannot be listed "
                        f"({getattr(spec, 'url', '?')}): {failures[(namespace, failed[0])]}; "
                        "declare spec.parameters or make the server reachable"
                    )
            result.errors[(tenant.resource.name, name)] = (
                f"{loaded.document.file}: Agent {namespace}/{name}: {why}"
            )
    return result


def local_discovery(settings: Settings) -> LocalDiscovery:
    """`up`'s MCP discovery, reading tool credentials where the runtime does."""
    return LocalDiscovery(
        SecretReader(settings.secrets_dir, settings.keyvault_dir),
        timeout=settings.mcp_discovery_timeout_seconds,
    )
