"""Knowledge: embed and store document chunks, and retrieve them — hybrid (dense + sparse keyword
vectors fused by reciprocal rank), filtered by tenant (defence in depth) and by the caller's access.

A chunk is visible to a caller when its `visibility` is `org`, or the caller is its `owner`, or
`shared_with` names the caller (subject or one of its groups).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import httpx
import litellm
from qdrant_client import models
from qdrant_client.http.exceptions import ApiException, ResponseHandlingException, UnexpectedResponse

from agentplane_platform.config import ResolvedKnowledge
from agentplane_platform.knowledge import DENSE_VECTOR, SPARSE_VECTOR, VectorStore, qdrant_unreachable
from agentplane_runtime.auth import Principal
from agentplane_runtime.core.errors import ApiError
from agentplane_runtime.documents import Chunk

log = logging.getLogger("agentplane.runtime.retrieval")

Visibility = Literal["org", "private", "shared"]

_WORD = re.compile(r"\w+", re.UNICODE)
_STOP = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "for",
        "from",
        "has",
        "have",
        "how",
        "i",
        "if",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "that",
        "the",
        "this",
        "to",
        "was",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "you",
        "your",
    ]
)
_SPARSE_K = 1.2


def sparse_vector(text: str) -> models.SparseVector:
    """Keyword weights without a model: hashed lower-case words, saturated term frequency
    (Qdrant applies the IDF on its side)."""
    counts = Counter(w for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) < 64)
    weights: dict[int, float] = {}
    for word, tf in counts.items():
        index = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "little") & 0x7FFFFFFF
        weights[index] = weights.get(index, 0.0) + tf * (_SPARSE_K + 1) / (tf + _SPARSE_K)
    indices = sorted(weights)
    return models.SparseVector(indices=indices, values=[weights[i] for i in indices])


class EmbeddingMeter(Protocol):
    """Meters the provider calls of one embedding (a query, a document's chunks) for whom it is made."""

    async def admit(self, model: str, texts: list[str]) -> None:
        """Before a provider call: raise an `ApiError` to refuse it (no price, no quota); nothing is sent."""
        ...

    async def done(self, model: str, texts: list[str], tokens: int | None, seconds: float) -> None:
        """After a provider call that answered: the tokens it counted (None when it said none)."""
        ...

    async def failed(self, model: str, texts: list[str]) -> None:
        """After a provider call that failed."""
        ...


class Embedder(Protocol):
    """Dense embeddings for a knowledge base's model; None when there is none (sparse only). The
    provider calls are reported to `meter`; local models are not provider calls."""

    async def embed(
        self, model: str, dimensions: int, texts: list[str], meter: EmbeddingMeter | None = None
    ) -> list[list[float]] | None: ...


class LiteLLMEmbedder:
    """Embeddings from the knowledge base's provider model through litellm."""

    def __init__(self, credentials: Any, timeout: float = 30.0) -> None:
        self.credentials = credentials
        self.timeout = timeout

    async def embed(
        self, model: str, dimensions: int, texts: list[str], meter: EmbeddingMeter | None = None
    ) -> list[list[float]] | None:
        kwargs: dict[str, Any] = {
            **self.credentials(model),
            "model": model,
            "input": texts,
            "timeout": self.timeout,
            # litellm caches one SDK client per provider endpoint and key, made by whichever call
            # comes first: an embedding call with the SDK's default of 2 retries would give every
            # later chat call to that endpoint 2 hidden retries inside each of the runtime's own
            # attempts (3 x 3 provider calls for one failing request). Both say 0.
            "max_retries": 0,
        }
        if "text-embedding-3" in model:
            kwargs["dimensions"] = dimensions
        vectors: list[list[float]] = []
        for start in range(0, len(texts), 256):
            batch = kwargs["input"] = texts[start : start + 256]
            if meter is not None:
                await meter.admit(model, batch)
            started = time.perf_counter()
            try:
                response = await litellm.aembedding(**kwargs)
            except BaseException:
                if meter is not None:
                    await meter.failed(model, batch)
                raise
            if meter is not None:
                tokens = getattr(getattr(response, "usage", None), "prompt_tokens", None)
                await meter.done(model, batch, tokens, time.perf_counter() - started)
            for item in response.data:
                vector = item["embedding"] if isinstance(item, dict) else item.embedding
                vectors.append([float(v) for v in vector])
        if any(len(v) != dimensions for v in vectors):
            raise ValueError(f"{model} returned vectors of another size than {dimensions}")
        return vectors


class RetrievalUnavailable(Exception):
    """Qdrant did not answer (a search: after one retry)."""


@contextlib.contextmanager
def _answered() -> Iterator[None]:
    """Qdrant not answering raised as `RetrievalUnavailable`; a refusal or a bug as it is."""
    try:
        yield
    except (ApiException, httpx.HTTPError, OSError, TimeoutError) as exc:
        if qdrant_unreachable(exc):
            raise RetrievalUnavailable(f"{type(exc).__name__}: {exc}") from exc
        raise


@dataclass(frozen=True, slots=True)
class Hit:
    text: str
    score: float
    doc_id: str
    source: str
    chunk: int
    knowledge_base: str


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    doc_id: str
    source: str
    owner: str
    visibility: str
    shared_with: list[str]
    created_at: str
    chunks: int

    @classmethod
    def of(cls, payload: dict[str, Any]) -> DocumentInfo:
        """The document described by the payload of one of its chunks."""
        p = payload
        return cls(
            str(p.get("doc_id")),
            str(p.get("source")),
            str(p.get("owner")),
            str(p.get("visibility")),
            list(p.get("shared_with") or []),
            str(p.get("created_at")),
            int(p.get("chunks") or 0),
        )


_PROVIDER_ERRORS = (*litellm.exceptions.LITELLM_EXCEPTION_TYPES, httpx.HTTPError, OSError, TimeoutError)
_QDRANT_ERRORS = (UnexpectedResponse, ResponseHandlingException, OSError, ConnectionError, TimeoutError)


def access_filter(
    tenant: str, principal: Principal, extra: list[models.Condition] | None = None
) -> models.Filter:
    """Points of `tenant` the caller may read."""
    must: list[models.Condition] = [
        models.FieldCondition(key="tenant", match=models.MatchValue(value=tenant))
    ]
    must += extra or []
    if principal.is_admin(tenant):
        return models.Filter(must=must)
    should: list[models.Condition] = [
        models.FieldCondition(key="visibility", match=models.MatchValue(value="org")),
        models.FieldCondition(key="owner", match=models.MatchValue(value=principal.subject)),
        models.FieldCondition(key="shared_with", match=models.MatchAny(any=principal.audiences())),
    ]
    return models.Filter(must=must, should=should)


class KnowledgeService:
    """Upload, list, delete and query a tenant's knowledge bases in Qdrant."""

    def __init__(self, store: VectorStore, embedder: Embedder, *, query_timeout: float = 5.0) -> None:
        self.store = store
        self.embedder = embedder
        self.query_timeout = query_timeout

    async def _dense_or_none(
        self, kb: ResolvedKnowledge, texts: list[str], meter: EmbeddingMeter | None = None
    ) -> list[list[float]] | None:
        try:
            return await self.embedder.embed(kb.embedding_model, kb.dimensions, texts, meter)
        except ApiError:
            raise  # the meter refused the call (no price, no quota): nothing was sent
        except Exception as exc:  # whatever the embedder's failure, keyword retrieval still works
            # a provider's failure is expected; anything else is a bug or a misfit model, logged with
            # its traceback
            expected = isinstance(exc, _PROVIDER_ERRORS)
            log.warning(
                "embedding for knowledge base %s with %s failed (%s: %s); keyword vectors only",
                kb.collection, kb.embedding_model, type(exc).__name__, exc,
                exc_info=None if expected else exc,
            )  # fmt: skip
            return None

    async def add_document(
        self,
        tenant: str,
        kb: ResolvedKnowledge,
        chunks: list[Chunk],
        *,
        source: str,
        owner: str,
        visibility: Visibility,
        shared_with: list[str],
        doc_id: str | None = None,
        extra: Mapping[str, Any] | None = None,
        meter: EmbeddingMeter | None = None,
    ) -> DocumentInfo:
        """Store a document's chunks (replacing an earlier version of `doc_id`); `extra` payload
        fields go on every chunk; `meter` meters its embedding. Raises `RetrievalUnavailable` when
        Qdrant does not answer."""
        doc_id = doc_id or uuid.uuid4().hex
        created_at = datetime.now(UTC).isoformat()
        dense = await self._dense_or_none(kb, [c.text for c in chunks], meter) if chunks else None
        points = []
        for i, chunk in enumerate(chunks):
            vector: dict[str, Any] = {SPARSE_VECTOR: sparse_vector(chunk.text)}
            if dense is not None:
                vector[DENSE_VECTOR] = dense[i]
            points.append(
                models.PointStruct(
                    id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tenant}/{kb.name}/{doc_id}/{chunk.index}")),
                    vector=vector,
                    payload={
                        "tenant": tenant,
                        "doc_id": doc_id,
                        "source": source,
                        "owner": owner,
                        "visibility": visibility,
                        "shared_with": shared_with,
                        "created_at": created_at,
                        "chunk": chunk.index,
                        "chunks": len(chunks),
                        "section": chunk.section,
                        "text": chunk.text,
                        **(extra or {}),
                    },
                )
            )
        with _answered():
            # replace a previous version of the same document
            await self.store.client.delete(
                kb.collection, points_selector=self._doc_filter(tenant, doc_id), wait=True
            )
            for start in range(0, len(points), 128):
                await self.store.client.upsert(kb.collection, points[start : start + 128], wait=True)
        return DocumentInfo(doc_id, source, owner, visibility, shared_with, created_at, len(chunks))

    @staticmethod
    def _doc_filter(tenant: str, doc_id: str) -> models.Filter:
        return models.Filter(
            must=[
                models.FieldCondition(key="tenant", match=models.MatchValue(value=tenant)),
                models.FieldCondition(key="doc_id", match=models.MatchValue(value=doc_id)),
            ]
        )

    async def list_documents(
        self, tenant: str, kb: ResolvedKnowledge, principal: Principal
    ) -> list[DocumentInfo]:
        first = models.FieldCondition(key="chunk", match=models.MatchValue(value=0))
        documents = []
        offset: Any = None
        while True:
            with _answered():
                records, offset = await self.store.client.scroll(
                    kb.collection,
                    scroll_filter=access_filter(tenant, principal, [first]),
                    limit=256,
                    offset=offset,
                    with_payload=True,
                )
            documents += [DocumentInfo.of(record.payload or {}) for record in records]
            if offset is None:
                break
        documents.sort(key=lambda d: d.created_at)
        return documents

    async def get_document(
        self, tenant: str, kb: ResolvedKnowledge, principal: Principal, doc_id: str
    ) -> DocumentInfo | None:
        with _answered():
            records, _ = await self.store.client.scroll(
                kb.collection,
                scroll_filter=access_filter(
                    tenant,
                    principal,
                    [models.FieldCondition(key="doc_id", match=models.MatchValue(value=doc_id))],
                ),
                limit=1,
                with_payload=True,
            )
        if not records:
            return None
        return DocumentInfo.of({**(records[0].payload or {}), "doc_id": doc_id})

    async def delete_document(self, tenant: str, kb: ResolvedKnowledge, doc_id: str) -> None:
        with _answered():
            await self.store.client.delete(
                kb.collection, points_selector=self._doc_filter(tenant, doc_id), wait=True
            )

    async def search(
        self,
        tenant: str,
        bases: list[ResolvedKnowledge],
        principal: Principal,
        query: str,
        top_k: int | None = None,
        meter: EmbeddingMeter | None = None,
    ) -> list[Hit]:
        """The best chunks over `bases`, or raises `RetrievalUnavailable` (after one retry); `meter`
        meters the query's embedding."""
        if not bases or not query.strip():
            return []
        for attempt in range(2):
            try:
                return await asyncio.wait_for(
                    self._search(tenant, bases, principal, query, top_k, meter), self.query_timeout
                )
            except (TimeoutError, *_QDRANT_ERRORS) as exc:
                if attempt == 1:
                    raise RetrievalUnavailable(str(type(exc).__name__)) from exc
                await asyncio.sleep(0.05)
        raise AssertionError("unreachable")

    async def _search(
        self,
        tenant: str,
        bases: list[ResolvedKnowledge],
        principal: Principal,
        query: str,
        top_k: int | None,
        meter: EmbeddingMeter | None,
    ) -> list[Hit]:
        sparse = sparse_vector(query)
        hits: list[Hit] = []
        for kb in bases:
            k = top_k or kb.top_k
            flt = access_filter(tenant, principal)
            dense = await self._dense_or_none(kb, [query], meter)
            prefetch = []
            if dense is not None:
                prefetch.append(
                    models.Prefetch(
                        query=dense[0],
                        using=DENSE_VECTOR,
                        limit=k * 4,
                        filter=flt,
                        score_threshold=kb.min_score or None,
                    )
                )
            if sparse.indices:
                prefetch.append(models.Prefetch(query=sparse, using=SPARSE_VECTOR, limit=k * 4, filter=flt))
            if not prefetch:
                continue
            result = await self.store.client.query_points(
                kb.collection,
                prefetch=prefetch,
                query=models.FusionQuery(fusion=models.Fusion.RRF),
                limit=k,
                with_payload=True,
            )
            for point in result.points:
                p = point.payload or {}
                if p.get("tenant") != tenant:  # defence in depth; the filter already says so
                    continue
                hits.append(
                    Hit(
                        text=str(p.get("text", "")),
                        score=float(point.score),
                        doc_id=str(p.get("doc_id")),
                        source=str(p.get("source")),
                        chunk=int(p.get("chunk") or 0),
                        knowledge_base=kb.name,
                    )
                )
        hits.sort(key=lambda h: h.score, reverse=True)
        return hits


def estimate_tokens(text: str) -> int:
    """A rough count for fitting context in the input budget (about 3 characters a token)."""
    return math.ceil(len(text) / 3)
