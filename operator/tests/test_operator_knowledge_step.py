"""The Tenant's knowledge step: Qdrant not answering is retried soon; a refusal or any other failure
says its real reason in the condition (logged with the tenant and collection) and is not retried soon.

Qdrant's server cannot run here: its refusals come from a fake transport under qdrant-client's real
REST client; the healthy case runs against local mode."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
import yaml
from qdrant_client import AsyncQdrantClient

from agentplane_operator.reconcile import knowledge_step
from agentplane_platform.api.v1alpha1 import Tenant
from agentplane_platform.knowledge import VectorStore
from support.ports import free_port

pytestmark = pytest.mark.asyncio

REPO = Path(__file__).resolve().parents[2]
ACME = Tenant.model_validate(yaml.safe_load((REPO / "specs/tenants/acme/tenant.yaml").read_text()))
FIRST = f"{ACME.name}--{ACME.spec.knowledge_bases[0].name}"
PREVIOUS = [{"name": "help-center", "collection": FIRST, "ready": True, "message": "as last seen"}]


def _answering(status: int, body: bytes) -> VectorStore:
    """A Qdrant server that has no collections and answers every other call with `status`/`body`."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/exists"):
            return httpx.Response(200, json={"result": {"exists": False}, "status": "ok", "time": 0.0})
        return httpx.Response(status, content=body, headers={"content-type": "application/json"})

    client = AsyncQdrantClient(
        url="http://qdrant.test:6333", transport=httpx.MockTransport(handle), check_compatibility=False
    )
    return VectorStore(client, local=False)


async def test_collections_ready_in_local_mode() -> None:
    store = VectorStore.connect()
    step = await knowledge_step(store, ACME, [])
    await store.close()
    assert (step.condition.reason, step.condition.ok, step.retry) == ("CollectionsReady", True, False)
    assert len(step.created) == len(ACME.spec.knowledge_bases)


async def test_a_qdrant_that_does_not_answer_is_unavailable_and_retried_soon() -> None:
    store = VectorStore(
        AsyncQdrantClient(url=f"http://127.0.0.1:{free_port()}", timeout=2, check_compatibility=False),
        local=False,
    )
    step = await knowledge_step(store, ACME, PREVIOUS)
    await store.close()
    assert step.condition.reason == "QdrantUnavailable"
    assert "All connection attempts failed" in step.condition.message
    assert step.retry
    assert step.knowledge == PREVIOUS


async def test_an_overloaded_qdrant_is_unavailable_and_retried_soon() -> None:
    store = _answering(503, b'{"status": {"error": "Service Unavailable"}}')
    step = await knowledge_step(store, ACME, PREVIOUS)
    await store.close()
    assert (step.condition.reason, step.retry) == ("QdrantUnavailable", True)


async def test_a_refusal_says_its_reason_and_is_not_retried_soon(caplog: pytest.LogCaptureFixture) -> None:
    error = "Validation error in JSON body: [vectors.dense.size: value 0 invalid, must be 1 or larger]"
    store = _answering(400, b'{"status": {"error": "%s"}, "time": 0.0}' % error.encode())
    with caplog.at_level(logging.ERROR, logger="agentplane.operator"):
        step = await knowledge_step(store, ACME, PREVIOUS)
    await store.close()
    cond = step.condition
    assert (cond.type, cond.ok, cond.reason) == ("KnowledgeReady", False, "QdrantRefused")
    assert cond.message == f"collection {FIRST}: Qdrant answered 400 Bad Request: {error}"
    assert cond.stalled
    assert not step.retry
    assert step.knowledge == PREVIOUS
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(ACME.name in m and FIRST in m and error in m for m in logged), logged


async def test_an_answer_the_client_cannot_read_is_a_failure_not_an_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = _answering(200, b'{"result": "not what a client of this version expects"}')
    with caplog.at_level(logging.ERROR, logger="agentplane.operator"):
        step = await knowledge_step(store, ACME, PREVIOUS)
    await store.close()
    assert (step.condition.reason, step.retry) == ("CollectionFailed", False)
    assert step.condition.message.startswith(f"collection {FIRST}: ResponseHandlingException: ")
    assert any(r.exc_info for r in caplog.records if r.levelno == logging.ERROR)  # with its traceback
