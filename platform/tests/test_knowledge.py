"""Collections are created once, never reshaped: qdrant-client's local mode, the same API as the server."""

from __future__ import annotations

import asyncio
from pathlib import Path

from qdrant_client import models

from agentplane_platform.api.v1alpha1 import KnowledgeBase
from agentplane_platform.knowledge import (
    DENSE_VECTOR,
    SPARSE_VECTOR,
    CollectionSpec,
    CollectionState,
    VectorStore,
    delete_collection,
    ensure_collection,
)

KB = KnowledgeBase(name="help-center", embedding_model="local/all-MiniLM-L6-v2", dimensions=384)


async def _ensure_twice_then_reshape(path: Path) -> list[CollectionState | int | bool]:
    store = VectorStore.connect(path=path)
    spec = CollectionSpec.of("acme", KB)
    try:
        first = await ensure_collection(store, spec)
        await store.client.upsert(
            spec.name,
            [
                models.PointStruct(
                    id=1,
                    vector={
                        DENSE_VECTOR: [0.1] * 384,
                        SPARSE_VECTOR: models.SparseVector(indices=[3, 7], values=[1.0, 2.0]),
                    },
                    payload={"tenant": "acme", "doc_id": "d1"},
                )
            ],
        )
        second = await ensure_collection(store, spec)
        reshaped = await ensure_collection(
            store, CollectionSpec.of("acme", KB.model_copy(update={"dimensions": 1536}))
        )
        count = (await store.client.count(spec.name)).count
        deleted = await delete_collection(store, spec.name)
        deleted_again = await delete_collection(store, spec.name)
        return [first, second, reshaped, count, deleted, deleted_again]
    finally:
        await store.close()


def test_a_collection_is_created_once_and_never_reshaped(tmp_path: Path) -> None:
    first, second, reshaped, count, deleted, deleted_again = asyncio.run(_ensure_twice_then_reshape(tmp_path))
    assert first == CollectionState(
        "acme--help-center", ready=True, created=True, message="collection 'acme--help-center' created"
    )
    assert isinstance(second, CollectionState)
    assert (second.ready, second.created) == (True, False)
    assert isinstance(reshaped, CollectionState)
    assert not reshaped.ready
    assert "384 dimensions/Cosine" in reshaped.message
    assert "1536/Cosine" in reshaped.message
    assert count == 1  # the point written before survived both ensure calls
    assert (deleted, deleted_again) == (True, False)
