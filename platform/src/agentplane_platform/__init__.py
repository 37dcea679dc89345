"""agentplane's platform library: the spec API, CRD generation, spec validation and the CLI."""

__all__: list[str] = []
