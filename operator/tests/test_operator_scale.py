"""What keeps the operator fast and its writes few with many Agents: no more requests in flight than
its client has connections, and Deployment events that queued on an Agent's lock reconciled
with the newest Deployment the watch showed, not each with its own (older) one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import kopf
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from operator_support import least_settings
from pydantic import ValidationError

from agentplane_operator import handlers, reconcile
from agentplane_operator.conditions import Cond, merge_patched
from agentplane_operator.kube import Kube, KubeError, Manifest, PrioritySlots
from agentplane_operator.metrics import Metrics
from agentplane_operator.settings import API_CONCURRENCY, OperatorSettings
from agentplane_operator.state import Cause, Key, Operator, Views
from agentplane_platform.api.v1alpha1 import Prompt


def _operator(kube: object = None) -> Operator:
    """An Operator with only its Kubernetes client (a fake, or None where nothing is requested)."""
    return Operator(
        settings=cast(Any, None), kube=cast(Any, kube), vectors=cast(Any, None), redis=cast(Any, None),
        db=cast(Any, None), metrics=Metrics(), build=cast(Any, None), http=cast(Any, None),
    )  # fmt: skip


@asynccontextmanager
async def api_server(answer: Callable[[web.Request], Awaitable[web.Response]]) -> AsyncIterator[str]:
    """A server on loopback answering every request with `answer`: the API server, as far as `Kube`
    can tell. Yields its base URL."""
    app = web.Application()
    app.router.add_route("*", "/{path:.*}", answer)
    server = TestServer(app)
    await server.start_server()
    try:
        yield str(server.make_url("/")).rstrip("/")
    finally:
        await server.close()


CONFIG_MAP = {"kind": "ConfigMap", "metadata": {"name": "x"}}


class InFlight:
    """An answer taking 10 ms that keeps the most requests it had at once."""

    def __init__(self) -> None:
        self.now = self.most = 0

    async def answer(self, request: web.Request) -> web.Response:
        self.now += 1
        self.most = max(self.most, self.now)
        await asyncio.sleep(0.01)
        self.now -= 1
        return web.json_response(CONFIG_MAP)


@pytest.mark.asyncio
async def test_no_more_requests_in_flight_than_the_client_allows() -> None:
    in_flight = InFlight()
    async with api_server(in_flight.answer) as url:
        kube = Kube(url, field_manager="test", on_write=lambda kind, verb: None, concurrency=4)
        found = await asyncio.gather(*(kube.get("ConfigMap", f"c{i}", "ns") for i in range(40)))
        await kube.close()
    assert len(found) == 40
    assert all(f is not None for f in found)
    assert in_flight.most == 4


@pytest.mark.asyncio
async def test_the_api_concurrency_setting_bounds_the_requests_in_flight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    least_settings(monkeypatch)
    assert OperatorSettings().api_concurrency == API_CONCURRENCY
    monkeypatch.setenv("AGENTPLANE_OPERATOR_API_CONCURRENCY", "0")
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        OperatorSettings()
    monkeypatch.setenv("AGENTPLANE_OPERATOR_API_CONCURRENCY", "3")
    settings = OperatorSettings()
    in_flight = InFlight()
    async with api_server(in_flight.answer) as url:
        kube = Kube.connect(
            kopf.ConnectionInfo(server=url), field_manager="test", on_write=lambda kind, verb: None,
            concurrency=settings.api_concurrency,
        )  # fmt: skip
        await asyncio.gather(*(kube.get("ConfigMap", f"c{i}", "ns") for i in range(30)))
        await kube.close()
    assert in_flight.most == 3


@pytest.mark.asyncio
async def test_requests_are_counted_when_sent_not_while_they_wait_for_a_connection() -> None:
    """`agentplane_operator_api_writes_total` and `_reads_total` say what the API server got so far:
    a request still waiting for a connection is not in them yet."""
    release, arrived = asyncio.Event(), asyncio.Event()

    async def answer(request: web.Request) -> web.Response:
        arrived.set()
        await release.wait()
        return web.json_response(CONFIG_MAP)

    reads: list[str] = []
    writes: list[tuple[str, str]] = []
    async with api_server(answer) as url:
        kube = Kube(
            url, field_manager="test", on_write=lambda kind, verb: writes.append((kind, verb)),
            on_read=reads.append, concurrency=1,
        )  # fmt: skip
        first = asyncio.create_task(kube.get("ConfigMap", "a", "ns"))
        await asyncio.wait({first, asyncio.create_task(arrived.wait())}, return_when=asyncio.FIRST_COMPLETED)
        queued = [asyncio.create_task(kube.delete("ConfigMap", f"c{i}", "ns")) for i in range(3)]
        for _ in range(20):
            await asyncio.sleep(0)
        assert (reads, writes) == (["ConfigMap"], [])
        release.set()
        await asyncio.gather(first, *queued)
        await kube.close()
    assert writes == [("ConfigMap", "DELETE")] * 3


@pytest.mark.asyncio
async def test_requests_waiting_for_a_connection_go_by_priority_then_in_order() -> None:
    """With every connection busy, a Prompt's reconcile does not wait behind the Agents' resyncs
    and rollouts queued before it: its requests go first, theirs in the order they came."""
    release = asyncio.Event()
    sent: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        sent.append(request.path.rsplit("/", 1)[-1])
        if len(sent) == 1:
            await release.wait()  # the one connection is busy until the queue has formed
        return web.json_response(CONFIG_MAP)

    async with api_server(answer) as url:
        kube = Kube(url, field_manager="test", on_write=lambda kind, verb: None, concurrency=1)
        op = _operator(kube)

        async def read(kind: str, name: str, cause: Cause) -> None:
            async with op.reconciling(kind, name, "tenant-acme", cause):
                await kube.get("ConfigMap", name, "tenant-acme")

        first = asyncio.create_task(read("Agent", "busy", "child"))
        while not sent and not first.done():  # arrived, or failed (then the gather below raises)
            await asyncio.sleep(0)
        queued = [
            ("Agent", "resync-1", "resync"), ("Agent", "rollout-1", "child"), ("Agent", "resync-2", "resync"),
            ("Agent", "changed", "event"), ("Prompt", "greeting", "event"), ("Agent", "rollout-2", "child"),
            ("Agent", "dependent", "dependency"), ("Tool", "search", "resync"),
        ]  # fmt: skip
        tasks = []
        for kind, name, cause in queued:
            tasks.append(asyncio.create_task(read(kind, name, cast(Cause, cause))))
            await asyncio.sleep(0)  # each in line before the next comes
        release.set()
        await asyncio.gather(first, *tasks)
        await kube.close()
    assert sent == [
        "busy", "greeting", "changed", "dependent", "search", "rollout-1", "rollout-2", "resync-1", "resync-2",
    ]  # fmt: skip


@pytest.mark.asyncio
async def test_a_request_cancelled_while_waiting_or_just_granted_gives_its_turn_on() -> None:
    slots = PrioritySlots(1)
    order: list[str] = []
    gate = asyncio.Event()

    async def wait_for_turn(name: str) -> None:
        async with slots.slot(1):
            order.append(name)

    async def hold_then_cancel() -> None:
        async with slots.slot(0):
            order.append("holder")
            await gate.wait()
        # the slot has just passed to the second waiter (the first gave up): it is cancelled
        # before it runs, as a task can be at any await
        waiting[1].cancel()

    holder = asyncio.create_task(hold_then_cancel())
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(wait_for_turn(n)) for n in ("gave-up", "granted-then-cancelled", "last")]
    await asyncio.sleep(0)
    waiting[0].cancel()
    gate.set()
    await holder
    outcomes = await asyncio.gather(*waiting, return_exceptions=True)
    assert [type(o).__name__ for o in outcomes] == ["CancelledError", "CancelledError", "NoneType"]
    assert order == ["holder", "last"]
    async with slots.slot(5):  # the one slot is free again, and taken once
        assert slots._free == 0
    assert slots._free == 1


def _deployment(version: str) -> Manifest:
    return {"kind": "Deployment", "metadata": {"name": "helper", "resourceVersion": version}}


@pytest.mark.asyncio
async def test_queued_deployment_events_reconcile_with_the_newest_deployment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key: Key = ("tenant-acme", "helper")
    seen: list[str | None] = []

    async def record(
        op: Operator, body: Any, views: Views, *, deployment: Manifest | None = None, **_: Any
    ) -> None:
        seen.append(deployment["metadata"]["resourceVersion"] if deployment else None)

    monkeypatch.setattr(reconcile, "reconcile_agent", record)
    op = _operator()
    agent = {"metadata": {"name": "helper", "namespace": "tenant-acme"}}
    views = Views(tenants={}, prompts={}, tools={}, agents={key: [agent]}, dependents={})
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

    # under load the watch lags behind the reads: a late event of an older version changes nothing
    op.saw_deployment(key, _deployment("7"))
    await handlers._reconcile_agent_key(op, views, key, "child", watched=True)
    assert seen[-1] == "8"

    op.saw_deployment(key, None)  # deleted: the reconcile applies it again
    await handlers._reconcile_agent_key(op, views, key, "child", watched=True)
    assert seen[-1] is None


@pytest.mark.asyncio
async def test_a_status_as_our_last_write_left_it_is_neither_read_nor_written() -> None:
    """A Deployment event that changes nothing of the Agent's status costs no request (each Agent
    sees several while its pods start); when it does change something, the live status is read."""
    wanted = [Cond("ConfigResolved", True, "Resolved", "config abc"), Cond("Deployed", True, "Available")]
    extra = {"replicas": 1}
    status = reconcile._wanted_status({}, 1, wanted, extra)[1]
    reads: list[str] = []

    class Reads:
        async def get(self, kind: str, name: str, namespace: str | None = None) -> Manifest:
            reads.append(name)
            return {"metadata": {"name": name, "uid": "u"}, "status": status}

    op = _operator(Reads())
    body = {"metadata": {"name": "helper", "namespace": "tenant-acme", "uid": "u", "generation": 1}}
    same = await reconcile._write_status(op, "Agent", body, wanted, extra, known=status)
    assert same is not None
    assert same.after == status
    assert reads == []
    rolling = reconcile._wanted_status({}, 1, [Cond("Deployed", False, "Progressing")], {"replicas": 0})[1]
    await reconcile._write_status(op, "Agent", body, wanted, extra, known=rolling)
    assert reads == ["helper"]  # it differs from what we wrote last: compared with the live one


@pytest.mark.asyncio
async def test_a_status_written_is_remembered_as_the_server_keeps_it() -> None:
    """A field written as null is gone on the server (a JSON merge patch): remembered as null, the
    status never equalled what the watch shows, and every resync read every Agent again (an Agent's
    `url` is null on a platform without a gateway)."""
    patches: list[Manifest] = []

    class Writes:
        async def patch_status(
            self, kind: str, name: str, namespace: str | None, status: Manifest
        ) -> Manifest:
            patches.append(status)
            return {"metadata": {"name": name, "uid": "u"}, "status": status}

    op = _operator(Writes())
    body = {"metadata": {"name": "helper", "namespace": "tenant-acme", "uid": "u", "generation": 1}}
    wanted = [Cond("Deployed", True, "Available")]
    extra = {"configHash": "abc", "replicas": 1}
    known = {
        **reconcile._wanted_status({}, 1, wanted, extra)[1],
        "url": "https://old.example/t/acme/a/helper/v1",
    }
    written = await reconcile._write_status(
        op, "Agent", body, wanted, {**extra, "url": None}, known=known, trusted=True
    )
    assert written is not None
    assert patches[0]["url"] is None  # the patch removes it...
    assert "url" not in written.after  # ...so it is not remembered as null
    assert written.after["configHash"] == "abc"
    assert merge_patched({"a": {"b": 1, "c": 2}, "d": 1}, {"a": {"b": None, "e": 3}, "d": [1]}) == {
        "a": {"c": 2, "e": 3}, "d": [1],
    }  # fmt: skip


@pytest.mark.asyncio
async def test_the_client_reads_a_rotated_token_keeps_a_path_prefix_and_says_why_it_was_refused(
    tmp_path: Path,
) -> None:
    """In a pod the service account's token is rotated under the operator: every request carries the
    token as the file holds it then. An API server behind a proxy's path keeps that path, and a
    refusal names the server's reason."""
    seen: list[tuple[str, str]] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get("Authorization", "")))
        if request.method == "PATCH":
            return web.json_response(
                {"kind": "Status", "message": "the object has been modified"}, status=409
            )
        return web.json_response(CONFIG_MAP)

    token = tmp_path / "token"
    token.write_text("first\n")
    async with api_server(answer) as url:
        kube = Kube(f"{url}/k8s/clusters/c-1/", field_manager="test", on_write=lambda kind, verb: None,
                    concurrency=1, token_file=token)  # fmt: skip
        await kube.get("ConfigMap", "c", "ns")
        token.write_text("second\n")
        await kube.get("ConfigMap", "c", "ns")
        with pytest.raises(KubeError, match="409 the object has been modified") as refused:
            await kube.patch_status("Agent", "a", "ns", {"phase": "Ready"}, resource_version="7")
        await kube.close()
    assert refused.value.status == 409
    path = "/k8s/clusters/c-1/api/v1/namespaces/ns/configmaps/c"
    assert seen[:2] == [(path, "Bearer first"), (path, "Bearer second")]
    assert seen[2][0] == "/k8s/clusters/c-1/apis/agentplane.io/v1alpha1/namespaces/ns/agents/a/status"


@pytest.mark.asyncio
async def test_a_new_objects_child_is_applied_without_reading_it_first() -> None:
    sent: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        sent.append(request.method)
        if request.method == "GET":
            return web.json_response({"message": "not found"}, status=404)
        return web.json_response(CONFIG_MAP)

    async with api_server(answer) as url:
        kube = Kube(url, field_manager="test", on_write=lambda kind, verb: None, concurrency=1)
        manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "ns"}}
        await kube.apply(manifest)
        assert sent == ["GET", "PATCH"]
        sent.clear()
        await kube.apply(manifest, read=False)
        assert sent == ["PATCH"]
        await kube.close()


@pytest.mark.asyncio
async def test_a_dependency_that_leaves_the_config_as_applied_costs_no_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A new Prompt re-reconciles every Agent naming it; those whose config our last status write
    says is resolved and applied for their generation need nothing."""

    class Config:
        def hash(self) -> str:
            return "abc"

    monkeypatch.setattr(
        reconcile,
        "plan_agent",
        lambda op, body, views: reconcile.AgentPlan(
            [], cast(Any, Config()), [{"kind": "ConfigMap"}, {"kind": "Deployment"}]
        ),
    )

    class NoRequests:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"a request: {name}")

    op = _operator(NoRequests())
    body = {"metadata": {"name": "helper", "namespace": "tenant-acme", "uid": "u", "generation": 2}}
    views = Views(tenants={}, prompts={}, tools={}, agents={}, dependents={})
    resolved = {"type": "ConfigResolved", "status": "True"}
    op.agent_statuses[("tenant-acme", "helper")] = (
        "u", {"observedGeneration": 2, "configHash": "abc", "conditions": [resolved]},
    )  # fmt: skip
    await reconcile.reconcile_agent(op, body, views, dependency=True)
    # an older generation's status, another hash or another Agent of that name: reconciled in full
    for status in (
        {"observedGeneration": 1, "configHash": "abc", "conditions": [resolved]},
        {"observedGeneration": 2, "configHash": "old", "conditions": [resolved]},
    ):
        op.agent_statuses[("tenant-acme", "helper")] = ("u", status)
        with pytest.raises(AssertionError, match="a request"):
            await reconcile.reconcile_agent(op, body, views, dependency=True)


class _Recorder:
    """The requests a reconcile sends, answered as an API server that applies whatever it is sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    async def apply(self, manifest: Manifest, *, read: bool = True) -> tuple[Manifest, bool]:
        if read:
            self.sent.append(("GET", manifest["kind"]))
        self.sent.append(("APPLY", manifest["kind"]))
        return manifest, True

    async def get(self, kind: str, name: str, namespace: str | None = None) -> Manifest | None:
        self.sent.append(("GET", kind))
        if kind == "Agent":
            return {"metadata": {"name": name, "uid": "u"}, "status": {}}
        return None

    async def patch_status(self, kind: str, name: str, namespace: str | None, status: Manifest) -> Manifest:
        self.sent.append(("PATCH status", kind))
        return {"metadata": {"name": name, "uid": "u"}, "status": status}


@pytest.mark.asyncio
async def test_a_config_change_reaches_a_dependent_without_reading_what_the_operator_applied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A new Prompt version reaches each of its (perhaps thousand) dependents as two writes and a status
    patch: its ConfigMap and Deployment changed, written without reading them first (they are as the
    operator applied them); its Service unchanged, neither read nor written; its status patched from
    the one the operator wrote last. A resync reads nothing either: the Service and ConfigMap are
    compared with what their watches show, and one edited by hand is applied again."""
    config = {"hash": "old"}

    class Config:
        def hash(self) -> str:
            return config["hash"]

    def children() -> list[Manifest]:
        meta = {"name": "helper", "namespace": "tenant-acme", "generation": 1}
        return [
            {"kind": "ConfigMap", "metadata": meta, "data": {"config": config["hash"]}},
            {
                "kind": "Deployment", "metadata": meta, "spec": {"replicas": 1, "hash": config["hash"]},
                "status": {"observedGeneration": 1},
            },
            {"kind": "Service", "metadata": meta, "spec": {"port": 8080}},
        ]  # fmt: skip

    monkeypatch.setattr(
        reconcile,
        "plan_agent",
        lambda op, body, views: reconcile.AgentPlan(
            [Cond("ConfigResolved", True, "Resolved")], cast(Any, Config()), children()
        ),
    )
    monkeypatch.setattr(reconcile, "agent_endpoint", lambda config: "http://helper")
    monkeypatch.setattr(reconcile, "agent_url", lambda config, build: "http://helper")
    monkeypatch.setattr(kopf, "event", lambda *args, **kwargs: None)
    kube = _Recorder()
    op = _operator(kube)
    key = ("tenant-acme", "helper")
    body: dict[str, Any] = {
        "apiVersion": "agentplane.io/v1alpha1", "kind": "Agent",
        "metadata": {"name": "helper", "namespace": "tenant-acme", "uid": "u", "generation": 1},
    }  # fmt: skip
    watched: dict[str, dict[Key, list[Manifest]]] = {"ConfigMap": {}, "Service": {}}
    views = Views(tenants={}, prompts={}, tools={}, agents={}, dependents={}, children=watched)

    def watches_show_what_was_applied() -> None:
        for child in children():
            if child["kind"] in watched:
                watched[child["kind"]][key] = [child]

    await reconcile.reconcile_agent(op, body, views, new=True)
    assert kube.sent == [
        ("APPLY", "ConfigMap"), ("APPLY", "Deployment"), ("APPLY", "Service"), ("PATCH status", "Agent")
    ]  # fmt: skip
    watches_show_what_was_applied()

    kube.sent.clear()
    config["hash"] = "new"  # its Prompt changed
    await reconcile.reconcile_agent(op, body, views, dependency=True)
    assert kube.sent == [("APPLY", "ConfigMap"), ("APPLY", "Deployment"), ("PATCH status", "Agent")]
    assert op.agent_statuses[key][1]["configHash"] == "new"
    watches_show_what_was_applied()

    kube.sent.clear()
    body["status"] = op.agent_statuses[key][1]  # as the Agent's watch shows it
    await reconcile.reconcile_agent(op, body, views)  # a resync of an Agent as applied
    assert kube.sent == []

    watched["ConfigMap"][key] = [{**children()[0], "data": {"config": "edited by hand"}}]
    await reconcile.reconcile_agent(op, body, views)  # the edit is put back, without a read
    assert kube.sent == [("APPLY", "ConfigMap")]
    watches_show_what_was_applied()

    kube.sent.clear()
    body["status"] = {**body["status"], "replicas": 7}  # someone else wrote the status: read it
    await reconcile.reconcile_agent(op, body, views)
    assert ("GET", "Agent") in kube.sent

    kube.sent.clear()
    op.saw_deployment(key, None)  # its watch saw it deleted
    await reconcile.reconcile_agent(op, body, views)
    assert ("APPLY", "Deployment") in kube.sent

    kube.sent.clear()
    op.forget_agent(key)  # nothing remembered of it (as after a restart)
    config["hash"] = "newer"
    await reconcile.reconcile_agent(op, body, views, dependency=True)
    # the optional children (autoscaler, disruption budget) are not watched: looked for once
    assert {kind for verb, kind in kube.sent if verb == "GET"} == {
        "Agent", "HorizontalPodAutoscaler", "PodDisruptionBudget"
    }  # fmt: skip


@pytest.mark.asyncio
async def test_an_agent_is_reconciled_once_a_generation_and_a_failed_reconcile_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Agents are reconciled from their watch events: our own status writes (the same generation)
    cost nothing, a spec change (a new generation) is reconciled, and a failure is tried again."""
    calls: list[tuple[int, bool]] = []
    failures = [KubeError(500, "PATCH", "/apis/apps/v1/...", "etcdserver: request timed out")]

    async def record(op: Operator, body: Any, views: Views, *, new: bool = False, **_: Any) -> None:
        calls.append((body["metadata"]["generation"], new))
        if failures:
            raise failures.pop()

    monkeypatch.setattr(reconcile, "reconcile_agent", record)
    monkeypatch.setattr(handlers, "RETRY_DELAYS", (0.01,))
    op = _operator()
    key: Key = ("tenant-acme", "helper")

    def generation(n: int) -> Manifest:
        return {"metadata": {"name": "helper", "namespace": "tenant-acme", "uid": "u", "generation": n}}

    index: dict[Key, list[Manifest]] = {key: [generation(1)]}
    views = Views(tenants={}, prompts={}, tools={}, agents=index, dependents={})
    await handlers._reconcile_agent_generation(op, views, key, generation(1), new=True)
    assert calls == [(1, True)]  # failed: tried again shortly, from the index
    async with asyncio.timeout(5):
        while len(calls) < 2:
            await asyncio.sleep(0.01)
    assert calls == [(1, True), (1, False)]
    await handlers._reconcile_agent_generation(op, views, key, generation(1), new=False)  # our status write
    assert len(calls) == 2
    await handlers._reconcile_agent_generation(op, views, key, generation(2), new=False)  # its spec changed
    assert calls[-1] == (2, False)


def test_a_namespace_s_prompts_and_tools_are_read_from_its_own_index_entry() -> None:
    """A reconcile reads its namespace's Prompts and Tools by key (the index is by namespace): with
    thousands of tenants, scanning every tenant's entries for each Agent made convergence quadratic."""

    def prompt(namespace: str, name: str, text: str) -> tuple[str, Prompt]:
        return name, Prompt.model_validate(
            {"metadata": {"name": name, "namespace": namespace}, "spec": {"version": 1, "template": text}}
        )

    views = Views(
        tenants={},
        prompts={
            "tenant-acme": [prompt("tenant-acme", "support", "acme"), prompt("tenant-acme", "sales", "sell")],
            "tenant-beta": [prompt("tenant-beta", "support", "beta")],
        },
        tools={},
        agents={},
        dependents={},
    )
    acme = views.prompts_in("tenant-acme")
    assert sorted(acme) == ["sales", "support"]
    assert acme["support"].spec.template == "acme"
    assert views.prompts_in("tenant-beta")["support"].spec.template == "beta"
    assert views.prompts_in("tenant-none") == {}
    assert views.tools_in("tenant-acme") == {}


def test_a_watched_child_edited_or_deleted_by_someone_else_is_drift() -> None:
    """Events of an Agent's Service and ConfigMap ask for a reconcile only when they show the child
    otherwise than this instance last planned it: its own writes' events cost nothing."""
    op = _operator()
    key = ("tenant-acme", "helper")
    planned: Manifest = {
        "kind": "ConfigMap", "metadata": {"name": "agent-helper", "labels": {"a": "b"}}, "data": {"k": "v"}
    }  # fmt: skip
    live = {**planned, "metadata": {**planned["metadata"], "resourceVersion": "9", "uid": "c"}}
    assert not reconcile.child_drifted(op, key, live, deleted=False)  # not planned yet: its first reconcile
    op.agent_plans[key] = (("u", 1), reconcile.AgentPlan([], None, [planned]))
    assert not reconcile.child_drifted(op, key, live, deleted=False)  # our own write
    assert reconcile.child_drifted(op, key, {**live, "data": {"k": "edited"}}, deleted=False)
    assert reconcile.child_drifted(op, key, live, deleted=True)
    other = {**live, "metadata": {**live["metadata"], "name": "agent-other"}}
    assert not reconcile.child_drifted(op, key, other, deleted=True)  # not the Agent's
    service = {"kind": "Service", "metadata": {"name": "helper"}}
    assert not reconcile.child_drifted(op, key, service, deleted=True)  # a kind the plan does not have


@pytest.mark.asyncio
async def test_stopping_ends_the_reconciles_under_way_before_closing_the_clients() -> None:
    """At SIGTERM kopf runs the cleanup handler while handlers still run: the reconciles under way
    (and those waiting for a lock) are cancelled first, not failed one by one by closed clients."""
    order: list[str] = []

    class Client:
        def __init__(self, name: str) -> None:
            self.name = name

        async def close(self) -> None:
            order.append(f"{self.name} closed")

        aclose = close

    class Engine:
        async def dispose(self) -> None:
            order.append("db closed")

    op = Operator(
        settings=cast(Any, None), kube=cast(Any, Client("kube")), vectors=cast(Any, Client("qdrant")),
        redis=cast(Any, Client("redis")), db=cast(Any, Engine()), metrics=Metrics(), build=cast(Any, None),
        http=cast(Any, Client("http")),
    )  # fmt: skip
    started = asyncio.Event()

    async def reconcile_forever(name: str) -> None:
        try:
            async with op.reconciling("Agent", name, "tenant-acme", "resync"):
                started.set()
                await asyncio.sleep(3600)  # a request to a slow API server
        except asyncio.CancelledError:
            order.append(f"{name} cancelled")
            raise

    running = asyncio.create_task(reconcile_forever("helper"))
    await started.wait()
    waiting = asyncio.create_task(reconcile_forever("helper"))  # queued on the same Agent's lock
    await asyncio.sleep(0)
    await op.close(grace=5)
    assert running.cancelled()
    assert waiting.cancelled()
    assert order[:2] == ["helper cancelled", "helper cancelled"]
    assert order[2:] == ["kube closed", "http closed", "qdrant closed", "redis closed", "db closed"]
    assert op.metrics.queue_depth.labels("Agent")._value.get() == 0
