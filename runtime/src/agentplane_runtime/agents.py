"""The agents a runtime serves: one in an agent pod, several in `agentplane up`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agentplane_platform.config import AgentConfig, ResolvedTool
from agentplane_platform.templates import render
from agentplane_runtime.tools import tool_definitions


def load_config(path: Path) -> AgentConfig:
    """Parse the resolved agent config the operator mounts (JSON; YAML works too)."""
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        return AgentConfig.model_validate(yaml.safe_load(text))
    return AgentConfig.model_validate_json(text)


@dataclass
class AgentContext:
    """One agent's config and what is derived from it once."""

    config: AgentConfig
    tools: list[dict[str, Any]] = field(init=False)
    tools_by_function: dict[str, ResolvedTool] = field(init=False)
    models: list[str] = field(init=False)
    _system: tuple[str, str] | None = field(default=None, init=False, repr=False)
    """The rendered system prompt and the day it was rendered for."""

    def __post_init__(self) -> None:
        self.tools = tool_definitions(self.config)
        self.tools_by_function = {t.function_name: t for t in self.config.tools}
        self.models = [self.config.model.name, *self.config.model.fallbacks]

    @property
    def key(self) -> tuple[str, str]:
        return (self.config.tenant, self.config.agent)

    def system_prompt(self) -> str:
        """The prompt's template rendered with its values (rendered once a day: `date` is one)."""
        today = datetime.now(UTC).date().isoformat()
        if self._system is not None and self._system[0] == today:
            return self._system[1]
        prompt = self.config.prompt
        values = {**prompt.values, "tenant": self.config.tenant, "agent": self.config.agent, "date": today}
        text = render(prompt.template, values)
        self._system = (today, text)
        return text


class AgentNotFound(LookupError):
    pass


class AgentRegistry:
    """Agents by (tenant, agent); `default` is the one a single-agent pod serves at /v1."""

    def __init__(self) -> None:
        self._agents: dict[tuple[str, str], AgentContext] = {}
        self.default: AgentContext | None = None

    def put(self, config: AgentConfig, *, default: bool = False) -> AgentContext:
        context = AgentContext(config)
        self._agents[context.key] = context
        if default:
            self.default = context
        return context

    def remove(self, tenant: str, agent: str) -> None:
        context = self._agents.pop((tenant, agent), None)
        if context is not None and self.default is context:
            self.default = None

    def get(self, tenant: str | None = None, agent: str | None = None) -> AgentContext:
        if tenant is None or agent is None:
            if self.default is None:
                raise AgentNotFound("no agent is served here")
            return self.default
        try:
            return self._agents[(tenant, agent)]
        except KeyError:
            raise AgentNotFound(f"no agent {tenant}/{agent}") from None

    def all(self) -> list[AgentContext]:
        return list(self._agents.values())
