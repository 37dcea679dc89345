"""agentplane's agent runtime: an OpenAI-compatible server for one agent (or several, in local mode).

The names below are imported on first use, so that light modules of the package (the terminal
client of `agentplane chat`) start without loading the server's dependencies.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentplane_runtime.agents import AgentContext, AgentRegistry, load_config
    from agentplane_runtime.app import agent_router, create_app
    from agentplane_runtime.core.config import Settings
    from agentplane_runtime.services import Runtime, build_runtime

_EXPORTS = {
    "AgentContext": "agentplane_runtime.agents",
    "AgentRegistry": "agentplane_runtime.agents",
    "load_config": "agentplane_runtime.agents",
    "agent_router": "agentplane_runtime.app",
    "create_app": "agentplane_runtime.app",
    "Settings": "agentplane_runtime.core.config",
    "Runtime": "agentplane_runtime.services",
    "build_runtime": "agentplane_runtime.services",
}

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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'agentplane_runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
