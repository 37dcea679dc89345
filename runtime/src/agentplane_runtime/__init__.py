"""The agentplane runtime: the OpenAI-compatible agent server that runs in every Agent pod."""

__all__: list[str] = []
