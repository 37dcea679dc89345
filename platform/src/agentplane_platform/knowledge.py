"""Knowledge-base collections in Qdrant: their layout, shared by everything that touches them.

One collection per (tenant, knowledge base), named by `collection_name`. Each point has a named
dense vector `dense` (the knowledge base's dimensions and distance) and a named sparse vector
`sparse` (keyword weights, IDF applied by Qdrant), and a payload with the fields in
`PAYLOAD_INDEXES` (indexed on a Qdrant server; local mode has no payload indexes).

`ensure_collection` creates a missing collection and never recreates, empties or reshapes one
that exists: an incompatible one is reported, not changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from agentplane_platform.api.v1alpha1 import KnowledgeBase
from agentplane_platform.config import collection_name

DENSE_VECTOR = "dense"
SPARSE_VECTOR = "sparse"

PAYLOAD_INDEXES: dict[str, models.PayloadSchemaType] = {
    "tenant": models.PayloadSchemaType.KEYWORD,
    "doc_id": models.PayloadSchemaType.KEYWORD,
    "source": models.PayloadSchemaType.KEYWORD,
    "owner": models.PayloadSchemaType.KEYWORD,
    "visibility": models.PayloadSchemaType.KEYWORD,
    "shared_with": models.PayloadSchemaType.KEYWORD,
    "created_at": models.PayloadSchemaType.DATETIME,
}
"""Payload fields the runtime filters on (access control, tenant defence in depth, deletion by doc)."""

_DISTANCES = {
    "Cosine": models.Distance.COSINE,
    "Dot": models.Distance.DOT,
    "Euclid": models.Distance.EUCLID,
    "Manhattan": models.Distance.MANHATTAN,
}


@dataclass(frozen=True, slots=True)
class CollectionSpec:
    """The desired shape of one knowledge base's collection."""

    name: str
    dimensions: int
    distance: models.Distance

    @classmethod
    def of(cls, tenant: str, knowledge_base: KnowledgeBase) -> CollectionSpec:
        return cls(
            name=collection_name(tenant, knowledge_base.name),
            dimensions=knowledge_base.dimensions,
            distance=_DISTANCES[knowledge_base.distance],
        )

    def incompatibility(self, dimensions: int, distance: models.Distance) -> str | None:
        """Why a collection of this name whose dense vectors have `dimensions`/`distance` cannot be
        used for this spec (None: it can). Such a collection is never reshaped: the operator leaves it
        unchanged with this message, and `agentplane plan` refuses the change before merge with it."""
        if dimensions == self.dimensions and distance == self.distance:
            return None
        return (
            f"collection {self.name!r} exists with {dimensions} dimensions/{distance.value}, "
            f"the knowledge base declares {self.dimensions}/{self.distance.value}; left unchanged "
            "(its points would be lost): restore the old values or use a new knowledge base name"
        )


@dataclass(frozen=True, slots=True)
class CollectionState:
    """What `ensure_collection` found or did."""

    name: str
    ready: bool
    created: bool
    message: str


@dataclass(frozen=True, slots=True)
class VectorStore:
    """A Qdrant client and whether it is the embedded local mode (which has no payload indexes)."""

    client: AsyncQdrantClient
    local: bool

    @classmethod
    def connect(
        cls, *, url: str | None = None, path: Path | None = None, api_key: str | None = None
    ) -> VectorStore:
        """A Qdrant server at `url`, else local mode stored under `path`, else local mode in memory."""
        if url:
            return cls(AsyncQdrantClient(url=url, api_key=api_key), local=False)
        if path is not None:
            path.mkdir(parents=True, exist_ok=True)
            return cls(AsyncQdrantClient(path=str(path)), local=True)
        return cls(AsyncQdrantClient(location=":memory:"), local=True)

    async def close(self) -> None:
        await self.client.close()


def _incompatibility(spec: CollectionSpec, info: models.CollectionInfo) -> str | None:
    vectors = info.config.params.vectors
    dense = vectors.get(DENSE_VECTOR) if isinstance(vectors, dict) else None
    if dense is None:
        return f"collection {spec.name!r} exists without the dense vector {DENSE_VECTOR!r}"
    reshaped = spec.incompatibility(dense.size, dense.distance)
    if reshaped is not None:
        return reshaped
    sparse = info.config.params.sparse_vectors or {}
    if SPARSE_VECTOR not in sparse:
        return f"collection {spec.name!r} exists without the sparse vector {SPARSE_VECTOR!r}"
    return None


async def ensure_collection(store: VectorStore, spec: CollectionSpec) -> CollectionState:
    """Create the collection if missing; report an incompatible existing one; add missing indexes."""
    client = store.client
    created = False
    if not await client.collection_exists(spec.name):
        try:
            await client.create_collection(
                spec.name,
                vectors_config={
                    DENSE_VECTOR: models.VectorParams(size=spec.dimensions, distance=spec.distance)
                },
                sparse_vectors_config={
                    SPARSE_VECTOR: models.SparseVectorParams(modifier=models.Modifier.IDF)
                },
            )
            created = True
        except (UnexpectedResponse, ValueError) as exc:
            # Another replica may have created it between the check and the create.
            if not await client.collection_exists(spec.name):
                raise
            del exc
    info = await client.get_collection(spec.name)
    problem = _incompatibility(spec, info)
    if problem is not None:
        return CollectionState(spec.name, ready=False, created=False, message=problem)
    if not store.local:
        for field, schema in PAYLOAD_INDEXES.items():
            if field not in info.payload_schema:
                await client.create_payload_index(spec.name, field, field_schema=schema, wait=True)
    verb = "created" if created else "exists"
    return CollectionState(spec.name, ready=True, created=created, message=f"collection {spec.name!r} {verb}")


def qdrant_unreachable(exc: BaseException) -> bool:
    """Whether a failed Qdrant call means Qdrant did not answer (down, unreachable, overloaded, timed
    out): worth retrying soon. False when it answered with a refusal (a 4xx: a bad collection config,
    a missing collection) or the client itself failed: retrying soon would fail the same way."""
    if isinstance(exc, ResponseHandlingException):  # the client wraps what the transport raised
        return qdrant_unreachable(exc.source)
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code is None or exc.status_code >= 500 or exc.status_code == 429
    return isinstance(exc, httpx.TransportError | OSError | TimeoutError)


async def delete_collection(store: VectorStore, name: str) -> bool:
    """Delete a collection; whether it existed."""
    if not await store.client.collection_exists(name):
        return False
    await store.client.delete_collection(name)
    return True
