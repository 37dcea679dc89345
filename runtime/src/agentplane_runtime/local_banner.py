"""What `agentplane up` prints when it is ready: a row per agent (model, base URL, key), how to
try the first one (`agentplane chat`, curl, the openai SDK), and where the metrics are."""

from __future__ import annotations

from agentplane_platform.config import AgentConfig
from agentplane_platform.contract import METRICS_PATH
from agentplane_runtime.core.config import Settings
from agentplane_runtime.llm import has_credentials
from agentplane_runtime.terminal import chat_command_line


def model_label(settings: Settings, config: AgentConfig) -> str:
    live = has_credentials(settings, config.model.name)
    return f"{config.model.name} ({'live' if live else 'offline'})"


def agent_url(base: str, config: AgentConfig) -> str:
    return f"{base}/t/{config.tenant}/a/{config.agent}/v1"


def metrics_url(settings: Settings, base: str) -> str:
    """Where `/metrics` is: on a port of its own when `AGENTPLANE_METRICS_PORT` is set, else beside the API."""
    if settings.metrics_port is not None:
        return f"http://{settings.host}:{settings.metrics_port}{METRICS_PATH}"
    return f"{base}{METRICS_PATH}"


def banner(
    settings: Settings,
    agents: list[AgentConfig],
    keys: dict[str, str],
    base: str,
    knowledge: dict[str, str] | None = None,
) -> str:
    rows = [("TENANT", "AGENT", "MODEL", "BASE URL", "API KEY")]
    for config in agents:
        rows.append(
            (
                config.tenant,
                config.agent,
                model_label(settings, config),
                agent_url(base, config),
                keys[config.tenant],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    table = "\n".join(
        "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )
    lines = [f"agentplane up: {len(agents)} agent{'s' if len(agents) != 1 else ''} on {base}", "", table, ""]
    if any(not has_credentials(settings, a.model.name) for a in agents):
        lines.append(
            "  offline: no provider key is set (OPENAI_API_KEY, or AZURE_API_KEY + AZURE_API_BASE), so those "
            "agents answer with the offline model from their knowledge and tools."
        )
        lines.append("")
    if knowledge:
        lines.append("Knowledge bases (retrieval):")
        lines += [f"  {name}: {how}" for name, how in sorted(knowledge.items())]
        lines.append("")
    if agents:
        first = agents[0]
        url = agent_url(base, first)
        key = keys[first.tenant]
        lines += [
            "Try it:",
            "  "
            + chat_command_line(
                f"{first.tenant}/{first.agent}",
                "How do I return an item?",
                base_url=base,
                state=settings.state_dir,
            ),
            "",
            f"  curl -s {url}/chat/completions -H 'Authorization: Bearer {key}' \\",
            "    -H 'Content-Type: application/json' \\",
            f'    -d \'{{"model": "{first.agent}", "messages": [{{"role": "user", "content": "How do I return an item?"}}]}}\'',
            "",
            "  from openai import OpenAI",
            f"  client = OpenAI(base_url={url!r}, api_key={key!r})",
            f"  reply = client.chat.completions.create(model={first.agent!r}, messages=[{{'role': 'user', 'content': 'How do I return an item?'}}])",
            "  print(reply.choices[0].message.content)",
            "",
        ]
    lines.append(f"Prometheus metrics: {metrics_url(settings, base)}")
    lines.append(f"Press Ctrl-C to stop (state is kept in {settings.state_dir}).")
    return "\n".join(lines)
