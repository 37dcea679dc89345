"""What keeps the operator fast and its writes few with many Agents: requests handed to httpx only as
fast as its pool has connections, and Deployment events that queued on an Agent's lock reconciled
with the newest Deployment the watch showed, not each with its own (older) one."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import httpx
import pytest

from agentplane_operator import handlers, reconcile
from agentplane_operator.kube import Kube, Manifest
from agentplane_operator.metrics import Metrics
from agentplane_operator.state import Key, Operator, Views


@pytest.mark.asyncio
async def test_no_more_requests_in_flight_than_the_client_allows() -> None:
    in_flight = most = 0

    async def answer(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return httpx.Response(200, json={"kind": "ConfigMap", "metadata": {"name": "x"}})

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer), base_url="https://api.test")
    kube = Kube(client, field_manager="test", on_write=lambda kind, verb: None, concurrency=4)
    found = await asyncio.gather(*(kube.get("ConfigMap", f"c{i}", "ns") for i in range(40)))
    await kube.close()
    assert len(found) == 40
    assert all(f is not None for f in found)
    assert most == 4


def _deployment(version: str) -> Manifest:
    return {"kind": "Deployment", "metadata": {"name": "helper", "resourceVersion": version}}


@pytest.mark.asyncio
async def test_queued_deployment_events_reconcile_with_the_newest_deployment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key: Key = ("tenant-acme", "helper")
    seen: list[str | None] = []

    async def record(op: Operator, body: Any, views: Views, *, deployment: Manifest | None = None) -> None:
        seen.append(deployment["metadata"]["resourceVersion"] if deployment else None)

    monkeypatch.setattr(reconcile, "reconcile_agent", record)
    op = Operator(
        settings=cast(Any, None), kube=cast(Any, None), vectors=cast(Any, None), redis=cast(Any, None),
        db=cast(Any, None), metrics=Metrics(), build=cast(Any, None), http=cast(Any, None),
    )  # fmt: skip
    agent = {"metadata": {"name": "helper", "namespace": "tenant-acme"}}
    views = Views(
        tenants={}, prompts={}, tools={}, agents={key: [agent]}, dependents={}, agents_by_namespace={}
    )
    async with op.locks[("Agent", *key)]:  # a reconcile of the Agent is under way
        queued = []
        for version in ("7", "8"):  # two events of its Deployment meanwhile: 8 is the newer
            op.saw_deployment(key, _deployment(version))
            queued.append(
                asyncio.create_task(handlers._reconcile_agent_key(op, views, key, "child", watched=True))
            )
        await asyncio.sleep(0)
    await asyncio.gather(*queued)
    # each reconcile saw the Deployment as it is now: the first one, with 7, would have undone the
    # readiness that 8 showed (one status write back, one forth)
    assert seen == ["8", "8"]

    op.saw_deployment(key, None)  # deleted: the reconcile applies it again
    await handlers._reconcile_agent_key(op, views, key, "child", watched=True)
    assert seen[-1] is None
