"""The runtime's dashboards: the platform overview (traffic, errors, latency, saturation) and one
agent in detail (models and circuits, tools, retrieval, GenAI token usage)."""

from __future__ import annotations

from typing import Any

from .grafana_kit import (
    ACTIVE,
    AGENT,
    BAD,
    ERRORS,
    GOOD,
    LATENCY,
    MODEL,
    OVERHEAD,
    RANGE,
    REQUESTS,
    RUNTIME,
    SERVER_ERROR,
    TENANT,
    TTFT,
    WARN,
    Board,
    Query,
    increase,
    percentiles,
    process_panels,
    quantile,
    rate,
    sel,
    single,
    states,
    sum_by,
    timeseries,
)


def overview() -> dict[str, Any]:
    board = Board(
        "agentplane-overview",
        "agentplane / Overview",
        "Traffic, errors, latency and saturation of every agent runtime",
        ["tenant", "agent", "model"],
    )
    chat = (TENANT, AGENT, MODEL)
    board.row("Traffic and errors")
    board.line(
        (
            6,
            single(
                "Requests per second",
                "Chat requests per second, every status. A sudden drop with no change in callers "
                "means requests no longer reach the runtime (gateway, DNS, auth).",
                "reqps",
                [Query(sum_by((), rate(REQUESTS, *chat)), "requests/s")],
            ),
        ),
        (
            6,
            single(
                "Server errors over the range",
                "Share of chat requests that ended in a server error (5xx) over the time range. Above "
                "the availability SLO's budget (0.5 %): see Errors by type and the agent dashboard.",
                "percentunit",
                [
                    Query(
                        f"(sum(increase({REQUESTS}{sel(*chat, SERVER_ERROR)}[{RANGE}])) or vector(0))"
                        f" / sum({increase(REQUESTS, *chat)})",
                        "server errors",
                        instant=True,
                    )
                ],
                steps=[(None, GOOD), (0.001, WARN), (0.005, BAD)],
                decimals=2,
            ),
        ),
        (
            6,
            single(
                "p95 latency over the range",
                "95th percentile of chat request latency (to the last byte) over the time range. Above "
                "the chat-latency SLO's 8 s: compare TTFT and platform overhead to find the slow part.",
                "s",
                [Query(quantile(0.95, LATENCY, *chat, window=RANGE), "p95", instant=True)],
                steps=[(None, GOOD), (4, WARN), (8, BAD)],
            ),
        ),
        (
            6,
            single(
                "Requests in progress",
                "Chat requests being answered now. Climbing while requests per second stays flat "
                "means requests wait (slow provider, stuck tool): see latency below.",
                "short",
                [Query(sum_by((), f"{ACTIVE}{sel(TENANT, AGENT)}"), "in progress")],
            ),
        ),
        height=4,
    )
    board.line(
        (
            12,
            timeseries(
                "Requests per second by status",
                "Chat requests by outcome: ok, client_error (4xx but 429), rate_limited (429, quotas) "
                "and server_error (5xx). Server errors are the platform's: see Errors by type.",
                "reqps",
                [Query(sum_by(("status",), rate(REQUESTS, *chat)), "{{status}}")],
                stack=True,
            ),
        ),
        (
            12,
            timeseries(
                "Responses by HTTP status code",
                "Chat requests by the HTTP status sent (a stream that broke off: its error event's). "
                "401/403 are callers' keys, 404 unknown agents, 429 quotas, 502/504 providers.",
                "reqps",
                [Query(sum_by(("code",), rate(REQUESTS, *chat)), "{{code}}")],
                stack=True,
            ),
        ),
    )
    board.line(
        (
            12,
            timeseries(
                "Errors by type",
                "Errors requests ended with, by type (provider errors, timeouts, tool failures). One "
                "type dominating names the dependency to look at; the runtime's logs carry the request ids.",
                "reqps",
                [Query(sum_by(("type",), rate(ERRORS, TENANT, AGENT)), "{{type}}")],
                stack=True,
            ),
        ),
        (
            12,
            timeseries(
                "Requests per second by agent",
                "Chat requests per agent. A tenant's share jumping can exhaust its quota (429s) or "
                "crowd others on shared runtimes.",
                "reqps",
                [Query(sum_by(("tenant", "agent"), rate(REQUESTS, *chat)), "{{tenant}}/{{agent}}")],
            ),
        ),
    )
    board.row("Latency")
    board.line(
        (
            8,
            timeseries(
                "Request latency",
                "Chat request latency to the last byte, p50/p95/p99. High with normal overhead means "
                "the provider or tools are slow: see the agent dashboard's attempts and tool durations.",
                "s",
                percentiles(LATENCY, *chat),
            ),
        ),
        (
            8,
            timeseries(
                "Time to first token",
                "Time to the first streamed token, p50/p95/p99 (streamed requests only). High: the "
                "provider queues or the prompt (retrieval, history) is large.",
                "s",
                percentiles(TTFT, *chat),
            ),
        ),
        (
            8,
            timeseries(
                "Platform overhead",
                "Wall time minus the waits on LLM providers and tools: what agentplane itself adds "
                "(auth, quotas, retrieval, serialisation). Above 50 ms: check runtime CPU, Redis and PostgreSQL.",
                "s",
                percentiles(OVERHEAD, TENANT, AGENT),
            ),
        ),
    )
    board.line(
        (
            12,
            timeseries(
                "p95 latency by agent",
                "95th percentile of chat request latency per agent: finds the agent behind a slow p95 above.",
                "s",
                [Query(quantile(0.95, LATENCY, *chat, by=("tenant", "agent")), "{{tenant}}/{{agent}}")],
            ),
        ),
        (
            12,
            timeseries(
                "p95 time to first token by model",
                "95th percentile of time to first token per model: a slow provider shows up on its own.",
                "s",
                [Query(quantile(0.95, TTFT, *chat, by=("model",)), "{{model}}")],
            ),
        ),
    )
    board.row("Saturation")
    board.line(
        (
            8,
            timeseries(
                "Requests in progress by agent",
                "Chat requests being answered now, per agent. A plateau at the same value across "
                "agents hints at a concurrency limit; a steady climb at requests that never end.",
                "short",
                [Query(sum_by(("tenant", "agent"), f"{ACTIVE}{sel(TENANT, AGENT)}"), "{{tenant}}/{{agent}}")],
                minimum=0,
            ),
        ),
        *((8, panel) for panel in process_panels("Runtime", RUNTIME)),
    )
    board.line(
        (
            12,
            timeseries(
                "Usage records waiting for the database",
                "Usage records buffered in Redis, not yet written to PostgreSQL, per runtime process. "
                "Growing: PostgreSQL is down or slow; the records are safe until Redis fills.",
                "short",
                [Query(RUNTIME, "{{instance}}")],
                minimum=0,
            ),
        ),
        (
            12,
            timeseries(
                "Usage records written and lost",
                "Usage records written to PostgreSQL per second, and records lost (neither buffered "
                "nor written: nobody is billed for them). Any loss: check Redis and PostgreSQL now.",
                "short",
                [
                    Query(sum_by((), rate("agentplane_usage_written_total")), "written"),
                    Query(sum_by((), rate("agentplane_usage_lost_total")), "lost"),
                ],
                minimum=0,
            ),
        ),
    )
    return board.build()


def agent_detail() -> dict[str, Any]:
    board = Board(
        "agentplane-agent",
        "agentplane / Agent",
        "One agent in detail: requests, models and circuits, tools, retrieval and GenAI token usage",
        ["tenant", "agent", "model"],
    )
    chat = (TENANT, AGENT, MODEL)
    # the runtime processes that served the chosen agents: for metrics without tenant and agent
    served = f"group by (job, instance) ({REQUESTS}{sel(TENANT, AGENT)})"
    board.row("Requests")
    board.line(
        (
            8,
            timeseries(
                "Requests per second by status",
                "The agent's chat requests by outcome. Server errors: see Errors by type and LLM "
                "attempts below; 429s: the tenant usage dashboard.",
                "reqps",
                [Query(sum_by(("status",), rate(REQUESTS, *chat)), "{{status}}")],
                stack=True,
            ),
        ),
        (
            8,
            timeseries(
                "Request latency",
                "The agent's chat request latency to the last byte, p50/p95/p99. Slow with normal "
                "overhead: the models or tools are slow (below).",
                "s",
                percentiles(LATENCY, *chat),
            ),
        ),
        (
            8,
            timeseries(
                "Time to first token",
                "Time to the agent's first streamed token, p50/p95/p99. High: the provider queues, or "
                "retrieval and a long history make the prompt large.",
                "s",
                percentiles(TTFT, *chat),
            ),
        ),
    )
    board.line(
        (
            8,
            timeseries(
                "Platform overhead",
                "The agent's wall time minus its waits on providers and tools, p50/p95/p99: what "
                "agentplane adds. Above 50 ms: see the overview's saturation row.",
                "s",
                percentiles(OVERHEAD, TENANT, AGENT),
            ),
        ),
        (
            8,
            timeseries(
                "Errors by type",
                "Errors the agent's requests ended with, by type. The runtime's logs carry the request "
                "ids of each.",
                "reqps",
                [Query(sum_by(("type",), rate(ERRORS, TENANT, AGENT)), "{{type}}")],
                stack=True,
            ),
        ),
        (
            8,
            timeseries(
                "Fallbacks by model",
                "Requests answered by a fallback model, by the fallback that answered. Steady "
                "fallbacks: the primary model fails or its circuit is open (below).",
                "reqps",
                [Query(sum_by(("model",), rate("agentplane_fallbacks_total", *chat)), "{{model}}")],
                stack=True,
            ),
        ),
    )
    board.row("Models")
    board.line(
        (
            12,
            timeseries(
                "LLM attempts by model and outcome",
                "Calls to LLM providers (retries included) by model and outcome, on the runtime "
                "processes that served the agent (these metrics have no tenant or agent). Errors and "
                "timeouts on one model: its provider is failing; circuit_open: calls skipped by its breaker.",
                "reqps",
                [
                    Query(
                        sum_by(
                            ("model", "outcome"),
                            f"{rate('agentplane_llm_attempts_total', MODEL)} and on (job, instance) {served}",
                        ),
                        "{{model}} {{outcome}}",
                    )
                ],
                stack=True,
            ),
        ),
        (
            12,
            states(
                "Circuit breaker state by model",
                "Each model's circuit breaker on the runtime processes that served the agent (worst "
                "process): closed, half-open (probing) or open (calls skipped, fallbacks answer). Open "
                "for long: the provider is down or the model's credentials are wrong.",
                Query(
                    f"max by (model) (agentplane_circuit_state{sel(MODEL)} and on (job, instance) {served})",
                    "{{model}}",
                ),
                [(0, "closed", GOOD), (1, "half-open", WARN), (2, "open", BAD)],
            ),
        ),
    )
    gen_ai = (TENANT, AGENT, 'gen_ai_request_model=~"$model"')
    board.line(
        (
            12,
            timeseries(
                "GenAI tokens per second by type",
                "Tokens of the agent's LLM calls by type (input, output), from the OpenTelemetry GenAI "
                "metric gen_ai.client.token.usage: every attempt, fallbacks and tool rounds included.",
                "short",
                [
                    Query(
                        sum_by(("gen_ai_token_type",), rate("gen_ai_client_token_usage_sum", *gen_ai)),
                        "{{gen_ai_token_type}}",
                    )
                ],
                stack=True,
            ),
        ),
        (
            12,
            timeseries(
                "GenAI tokens per call (p95) by type",
                "95th percentile of tokens per LLM call by type. Input near the model's context window: "
                "trim history or retrieval; output at the max tokens: answers are cut off.",
                "short",
                [
                    Query(
                        quantile(0.95, "gen_ai_client_token_usage", *gen_ai, by=("gen_ai_token_type",)),
                        "{{gen_ai_token_type}}",
                    )
                ],
            ),
        ),
    )
    board.row("Tools and retrieval")
    board.line(
        (
            12,
            timeseries(
                "Tool calls by tool and outcome",
                "The agent's tool calls by tool and outcome: ok, error, timeout, denied (egress policy) "
                "or unknown (a tool the agent does not have). Denied: the tool's host is missing from "
                "the egress allowlist; unknown: the model invents tools.",
                "reqps",
                [
                    Query(
                        sum_by(("tool", "outcome"), rate("agentplane_tool_calls_total", TENANT, AGENT)),
                        "{{tool}} {{outcome}}",
                    )
                ],
                stack=True,
            ),
        ),
        (
            12,
            timeseries(
                "Tool call duration by tool",
                "p50 and p95 of the agent's tool call durations by tool, whatever the outcome. Near the "
                "tool's timeout: the tool's service is slow.",
                "s",
                [
                    Query(
                        quantile(q, "agentplane_tool_call_duration_seconds", TENANT, AGENT, by=("tool",)),
                        f"{{{{tool}}}} p{round(q * 100)}",
                    )
                    for q in (0.5, 0.95)
                ],
            ),
        ),
    )
    board.line(
        (
            12,
            timeseries(
                "Retrievals by outcome",
                "The agent's retrievals from its knowledge bases by outcome. Unavailable: the vector "
                "store (Qdrant) does not answer; see its pods.",
                "reqps",
                [
                    Query(
                        sum_by(("outcome",), rate("agentplane_retrievals_total", TENANT, AGENT)),
                        "{{outcome}}",
                    )
                ],
                stack=True,
            ),
        ),
        (
            12,
            timeseries(
                "Retrieval latency",
                "Time a request's retrieval took (retry included), p50/p95/p99. High: the vector store "
                "is loaded or the embedding provider is slow.",
                "s",
                percentiles("agentplane_retrieval_duration_seconds", TENANT, AGENT),
            ),
        ),
    )
    return board.build()
