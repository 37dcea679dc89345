"""A thin async client for the few Kubernetes calls the reconcilers make.

kopf watches and patches the objects it handles; children are written here, with server-side
apply under one field manager. `apply` reads the live object first and sends nothing when the
live object already holds every field we want: an unchanged reconcile makes no write requests.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import orjson

Manifest = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ResourceType:
    api_version: str
    plural: str
    namespaced: bool

    def path(self, name: str | None = None, namespace: str | None = None, subresource: str = "") -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
        if subresource:
            base += f"/{subresource}"
        return base


RESOURCES: dict[str, ResourceType] = {
    "Namespace": ResourceType("v1", "namespaces", namespaced=False),
    "ResourceQuota": ResourceType("v1", "resourcequotas", namespaced=True),
    "LimitRange": ResourceType("v1", "limitranges", namespaced=True),
    "ServiceAccount": ResourceType("v1", "serviceaccounts", namespaced=True),
    "ConfigMap": ResourceType("v1", "configmaps", namespaced=True),
    "Secret": ResourceType("v1", "secrets", namespaced=True),
    "Service": ResourceType("v1", "services", namespaced=True),
    "NetworkPolicy": ResourceType("networking.k8s.io/v1", "networkpolicies", namespaced=True),
    "RoleBinding": ResourceType("rbac.authorization.k8s.io/v1", "rolebindings", namespaced=True),
    "Deployment": ResourceType("apps/v1", "deployments", namespaced=True),
    "HorizontalPodAutoscaler": ResourceType("autoscaling/v2", "horizontalpodautoscalers", namespaced=True),
    "PodDisruptionBudget": ResourceType("policy/v1", "poddisruptionbudgets", namespaced=True),
    "Pod": ResourceType("v1", "pods", namespaced=True),
    "Job": ResourceType("batch/v1", "jobs", namespaced=True),
    "GitRepository": ResourceType("source.toolkit.fluxcd.io/v1", "gitrepositories", namespaced=True),
    "HTTPRoute": ResourceType("gateway.networking.k8s.io/v1", "httproutes", namespaced=True),
    "SecretProviderClass": ResourceType(
        "secrets-store.csi.x-k8s.io/v1", "secretproviderclasses", namespaced=True
    ),
    "Tenant": ResourceType("agentplane.io/v1alpha1", "tenants", namespaced=False),
    "Agent": ResourceType("agentplane.io/v1alpha1", "agents", namespaced=True),
    "Tool": ResourceType("agentplane.io/v1alpha1", "tools", namespaced=True),
    "Prompt": ResourceType("agentplane.io/v1alpha1", "prompts", namespaced=True),
}


class KubeError(Exception):
    """The API server refused a request; `status` is the HTTP status."""

    def __init__(self, status: int, method: str, path: str, message: str) -> None:
        super().__init__(f"{method} {path}: {status} {message}")
        self.status = status
        self.message = message


_SUFFIXES = {
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
    "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
    "P": Decimal("1e15"), "E": Decimal("1e18"), "Ki": Decimal(2**10), "Mi": Decimal(2**20),
    "Gi": Decimal(2**30), "Ti": Decimal(2**40), "Pi": Decimal(2**50), "Ei": Decimal(2**60),
}  # fmt: skip


def _quantity(value: str) -> Decimal | None:
    """A Kubernetes quantity's value (`500m`, `1Gi`, `2`), or None if it is not one. A string that
    only looks like a huge one is none: a hex digest such as `4e51234567` (a config hash in a
    ConfigMap) is a number with an exponent past what `Decimal` holds."""
    for size in (2, 1, 0):
        suffix = value[-size:] if size else ""
        if suffix in _SUFFIXES:
            try:
                return Decimal(value[: len(value) - size]) * _SUFFIXES[suffix]
            except ArithmeticError:  # not a number (InvalidOperation), or too large (Overflow)
                continue
    return None


def _same_scalar(want: object, have: object) -> bool:
    if want == have:
        return True
    if isinstance(want, str) and isinstance(have, str):
        # The server canonicalises quantities: `1000m` comes back as `1`, `1024Mi` as `1Gi`.
        a, b = _quantity(want), _quantity(have)
        return a is not None and a == b
    return False


def holds(live: object, want: object) -> bool:
    """Whether `live` already has every field of `want` with the same value (lists element-wise)."""
    if isinstance(want, Mapping):
        # A null in an apply patch means "not set" (kopf.adopt writes `namespace: None` on cluster objects).
        return isinstance(live, Mapping) and all(
            live.get(k) is None if v is None else (k in live and holds(live[k], v)) for k, v in want.items()
        )
    if isinstance(want, list):
        return (
            isinstance(live, list)
            and len(live) == len(want)
            and all(holds(a, b) for a, b in zip(live, want, strict=True))
        )
    return _same_scalar(want, live)


def digest(manifest: Manifest) -> str:
    """A manifest's fingerprint: equal for equal manifests, whatever the order of their keys (kept in
    memory only, so orjson's encoding, not a stable one)."""
    encoded = orjson.dumps(manifest, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(encoded, digest_size=16).hexdigest()


WriteHook = Callable[[str, str], None]
"""Called with (kind, verb) before every write request: what the metrics count."""
ReadHook = Callable[[str], None]
"""Called with the kind before every read request."""


PRIORITY: ContextVar[int] = ContextVar("agentplane_request_priority", default=0)
"""The priority of the requests the current task sends (lower first): `Operator.reconciling` sets
it by what is reconciled and why (`state.request_priority`)."""


class PrioritySlots:
    """At most `size` holders at once; a waiter of lower priority number goes first, and waiters of
    one priority go in the order they came (a semaphore with an ordered queue)."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @asynccontextmanager
    async def slot(self, priority: int) -> AsyncIterator[None]:
        if self._free > 0 and not self._waiting:
            self._free -= 1
        else:
            granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiting, (priority, next(self._order), granted))
            try:
                await granted
            except asyncio.CancelledError:
                if granted.done() and not granted.cancelled():
                    self._release()  # granted, then cancelled before it ran: pass the slot on
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._waiting:
            _, _, granted = heapq.heappop(self._waiting)
            if not granted.done():  # a cancelled waiter stays in the heap until it comes up
                granted.set_result(None)
                return
        self._free += 1


class Kube:
    """The operator's own API client: reads, server-side apply, deletes and status patches.

    It speaks HTTP with aiohttp, as kopf does: over the event loop's own TLS transport a request
    costs a fraction of the CPU it did with httpx over anyio's TLS stream, and a thousand Agents'
    children are thousands of requests (the operator's CPU in `loadtests/bench_operator.py`).
    At most `concurrency` requests are sent at once, one per pooled connection; the others wait
    their turn here. The turn goes by `PRIORITY`, then by arrival: with thousands of Agent requests
    queued, a Prompt's reconcile (several requests one after the other, its dependents waiting for
    it) took minutes when every request joined one line."""

    def __init__(
        self,
        server: str,
        *,
        field_manager: str,
        on_write: WriteHook,
        on_read: ReadHook | None = None,
        concurrency: int,
        tls: ssl.SSLContext | bool = True,
        headers: Mapping[str, str] | None = None,
        token_file: Path | None = None,
        proxy: str | None = None,
        trust_env: bool = False,
        timeout: float = 30.0,
    ) -> None:
        """`server`: the API server's base URL (a path prefix, as some proxies have, is kept);
        `tls`: the TLS context (client certificate, CA), False to skip verifying the server;
        `token_file`: a bearer token read again for every request (projected service-account tokens
        rotate); `proxy`, `trust_env`: an HTTP proxy, or the environment's; `timeout`: the longest
        wait to connect, and for each read."""
        self._base = server.rstrip("/")
        self.field_manager = field_manager
        self._on_write = on_write
        self._on_read = on_read
        self._slots = PrioritySlots(concurrency)
        self._concurrency = concurrency
        self._tls = tls
        self._headers = dict(headers or {})
        self._token_file = token_file
        self._proxy = proxy
        self._trust_env = trust_env
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def connect(
        cls,
        info: kopf.ConnectionInfo,
        *,
        field_manager: str,
        on_write: WriteHook,
        on_read: ReadHook | None = None,
        concurrency: int,
    ) -> Kube:
        """A client for the same server, with the same credentials, TLS and proxy as kopf's."""
        mounted = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
        # kopf's token, if it is the pod's service account's: read from its file at each request
        rotated = bool(info.token and mounted.exists() and mounted.read_text().strip() == info.token)
        token_file = mounted if rotated else None
        return cls(
            info.server,
            field_manager=field_manager,
            on_write=on_write,
            on_read=on_read,
            concurrency=concurrency,
            tls=info.as_ssl_context(),
            headers=None if token_file else info.as_http_headers(),
            token_file=token_file,
            proxy=info.proxy_url,
            trust_env=info.trust_env,
        )

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:  # made in the running loop, on the first request
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._concurrency, ssl=self._tls),
                headers=self._headers,
                timeout=self._timeout,
                proxy=self._proxy,
                trust_env=self._trust_env,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(
        self, method: str, path: str, *, kind: str, body: object = None, content: bytes | None = None,
        headers: Mapping[str, str] | None = None, params: Mapping[str, str] | None = None,
    ) -> Manifest | None:  # fmt: skip
        sent = dict(headers or {})
        if body is not None:
            content = orjson.dumps(body)
            sent.setdefault("Content-Type", "application/json")
        if self._token_file is not None:
            sent["Authorization"] = f"Bearer {self._token_file.read_text().strip()}"
        async with self._slots.slot(PRIORITY.get()):
            # counted as sent, not as queued: the count over time is the requests the server got
            if method != "GET":
                self._on_write(kind, method)
            elif self._on_read is not None:
                self._on_read(kind)
            async with self._http().request(
                method, self._base + path, data=content, headers=sent, params=params
            ) as response:
                status, data = response.status, await response.read()
        if status == 404:
            return None
        if status >= 400:
            text = data.decode(errors="replace")
            try:
                message = str(orjson.loads(data).get("message", text))
            except (orjson.JSONDecodeError, AttributeError):  # not JSON, or not an object
                message = text
            raise KubeError(status, method, path, message)
        result: Manifest = orjson.loads(data)
        return result

    async def get(self, kind: str, name: str, namespace: str | None = None) -> Manifest | None:
        return await self._request("GET", RESOURCES[kind].path(name, namespace), kind=kind)

    async def list(
        self, kind: str, namespace: str | None = None, *, labels: Mapping[str, str] | None = None
    ) -> list[Manifest]:
        params = {"labelSelector": ",".join(f"{k}={v}" for k, v in labels.items())} if labels else None
        found = await self._request(
            "GET", RESOURCES[kind].path(namespace=namespace), kind=kind, params=params
        )
        return list(found["items"]) if found else []

    async def apply(self, manifest: Manifest, *, read: bool = True) -> tuple[Manifest, bool]:
        """Server-side apply `manifest` unless the live object already holds it; (live, written).
        `read=False`: apply without reading it first (a child of a new object, which cannot exist yet:
        the read would only say so)."""
        kind = manifest["kind"]
        meta = manifest["metadata"]
        path = RESOURCES[kind].path(meta["name"], meta.get("namespace"))
        live = await self._request("GET", path, kind=kind) if read else None
        if live is not None and holds(live, manifest):
            return live, False
        applied = await self._request(
            "PATCH", path, kind=kind, content=orjson.dumps(manifest),
            headers={"Content-Type": "application/apply-patch+yaml"},
            params={"fieldManager": self.field_manager, "force": "true"},
        )  # fmt: skip
        assert applied is not None
        return applied, True

    async def delete(self, kind: str, name: str, namespace: str | None = None) -> bool:
        """Delete an object (its dependents go by garbage collection); whether it existed."""
        path = RESOURCES[kind].path(name, namespace)
        return (
            await self._request("DELETE", path, kind=kind, body={"propagationPolicy": "Background"})
            is not None
        )

    async def patch_status(
        self,
        kind: str,
        name: str,
        namespace: str | None,
        status: Manifest,
        *,
        resource_version: str | None = None,
    ) -> Manifest | None:
        """JSON merge patch of `.status` (None: the object is gone). With `resource_version`, only if
        the object is still at that version: else the API server refuses it (`KubeError`, 409)."""
        path = RESOURCES[kind].path(name, namespace, "status")
        body: Manifest = {"status": status}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        return await self._request(
            "PATCH", path, kind=kind, body=body,
            headers={"Content-Type": "application/merge-patch+json"},
        )  # fmt: skip
