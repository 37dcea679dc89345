"""kopf's per-event work done cheaper, the same as kopf's own; a task kopf leaves running at exit, ended."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from typing import Any, cast

import kopf
import orjson
import pytest
from kopf._cogs.aiokits import aiotoggles
from kopf._cogs.clients import api, watching
from kopf._cogs.structs import references

from agentplane_operator.kopf_speedups import (
    PAUSE_WAITER,
    LeanDiffBaseStorage,
    LeanProgressStorage,
    end_pause_waiters,
    fast_watch_json,
    report_tasks_left,
)
from support.waiting import wait_for_async


def test_watch_events_are_parsed_by_orjson_into_the_same_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    # where kopf parses its watch streams: if a kopf upgrade moves it, this fails instead of the
    # operator silently parsing at a third of the speed
    monkeypatch.setattr(api, "json", json)
    assert fast_watch_json() is True
    assert api.json.loads is orjson.loads  # type: ignore[attr-defined]
    line = json.dumps(
        {
            "type": "MODIFIED",
            "object": {"metadata": {"name": "helper", "labels": {"é": "ü"}}, "spec": {"n": 1.5}},
        }
    )
    assert api.json.loads(line) == json.loads(line)  # type: ignore[attr-defined]
    assert fast_watch_json() is False  # already orjson: nothing to replace


def test_the_lean_essence_is_the_one_kopf_builds() -> None:
    """What kopf compares to tell a spec change from a status write is the same as kopf's own,
    built without copying the managed fields and the status first."""
    raw: dict[str, Any] = {
            "apiVersion": "agentplane.io/v1alpha1",
            "kind": "Agent",
            "metadata": {
                "name": "helper", "namespace": "tenant-acme", "uid": "u", "resourceVersion": "12",
                "generation": 3, "labels": {"team": "support"},
                "annotations": {
                    "agentplane.io/last-handled-configuration": '{"spec": {}}',
                    "kubectl.kubernetes.io/last-applied-configuration": "{}",
                    "note": "kept",
                    "agentplane.io/create_fn": '{"started": "2026-12-01T00:00:00"}',
                    "other.example/last-handled-configuration": "{}",
                },
                "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {"f:model": {}}}}],
            },
            "spec": {"model": {"name": "openai/gpt-4o-mini"}, "prompt": {"name": "assistant"}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}], "configHash": "abc"},
    }  # fmt: skip
    body = kopf.Body(cast(kopf.RawBody, raw))
    ours = LeanDiffBaseStorage(prefix="agentplane.io", key="last-handled-configuration")
    kopfs = kopf.AnnotationsDiffBaseStorage(prefix="agentplane.io", key="last-handled-configuration")
    before = copy.deepcopy(raw)
    essence = ours.build(body=body)
    assert essence == kopfs.build(body=body)
    assert essence["metadata"]["labels"] == {"team": "support"}
    assert "note" in essence["metadata"]["annotations"]
    assert ours.build(body=body, extra_fields=["status.configHash"]) == kopfs.build(
        body=body, extra_fields=["status.configHash"]
    )

    # kopf then clears its handlers' progress from the essence (and from the last one stored)
    progress, kopf_progress = (
        LeanProgressStorage(prefix="agentplane.io"),
        kopf.AnnotationsProgressStorage(prefix="agentplane.io"),
    )
    sparse: list[dict[str, Any]] = [{"spec": {"n": 1}}, {"metadata": {"annotations": {}}}]
    for built in [essence, kopfs.build(body=body), *(cast(kopf.BodyEssence, e) for e in sparse)]:
        cleared = progress.clear(essence=copy.deepcopy(built))
        assert cleared == kopf_progress.clear(essence=copy.deepcopy(built))
    assert progress.clear(essence=essence)["metadata"] == {
        "labels": {"team": "support"},
        "annotations": {"note": "kept", "other.example/last-handled-configuration": "{}"},
    }  # ours (the handlers' progress, the last handled spec) go; another operator's stays
    # neither copies the object; neither changes it (kopf and the handlers read the same event)
    assert raw == before


@pytest.mark.parametrize(
    "metadata",
    [
        {},
        {"labels": {}, "annotations": {}},
        {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
        {"labels": {"a": "b"}},
    ],
)
def test_the_lean_essence_of_sparse_metadata_is_kopfs(metadata: dict[str, Any]) -> None:
    raw: dict[str, Any] = {"kind": "Pod", "metadata": {"name": "p", **metadata}, "spec": {"containers": []}}
    body = kopf.Body(cast(kopf.RawBody, raw))
    ours = LeanDiffBaseStorage(prefix="agentplane.io", key="last-handled-configuration")
    kopfs = kopf.AnnotationsDiffBaseStorage(prefix="agentplane.io", key="last-handled-configuration")
    assert ours.build(body=body) == kopfs.build(body=body)


@pytest.mark.asyncio
async def test_the_pause_waiter_of_a_watch_stream_kopf_left_open_is_ended() -> None:
    """kopf's own watch stream, suspended inside its block as the Agents' stream is when kopf
    cancels its busy watcher at exit, and never closed: its pause waiter runs on (and held every
    exit for kopf's 5 s) until `end_pause_waiters` ends it."""
    paused = aiotoggles.ToggleSet(any)
    agents = references.Resource(group="agentplane.io", version="v1alpha1", plural="agents")

    async def stream() -> Any:
        async with watching.streaming_block(resource=agents, namespace=None, operator_paused=paused):
            yield "event"

    abandoned = stream()
    assert await anext(abandoned) == "event"
    waiters = [t for t in asyncio.all_tasks() if t.get_name().startswith(PAUSE_WAITER)]
    assert [t.get_name() for t in waiters] == [f"{PAUSE_WAITER}{agents}"]  # kopf still names it so
    assert end_pause_waiters() == 1
    await asyncio.wait(waiters, timeout=5)
    assert waiters[0].cancelled()
    assert end_pause_waiters() == 0
    await abandoned.aclose()  # closing it later (as the loop's shutdown does) is still clean


@pytest.mark.asyncio
async def test_the_tasks_an_exit_still_waits_for_are_named(caplog: pytest.LogCaptureFixture) -> None:
    """A task still running after the cleanup holds the exit for kopf's 5 s: the log names it."""

    async def lingering() -> None:
        await asyncio.sleep(60)

    task = asyncio.create_task(lingering(), name="lingering")
    caplog.set_level(logging.INFO, "agentplane.test")
    try:
        report_tasks_left(logging.getLogger("agentplane.test"), delay=0.05)
        assert "still running" not in caplog.text  # not at once: after the delay
        await wait_for_async("the report", lambda: _said(caplog, "still running"), 10, interval=0.02)
    finally:
        task.cancel()
    (line,) = [r.getMessage() for r in caplog.records if "still running" in r.getMessage()]
    assert "0.05 s after the cleanup" in line
    assert "lingering (test_the_tasks_an_exit_still_waits_for_are_named.<locals>.lingering)" in line


async def _said(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return text in caplog.text
