"""`agentplane-runtime knowledge-sync`: what the operator's Job runs on each GitOps revision (and what
`agentplane up` runs at start) — incremental from the collections' own state, from a Flux-style
artifact URL, leaving documents uploaded through the API alone."""

from __future__ import annotations

import asyncio
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from qdrant_client.http import models

from agentplane_platform.config import collection_name
from agentplane_platform.knowledge import VectorStore

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def artifact_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A static file server on loopback, as Flux's source-controller serves artifacts."""
    root = tmp_path / "artifacts"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def pack(tree: Path, target: Path) -> None:
    """A tarball of `tree`'s contents, like a Flux GitRepository artifact of the repository."""
    with tarfile.open(target, "w:gz") as tar:
        for path in sorted(tree.rglob("*")):
            tar.add(path, arcname=path.relative_to(tree).as_posix(), recursive=False)


def sync(source: str, state: Path, *extra: str, **env: str | None) -> tuple[int, dict[str, Any], str]:
    """Run the sync as the Job does; an `env` value of None unsets that variable."""
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("AGENTPLANE_", "OPENAI_", "AZURE_"))
    }
    termination = state / "termination-log"
    termination.write_text("")
    settings: dict[str, str | None] = {
        "AGENTPLANE_STORES": "required",
        "AGENTPLANE_QDRANT_PATH": str(state / "qdrant"),
        "AGENTPLANE_TERMINATION_LOG": str(termination),
        "AGENTPLANE_LOCAL_EMBEDDINGS": "false",
        "AGENTPLANE_LOG_JSON": "false",
        **env,
    }
    environment.update({k: v for k, v in settings.items() if v is not None})
    result = subprocess.run(
        [str(Path(sys.executable).parent / "agentplane-runtime"), "knowledge-sync", "--source", source, *extra],
        env=environment, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    summary = json.loads(result.stdout) if result.returncode in (0, 2) and result.stdout.strip() else {}
    return result.returncode, summary, termination.read_text() or result.stderr


def git_documents(state: Path, tenant: str, kb: str) -> dict[str, str]:
    """source -> origin of the documents in a knowledge base (chunk 0 of each)."""

    async def read() -> dict[str, str]:
        store = VectorStore.connect(url=None, path=state / "qdrant", api_key=None)
        try:
            records, _ = await store.client.scroll(
                collection_name(tenant, kb),
                scroll_filter=models.Filter(
                    must=[models.FieldCondition(key="chunk", match=models.MatchValue(value=0))]
                ),
                limit=100,
                with_payload=True,
            )
            return {str(r.payload["source"]): str(r.payload.get("origin")) for r in records if r.payload}
        finally:
            await store.close()

    return asyncio.run(read())


def upload_by_api(state: Path, tenant: str, kb: str) -> None:
    """A document a user uploaded through the agent's API (no `origin: git`)."""

    async def write() -> None:
        store = VectorStore.connect(url=None, path=state / "qdrant", api_key=None)
        try:
            await store.client.upsert(
                collection_name(tenant, kb),
                [models.PointStruct(id=1, vector={}, payload={
                    "tenant": tenant, "doc_id": "uploaded", "source": "uploads/notes.md", "chunk": 0, "chunks": 1,
                    "owner": "alice", "visibility": "org", "text": "kept"})],
            )  # fmt: skip
        finally:
            await store.close()

    asyncio.run(write())


def test_a_flux_artifact_is_synced_incrementally(tmp_path: Path, artifact_server: tuple[str, Path]) -> None:
    base_url, served = artifact_server
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "specs" / "tenants", repo / "specs" / "tenants")
    state = tmp_path / "state"
    state.mkdir()
    pack(repo, served / "rev1.tar.gz")

    code, summary, _ = sync(f"{base_url}/rev1.tar.gz", state)
    assert code == 0, summary
    assert summary["tenants"]["acme"] == {"ingested": 5, "unchanged": 0, "removed": 0, "failed": []}
    assert summary["tenants"]["globex"] == {"ingested": 3, "unchanged": 0, "removed": 0, "failed": []}
    assert set(git_documents(state, "globex", "runbooks")) == {
        "knowledge/runbooks/certificate-expiry.md",
        "knowledge/runbooks/database-failover.md",
        "knowledge/runbooks/high-latency.md",
    }
    upload_by_api(state, "globex", "runbooks")

    # the next revision: one runbook edited, one deleted, nothing else touched
    runbooks = repo / "specs" / "tenants" / "globex" / "knowledge" / "runbooks"
    (runbooks / "certificate-expiry.md").write_text("# Certificate expiry\n\nRenew with the new tool.\n")
    (runbooks / "high-latency.md").unlink()
    pack(repo, served / "rev2.tar.gz")
    code, summary, termination = sync(f"{base_url}/rev2.tar.gz", state)
    assert code == 0
    assert summary["tenants"]["globex"] == {"ingested": 1, "unchanged": 1, "removed": 1, "failed": []}
    assert summary["tenants"]["acme"]["unchanged"] == 5
    assert json.loads(termination) == summary  # what the operator reads from the Job's pod
    assert git_documents(state, "globex", "runbooks") == {
        "knowledge/runbooks/certificate-expiry.md": "git",
        "knowledge/runbooks/database-failover.md": "git",
        "uploads/notes.md": "None",  # the API upload is not Git's to delete
    }
    # one tenant only, from a directory
    code, summary, _ = sync(str(repo), state, "--tenant", "acme")
    assert (code, list(summary["tenants"])) == (0, ["acme"])


def test_bad_sources_and_missing_stores_are_refused_with_the_reason(
    tmp_path: Path, artifact_server: tuple[str, Path]
) -> None:
    base_url, served = artifact_server
    state = tmp_path / "state"
    state.mkdir()
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w:gz") as tar:
        payload = b"owned"
        member = tarfile.TarInfo("../../escape.md")
        member.size = len(payload)
        tar.addfile(member, io.BytesIO(payload))
    (served / "evil.tar.gz").write_bytes(evil.getvalue())
    code, _, reason = sync(f"{base_url}/evil.tar.gz", state)
    assert code == 1
    assert "unsafe path: ../../escape.md" in reason
    assert not (tmp_path / "escape.md").exists()

    code, _, reason = sync(f"{base_url}/missing.tar.gz", state)
    assert code == 1
    assert "404" in reason

    code, _, reason = sync(str(REPO / "specs"), state, AGENTPLANE_QDRANT_PATH=None)
    assert code == 1
    assert "no Qdrant to sync into" in reason
