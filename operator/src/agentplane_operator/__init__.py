"""The agentplane operator: kopf handlers that reconcile Tenants, Agents, Tools and Prompts."""

__all__: list[str] = []
