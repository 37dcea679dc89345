"""Knowledge bases: upload, list, delete, query; hybrid retrieval in chat; access control and
tenant isolation; an unreachable Qdrant gives a degraded answer, never a failed chat."""

from __future__ import annotations

import httpx
import openai
import pytest
from qdrant_client import models
from runtime_support import Served, free_port, make_config, parse_metrics, scrape, serve, tenant_name, total

from agentplane_platform.knowledge import SPARSE_VECTOR
from agentplane_runtime import Settings
from agentplane_runtime.auth import Principal
from agentplane_runtime.documents import chunk_text, extract_text
from agentplane_runtime.retrieval import sparse_vector
from support.fake_llm import FakeLLM

pytestmark = [pytest.mark.asyncio, pytest.mark.postgres, pytest.mark.redis]

GUIDE = """# Returns

Items can be returned within 30 days of delivery. Refunds go to the original payment method.

## Damaged items

Photograph the damage and open a ticket; a courier collects the parcel for free.

```python
def refund(order):
    return order.total  # never split this block
```

# Shipping

Standard shipping takes 3 to 5 business days; express takes one.
"""


def kb_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"ensure_collections": True})


async def upload(
    served: Served, key: str, text: str, name: str = "guide.md", **form: str | list[str]
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=served.base_url) as http:
        return await http.post(
            "/knowledge/docs/documents",
            files={"file": (name, text.encode(), "text/markdown")},
            data=form,
            headers={"Authorization": f"Bearer {key}"},
        )


async def query(served: Served, key: str, q: str) -> list[dict[str, object]]:
    async with httpx.AsyncClient(base_url=served.base_url) as http:
        response = await http.post(
            "/knowledge/docs/query", json={"query": q}, headers={"Authorization": f"Bearer {key}"}
        )
    assert response.status_code == 200, response.text
    hits: list[dict[str, object]] = response.json()["data"]
    return hits


async def test_upload_list_query_delete_and_chat_with_context(settings: Settings, fake_llm: FakeLLM) -> None:
    tenant = tenant_name()
    async with serve(kb_settings(settings), make_config(tenant, knowledge=["docs"])) as served:
        admin = await served.key(roles=["admin"], subject="dana")
        created = await upload(served, admin, GUIDE, visibility="org")
        assert created.status_code == 201, created.text
        doc = created.json()
        assert doc["chunks"] >= 2
        assert doc["owner"] == "dana"
        hits = await query(served, admin, "how long does express shipping take")
        assert hits
        assert "express takes one" in str(hits[0]["text"])
        assert hits[0]["source"] == "guide.md"
        async with httpx.AsyncClient(
            base_url=served.base_url, headers={"Authorization": f"Bearer {admin}"}
        ) as http:
            listed = (await http.get("/knowledge/docs/documents")).json()["data"]
            assert [d["id"] for d in listed] == [doc["id"]]
        # the chat gets the retrieved context in its system prompt and reports its sources
        client = openai.AsyncOpenAI(api_key=admin, base_url=served.base_url, max_retries=0)
        completion = await client.chat.completions.create(
            model="helper", messages=[{"role": "user", "content": "Can I return a damaged item?"}]
        )
        system = fake_llm.chat_requests()[-1].body["messages"][0]["content"]
        assert "Context from the knowledge base" in system
        assert "Photograph the damage" in system
        meta = (completion.model_extra or {})["agentplane"]["retrieval"]
        assert meta["status"] == "ok"
        assert meta["sources"][0]["source"] == "guide.md"
        async with httpx.AsyncClient(
            base_url=served.base_url, headers={"Authorization": f"Bearer {admin}"}
        ) as http:
            assert (await http.delete(f"/knowledge/docs/documents/{doc['id']}")).status_code == 204
            assert (await http.get("/knowledge/docs/documents")).json()["data"] == []
            assert (await http.delete(f"/knowledge/docs/documents/{doc['id']}")).status_code == 404
            assert (await http.get("/knowledge/nope/documents")).status_code == 404
        assert await query(served, admin, "express shipping") == []
        await client.close()


async def test_access_private_shared_and_org_documents(settings: Settings) -> None:
    tenant = tenant_name()
    async with serve(kb_settings(settings), make_config(tenant, knowledge=["docs"])) as served:
        alice = await served.key(subject="alice")
        bob = await served.key(subject="bob")
        carol = await served.key(subject="carol")
        assert (await upload(served, alice, "alice private zebra notes")).status_code == 201
        assert (
            await upload(served, alice, "alice shared zebra plans", visibility="shared", shared_with=["bob"])
        ).status_code == 201
        # publishing org-wide needs the admin role
        assert (await upload(served, alice, "zebra for everyone", visibility="org")).status_code == 403
        seen = {
            who: {str(h["text"]) for h in await query(served, key, "zebra")}
            for who, key in (("alice", alice), ("bob", bob), ("carol", carol))
        }
        assert seen["alice"] == {"alice private zebra notes", "alice shared zebra plans"}
        assert seen["bob"] == {"alice shared zebra plans"}
        assert seen["carol"] == set()
        async with httpx.AsyncClient(base_url=served.base_url) as http:
            docs = (
                await http.get("/knowledge/docs/documents", headers={"Authorization": f"Bearer {bob}"})
            ).json()["data"]
            assert len(docs) == 1
            # bob may read it, not delete it
            gone = await http.delete(
                f"/knowledge/docs/documents/{docs[0]['id']}", headers={"Authorization": f"Bearer {bob}"}
            )
            assert gone.status_code == 403


async def test_a_tenant_never_retrieves_another_tenants_chunks(settings: Settings) -> None:
    a, b = tenant_name(), tenant_name()
    async with serve(
        kb_settings(settings), make_config(a, knowledge=["docs"]), make_config(b, knowledge=["docs"])
    ) as served:
        key_a = await served.key(tenant=a, roles=["admin"])
        assert (
            await upload(served, key_a, "the launch code is swordfish", visibility="org")
        ).status_code == 201
        agent_b = served.runtime.agents.get(b, "helper")
        key_b = await served.key(tenant=b, roles=["admin"])
        # b's own agent endpoint, mounted for several agents as local mode does
        hits_b = await served.runtime.knowledge.search(
            b, list(agent_b.config.knowledge), principal_of(served, b), "launch code swordfish"
        )
        assert hits_b == []
        # defence in depth: even a chunk of tenant a that ends up in b's collection stays invisible to b
        await served.runtime.vectors.client.upsert(
            f"{b}--docs",
            [
                models.PointStruct(
                    id=1,
                    vector={SPARSE_VECTOR: sparse_vector("launch code swordfish")},
                    payload={
                        "tenant": a,
                        "doc_id": "x",
                        "visibility": "org",
                        "text": "the launch code is swordfish",
                        "chunk": 0,
                    },
                )
            ],
        )
        hits_b = await served.runtime.knowledge.search(
            b, list(agent_b.config.knowledge), principal_of(served, b), "launch code swordfish"
        )
        assert hits_b == []
        assert key_b


def principal_of(served: Served, tenant: str) -> Principal:
    return Principal(subject="admin", roles=frozenset({"admin"}), method="api_key", tenant=tenant)


async def test_unreachable_qdrant_gives_a_degraded_answer(settings: Settings, fake_llm: FakeLLM) -> None:
    down = settings.model_copy(update={"qdrant_url": f"http://127.0.0.1:{free_port()}"})
    config = make_config(tenant_name(), knowledge=["docs"])
    async with serve(down, config) as served:
        client = openai.AsyncOpenAI(api_key=await served.key(), base_url=served.base_url, max_retries=0)
        raw = await client.chat.completions.with_raw_response.create(
            model="helper", messages=[{"role": "user", "content": "what is the return policy?"}]
        )
        completion = raw.parse()
        assert completion.choices[0].message.content == "Fake answer to: what is the return policy?"
        assert raw.headers["x-agentplane-retrieval"] == "unavailable"
        assert (completion.model_extra or {})["agentplane"]["retrieval"]["status"] == "unavailable"
        system = fake_llm.chat_requests()[-1].body["messages"][0]["content"]
        assert "knowledge base is unavailable" in system
        async with httpx.AsyncClient() as http:
            ready = (await http.get(f"{served.url}/healthz/ready")).json()
            assert ready["checks"]["vector_store"] == "unreachable"
        samples = parse_metrics(await scrape(served.url))
        await client.close()
    ours = {"tenant": config.tenant, "agent": "helper"}
    assert total(samples, "agentplane_retrievals_total", **ours, outcome="unavailable") == 1
    assert total(samples, "agentplane_retrievals_total", **ours, outcome="ok") == 0
    assert total(samples, "agentplane_retrieval_duration_seconds_count", **ours) == 1
    assert total(samples, "agentplane_requests_total", **ours, status="ok", code="200") == 1


async def test_chunking_keeps_sections_and_code_blocks() -> None:
    chunks = chunk_text(GUIDE, size=120, overlap=30)
    code = [c for c in chunks if "def refund" in c.text]
    assert len(code) == 1
    assert "never split this block" in code[0].text  # the fenced block stayed whole
    assert code[0].section == "Returns > Damaged items"
    assert code[0].text.startswith("Returns > Damaged items")
    shipping = [c for c in chunks if c.section == "Shipping"]
    assert shipping
    assert "Standard shipping" in shipping[0].text
    long = chunk_text(" ".join(f"word{i}" for i in range(600)), size=400, overlap=80)
    assert len(long) > 5
    # consecutive chunks overlap
    assert long[0].text[-40:].split()[-1] in long[1].text


async def test_html_and_pdf_extraction() -> None:
    html = b"<html><head><script>evil()</script></head><body><h2>Billing</h2><p>Invoices are monthly.</p><pre>code  kept</pre></body></html>"
    text = extract_text(html, "html")
    assert "## Billing" in text
    assert "Invoices are monthly." in text
    assert "evil" not in text
    assert "```\ncode  kept\n```" in text
    assert "Hello PDF world" in extract_text(minimal_pdf("Hello PDF world"), "pdf")


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF with one line of text, written by hand."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out
