"""Small spec builders for the operator tests: plain manifests, as a tenant team would write them."""

from __future__ import annotations

from typing import Any

API = "agentplane.io/v1alpha1"


def tenant(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "owners": [{"kind": "Group", "name": f"{name}-team"}],
        "allowedModels": ["azure/gpt-4o*", "openai/*"],
        "quotas": {
            "llm": {"tokensPerMinute": 5000, "requestsPerMinute": 60, "monthlyBudgetUsd": 25},
            "maxAgents": 5,
        },
        **spec,
    }
    return {"apiVersion": API, "kind": "Tenant", "metadata": {"name": name}, "spec": body}


def prompt(
    namespace: str, name: str, version: int = 1, template: str = "You are {{ persona }}.", **spec: Any
) -> dict[str, Any]:
    body = {
        "version": version,
        "template": template,
        "variables": [{"name": "persona", "default": "a helpful assistant"}],
        **spec,
    }
    return {
        "apiVersion": API,
        "kind": "Prompt",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def builtin_tool(namespace: str, name: str = "calculator") -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "Tool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"type": "builtin", "builtin": "calculator", "description": "Arithmetic"},
    }


def http_tool(namespace: str, name: str, secret: str, key: str = "token") -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "Tool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "type": "http",
            "description": "Look things up",
            "url": "https://api.example.com/lookup",
            "auth": {"secretRef": {"kubernetes": {"name": secret, "key": key}}},
        },
    }


def agent(
    namespace: str, name: str, prompt_name: str = "assistant", version: int = 1, **spec: Any
) -> dict[str, Any]:
    body = {
        "model": {"name": "azure/gpt-4o-mini", "fallbacks": ["openai/gpt-4o-mini"]},
        "prompt": {"name": prompt_name, "version": version},
        **spec,
    }
    return {
        "apiVersion": API,
        "kind": "Agent",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }
