"""LLM provider settings: from stack config, through Key Vault, to the names the runtime reads.

A provider's API key (`llmProviderKeys.<provider>`, a Pulumi secret) and API base URL
(`llmProviderEndpoints.<provider>`, plain) are stored in Key Vault as `llm-<provider>-api-key` and
`llm-<provider>-api-base`. The operator has each tenant's SecretProviderClass sync them into the
tenant's LLM Secret under litellm's environment names, `<PROVIDER>_API_KEY` and
`<PROVIDER>_API_BASE` (`OPENAI_API_KEY`, `AZURE_API_KEY` + `AZURE_API_BASE`, `ANTHROPIC_API_KEY`),
which every agent pod takes as its environment.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

Setting = Literal["api-key", "api-base"]


def secret_name(provider: str, setting: Setting) -> str:
    """The Key Vault secret of a provider's setting (Key Vault names allow letters, digits and `-`)."""
    return f"llm-{provider.replace('_', '-')}-{setting}"


def env_name(provider: str, setting: Setting) -> str:
    """The environment name litellm (and the runtime) reads a provider's setting from."""
    return f"{provider.upper()}_{setting.replace('-', '_').upper()}"


def provider_secrets(keys: Iterable[str], endpoints: Iterable[str]) -> dict[str, str]:
    """Environment name -> Key Vault secret name, for the providers with a key and with an endpoint
    (the operator's `PROVIDER_SECRETS`)."""
    settings: list[tuple[str, Setting]] = [(p, "api-key") for p in keys]
    settings += [(p, "api-base") for p in endpoints]
    return dict(sorted((env_name(p, s), secret_name(p, s)) for p, s in settings))
