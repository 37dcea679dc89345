"""Pulumi components that stand up an agentplane environment on Azure."""

__all__: list[str] = []
