"""Tenant usage and cost: tokens, spend against the monthly budget, quota refusals, top agents and models."""

from __future__ import annotations

from typing import Any

from .grafana_kit import (
    AGENT,
    BAD,
    COST,
    GOOD,
    MODEL,
    RANGE,
    RATE_LIMITED,
    REQUESTS,
    TENANT,
    TOKENS,
    WARN,
    Board,
    Query,
    bars,
    increase,
    legend,
    rate,
    sel,
    single,
    sum_by,
    timeseries,
)

TOP = 10
"""How many agents or models the top lists show."""


def tenant_usage() -> dict[str, Any]:
    board = Board(
        "agentplane-tenant-usage",
        "agentplane / Tenant usage and cost",
        "Tokens, spend against budgets, quota refusals and the busiest agents and models of tenants",
        ["tenant", "agent", "model"],
    )
    chat = (TENANT, AGENT, MODEL)
    board.row("Spend")
    board.line(
        (
            6,
            single(
                "Spend over the range",
                "LLM spend of the chosen tenants, agents and models over the time range, in USD from "
                "litellm's cost map.",
                "currencyUSD",
                [Query(sum_by((), increase(COST, *chat)), "spend", instant=True)],
                decimals=2,
            ),
        ),
        (
            6,
            single(
                "Tokens over the range",
                "Input and output tokens of the chosen tenants, agents and models over the time range.",
                "short",
                [Query(sum_by((), increase(TOKENS, *chat)), "tokens", instant=True)],
            ),
        ),
        (
            6,
            single(
                "Requests over the range",
                "Chat requests of the chosen tenants, agents and models over the time range, every status.",
                "short",
                [Query(sum_by((), increase(REQUESTS, *chat)), "requests", instant=True)],
            ),
        ),
        (
            6,
            single(
                "Refused by quota over the range",
                "Chat requests refused with 429 over the time range. Many: the tenant outgrew its "
                "limits (raise them in its Tenant spec) or a client retries without backing off.",
                "short",
                [
                    Query(
                        f"sum(increase({REQUESTS}{sel(*chat, RATE_LIMITED)}[{RANGE}])) or vector(0)",
                        "refused",
                        instant=True,
                    )
                ],
            ),
        ),
        height=4,
    )
    budget = "agentplane_tenant_monthly_budget_usd"
    board.line(
        (
            8,
            bars(
                "Spend over the range against the monthly budget",
                "Each tenant's spend over the time range (all its agents and models) as a share of "
                "its monthly budget; tenants without a budget are left out. Set the range to the month "
                "to read it as budget used: near 100 % its requests are refused; raise the budget or talk to the tenant.",
                "percentunit",
                Query(
                    f"{sum_by(('tenant',), increase(COST, TENANT))} / on (tenant) "
                    f"max by (tenant) ({budget}{sel(TENANT)} > 0)",
                    "{{tenant}}",
                    instant=True,
                ),
                steps=[(None, GOOD), (0.8, WARN), (1, BAD)],
                maximum=1,
            ),
        ),
        (
            8,
            bars(
                "Monthly budget",
                "Each tenant's monthly LLM budget from its Tenant spec (the operator's gauge); 0 means no budget.",
                "currencyUSD",
                Query(f"max by (tenant) ({budget}{sel(TENANT)})", "{{tenant}}", instant=True),
            ),
        ),
        (
            8,
            timeseries(
                "Spend per hour by tenant",
                "LLM spend per hour at the current rate, per tenant. A step up follows a new agent, a "
                "bigger model or a loop of tool calls: see Top agents by cost.",
                "currencyUSD",
                [Query(f"{sum_by(('tenant',), rate(COST, *chat))} * 3600", "{{tenant}}")],
                minimum=0,
            ),
        ),
    )
    board.row("Tokens and limits")
    board.line(
        (
            12,
            timeseries(
                "Tokens per second by direction",
                "Input (prompt) and output (completion) tokens per second. Input growing faster than "
                "requests: prompts grow (history, retrieval); output growing: longer answers.",
                "short",
                [Query(sum_by(("direction",), rate(TOKENS, *chat)), "{{direction}}")],
                stack=True,
            ),
        ),
        (
            12,
            timeseries(
                "Tokens per minute against the limit",
                "Each tenant's tokens per minute (all its agents) and its tokens-per-minute limit from "
                "its Tenant spec. Reaching the limit means 429s: raise it or spread the load.",
                "short",
                [
                    Query(f"{sum_by(('tenant',), rate(TOKENS, TENANT))} * 60", "{{tenant}} used"),
                    Query(
                        f"max by (tenant) (agentplane_tenant_tokens_per_minute{sel(TENANT)})",
                        "{{tenant}} limit",
                    ),
                ],
                minimum=0,
            ),
        ),
    )
    board.line(
        (
            12,
            timeseries(
                "Requests per minute against the limit",
                "Each tenant's chat requests per minute (all its agents) and its requests-per-minute "
                "limit from its Tenant spec. Reaching the limit means 429s.",
                "short",
                [
                    Query(f"{sum_by(('tenant',), rate(REQUESTS, TENANT))} * 60", "{{tenant}} used"),
                    Query(
                        f"max by (tenant) (agentplane_tenant_requests_per_minute{sel(TENANT)})",
                        "{{tenant}} limit",
                    ),
                ],
                minimum=0,
            ),
        ),
        (
            12,
            timeseries(
                "Quota refusals by limit",
                "Requests refused by a quota, by the limit that refused them (requests or tokens per "
                "minute, monthly budget). Steady refusals: the tenant needs higher limits.",
                "reqps",
                [
                    Query(
                        sum_by(("limit",), rate("agentplane_quota_rejections_total", TENANT, AGENT)),
                        "{{limit}}",
                    )
                ],
                stack=True,
            ),
        ),
    )
    board.line(
        (
            24,
            timeseries(
                "Rate-limited requests (429) by agent",
                "Chat requests answered 429 per agent: which agents the refusals hit.",
                "reqps",
                [
                    Query(
                        sum_by(("tenant", "agent"), rate(REQUESTS, *chat, RATE_LIMITED)),
                        "{{tenant}}/{{agent}}",
                    )
                ],
                stack=True,
            ),
        ),
    )
    board.row("Top agents and models over the range")
    for by, what in ((("tenant", "agent"), "agents"), (("model",), "models")):
        board.line(
            *(
                (
                    8,
                    bars(
                        f"Top {what} by {measure}",
                        f"The {TOP} {what} with the most {measure} over the time range.",
                        unit,
                        Query(
                            f"topk({TOP}, {sum_by(by, increase(metric, *chat))})", legend(by), instant=True
                        ),
                    ),
                )
                for metric, measure, unit in (
                    (REQUESTS, "requests", "short"),
                    (TOKENS, "tokens", "short"),
                    (COST, "cost", "currencyUSD"),
                )
            )
        )
    return board.build()
