"""Git-kept knowledge into the tenants' knowledge bases: one implementation for `agentplane up` and
for the cluster (the knowledge-sync Job the operator starts on each GitOps revision).

`specs/tenants/<tenant>/knowledge/<kb>/**` (markdown, text, HTML, PDF) is ingested incrementally:
each document's chunks carry `origin: git` and a digest of its content and embedding mode, so a run
re-embeds only what changed, deletes what is gone from Git, and never touches documents uploaded
through the API. The state lives in the collections themselves: any runner, anywhere, agrees on
what is there.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
from qdrant_client.http import models

from agentplane_platform.api.v1alpha1 import Tenant
from agentplane_platform.config import ResolvedKnowledge, collection_name
from agentplane_platform.contract import RUNTIME_SECRET
from agentplane_platform.knowledge import CollectionSpec, VectorStore, ensure_collection
from agentplane_platform.specs import validate_paths
from agentplane_runtime.core.config import Settings
from agentplane_runtime.core.telemetry import create_telemetry
from agentplane_runtime.documents import DocumentError, chunk_text, detect_kind, extract_text
from agentplane_runtime.llm import LLMClient
from agentplane_runtime.retrieval import KnowledgeService
from agentplane_runtime.services import default_embedder
from agentplane_runtime.startup import StartupError, report

ORIGIN = "git"
OWNER = "gitops"
"""The owner of Git-kept documents (what document listings show)."""
KINDS = (".md", ".markdown", ".txt", ".html", ".htm", ".pdf")
MAX_ARCHIVE_BYTES = 256 * 1024 * 1024
"""The largest artifact downloaded (a Flux artifact of a spec repository is far smaller)."""


@dataclass
class SyncResult:
    """What one run did, for one tenant or all of them."""

    ingested: int = 0
    unchanged: int = 0
    removed: int = 0
    failed: list[str] = field(default_factory=list)

    def add(self, other: SyncResult) -> None:
        self.ingested += other.ingested
        self.unchanged += other.unchanged
        self.removed += other.removed
        self.failed += other.failed

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def knowledge_files(tenants_dir: Path, tenant: str, kb: str) -> list[Path]:
    folder = tenants_dir / tenant / "knowledge" / kb
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in KINDS)


def doc_id(tenant: str, relative: str) -> str:
    """A Git-kept document's id: stable for its path in the tenant's tree."""
    return hashlib.sha256(f"{tenant}/{relative}".encode()).hexdigest()[:32]


def resolved(tenant: str, base: Any) -> ResolvedKnowledge:
    return ResolvedKnowledge(
        name=base.name,
        collection=collection_name(tenant, base.name),
        embedding_model=base.embedding_model,
        dimensions=base.dimensions,
        distance=base.distance,
        top_k=5,
        min_score=0.0,
    )


async def _existing(vectors: VectorStore, kb: ResolvedKnowledge, tenant: str) -> dict[str, str]:
    """doc_id -> digest of the Git-kept documents already in the knowledge base."""
    where = models.Filter(
        must=[
            models.FieldCondition(key="tenant", match=models.MatchValue(value=tenant)),
            models.FieldCondition(key="origin", match=models.MatchValue(value=ORIGIN)),
            models.FieldCondition(key="chunk", match=models.MatchValue(value=0)),
        ]
    )
    found: dict[str, str] = {}
    offset: Any = None
    while True:
        records, offset = await vectors.client.scroll(
            kb.collection, scroll_filter=where, limit=256, offset=offset, with_payload=True
        )
        for record in records:
            payload = record.payload or {}
            found[str(payload.get("doc_id"))] = str(payload.get("digest", ""))
        if offset is None:
            return found


async def sync_knowledge(
    knowledge: KnowledgeService,
    tenants_dir: Path,
    tenants: Mapping[str, Tenant],
    *,
    mode: Callable[[str], str],
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, SyncResult]:
    """Bring every tenant's knowledge bases in line with `tenants_dir/<tenant>/knowledge/`.

    `mode(model)` names how an embedding model is embedded here (`dense` or `keyword`); it is part
    of each document's digest, so a runner that can embed densely re-embeds keyword-only documents.
    """
    results: dict[str, SyncResult] = {}
    for tenant_name, tenant in sorted(tenants.items()):
        result = results.setdefault(tenant_name, SyncResult())
        for base in tenant.spec.knowledge_bases:
            kb = resolved(tenant_name, base)
            files = knowledge_files(tenants_dir, tenant_name, base.name)
            await ensure_collection(knowledge.store, CollectionSpec.of(tenant_name, base))
            existing = await _existing(knowledge.store, kb, tenant_name)
            seen: set[str] = set()
            for n, file in enumerate(files, 1):
                relative = file.relative_to(tenants_dir / tenant_name).as_posix()
                key = doc_id(tenant_name, relative)
                seen.add(key)
                data = file.read_bytes()
                digest = f"{hashlib.sha256(data).hexdigest()} {mode(kb.embedding_model)}"
                if existing.get(key) == digest:
                    result.unchanged += 1
                    continue
                progress(_bar(n, len(files), f"{tenant_name}/{relative}"))
                try:
                    text = extract_text(data, detect_kind(file.name, None))
                except DocumentError as exc:
                    result.failed.append(f"{tenant_name}/{relative}: {exc}")
                    continue
                await knowledge.add_document(
                    tenant_name, kb, chunk_text(text), source=relative, owner=OWNER, visibility="org",
                    shared_with=[], doc_id=key, extra={"origin": ORIGIN, "digest": digest},
                )  # fmt: skip
                result.ingested += 1
            for gone in sorted(set(existing) - seen):
                await knowledge.delete_document(tenant_name, kb, gone)
                result.removed += 1
    return results


def _bar(n: int, total: int, what: str, width: int = 24) -> str:
    done = width * n // max(total, 1)
    return f"  knowledge [{'#' * done}{'.' * (width - done)}] {n}/{total} {what}"


# -- where a run's files come from: a directory, a tarball, or a Flux artifact URL ---------------


class SourceError(Exception):
    """The source cannot be read; the message says what and why."""


def _extract(archive: bytes, into: Path) -> None:
    """Unpack a (gzipped) tarball, refusing links and paths that leave `into`."""
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as tar:
            members = [m for m in tar.getmembers() if m.isfile() or m.isdir()]
            for member in members:
                path = PurePosixPath(member.name)
                if path.is_absolute() or ".." in path.parts:
                    raise SourceError(f"the archive holds an unsafe path: {member.name}")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(into, members=members, filter="data")
            else:  # Python before 3.11.4 (Debian 12's 3.11.2): the members are checked above
                tar.extractall(into, members=members)
    except tarfile.TarError as exc:
        raise SourceError(f"not a tar archive: {exc}") from None


@contextmanager
def checkout(source: str, *, timeout: float = 60.0) -> Iterator[Path]:
    """The source as a directory: itself, an unpacked tarball, or an unpacked download."""
    local = Path(source)
    if "://" not in source and local.is_dir():
        yield local
        return
    with tempfile.TemporaryDirectory(prefix="agentplane-knowledge-") as tmp:
        if "://" in source:
            try:
                with httpx.stream("GET", source, timeout=timeout, follow_redirects=False) as response:
                    response.raise_for_status()
                    chunks, size = [], 0
                    for chunk in response.iter_bytes():
                        size += len(chunk)
                        if size > MAX_ARCHIVE_BYTES:
                            raise SourceError(f"{source}: larger than {MAX_ARCHIVE_BYTES} bytes")
                        chunks.append(chunk)
            except httpx.HTTPError as exc:
                raise SourceError(f"{source}: {type(exc).__name__}: {exc}") from None
            archive = b"".join(chunks)
        else:
            try:
                archive = local.read_bytes()
            except OSError as exc:
                raise SourceError(f"{source}: {exc.strerror}") from None
        _extract(archive, Path(tmp))
        yield Path(tmp)


# -- the runner: `agentplane-runtime knowledge-sync` (the operator's Job, or by hand) -------------


async def run(
    settings: Settings, source: str, specs_dir: str, *, only: list[str] | None = None
) -> dict[str, Any]:
    """Sync the knowledge of every valid Tenant under `<source>/<specs_dir>/tenants/` (or of `only`)
    into the Qdrant of `settings`; the summary (per tenant) the Job reports."""
    if settings.stores == "required" and not settings.qdrant_url and settings.qdrant_path is None:
        raise StartupError(
            f"no Qdrant to sync into: AGENTPLANE_QDRANT_URL is unset (the Secret {RUNTIME_SECRET!r} provides it)"
        )
    telemetry = create_telemetry(settings)
    vectors = VectorStore.connect(
        url=settings.qdrant_url,
        path=settings.qdrant_path,
        api_key=settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None,
    )
    llm = LLMClient(settings, telemetry.metrics, telemetry.tracer)
    try:
        embedder = default_embedder(settings, llm)
        knowledge = KnowledgeService(vectors, embedder)
        with checkout(source) as root:
            tenants_dir = root / specs_dir / "tenants"
            if not tenants_dir.is_dir():
                raise SourceError(f"{source}: no {specs_dir}/tenants/ in it")
            validation = validate_paths([tenants_dir])
            tenants = {
                name: loaded.resource
                for name, loaded in validation.specs.tenants.items()
                if only is None or name in only
            }
            results = await sync_knowledge(knowledge, tenants_dir, tenants, mode=embedder.mode)
        return {
            "source": source,
            "tenants": {name: result.as_json() for name, result in results.items()},
            "problems": [problem.format() for problem in validation.errors],
        }
    finally:
        await llm.close()
        await vectors.close()
        telemetry.shutdown()


def main(argv: list[str]) -> int:
    """`agentplane-runtime knowledge-sync --source SRC [--specs-dir specs] [--tenant T ...]`."""
    import argparse
    import asyncio
    import json
    import logging

    from agentplane_runtime.core.logging import configure_logging

    parser = argparse.ArgumentParser(
        prog="agentplane-runtime knowledge-sync",
        description="Ingest the Git-kept knowledge of a spec tree into the tenants' knowledge bases.",
    )
    parser.add_argument(
        "--source", required=True, help="a directory, a .tar.gz, or an http(s) URL of one (a Flux artifact)"
    )
    parser.add_argument(
        "--specs-dir", default="specs", help="where tenants/ is inside the source (default: specs)"
    )
    parser.add_argument(
        "--tenant", action="append", help="only this tenant (repeatable; default: every tenant)"
    )
    args = parser.parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level, json=settings.log_json)
    log = logging.getLogger("agentplane.knowledge")
    try:
        summary = asyncio.run(run(settings, args.source, args.specs_dir, only=args.tenant))
    except (StartupError, SourceError) as error:
        report(settings, StartupError(str(error)))
        return 1
    text = json.dumps(summary, sort_keys=True)
    print(text)
    failed = sum(len(t["failed"]) for t in summary["tenants"].values())
    log.info("knowledge synced", extra={"summary": summary})
    if settings.termination_log.exists():  # the operator reads the summary from the pod's status
        settings.termination_log.write_text(text[:4000])
    return 0 if not failed else 2
