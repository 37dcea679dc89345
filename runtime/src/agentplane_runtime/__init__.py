"""agentplane's agent runtime: an OpenAI-compatible server for one agent (or several, in local mode)."""

from agentplane_runtime.agents import AgentContext, AgentRegistry, load_config
from agentplane_runtime.app import agent_router, create_app
from agentplane_runtime.core.config import Settings
from agentplane_runtime.services import Runtime, build_runtime

__all__ = [
    "AgentContext",
    "AgentRegistry",
    "Runtime",
    "Settings",
    "agent_router",
    "build_runtime",
    "create_app",
    "load_config",
]
