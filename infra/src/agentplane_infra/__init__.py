"""Pulumi components that stand up an agentplane environment on Azure and install the platform into it."""

from agentplane_infra.config import ConfigError, StackConfig, load_config
from agentplane_infra.program import program

__all__ = ["ConfigError", "StackConfig", "load_config", "program"]
