"""Knowledge bases of the agent: upload, list and delete documents; query them directly."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, UploadFile
from starlette.responses import Response

from agentplane_platform.config import ResolvedKnowledge
from agentplane_runtime.agents import AgentContext
from agentplane_runtime.api.deps import CurrentAgent, CurrentPrincipal, RequestId, RuntimeDep
from agentplane_runtime.api.schemas import DocumentList, DocumentPublic, QueryHit, QueryRequest, QueryResponse
from agentplane_runtime.core.errors import ApiError
from agentplane_runtime.documents import DocumentError, chunk_text, detect_kind, extract_text
from agentplane_runtime.retrieval import DocumentInfo, RetrievalUnavailable

router = APIRouter(prefix="/knowledge", tags=["knowledge"])


def _kb(agent: AgentContext, name: str) -> ResolvedKnowledge:
    for kb in agent.config.knowledge:
        if kb.name == name:
            return kb
    raise ApiError(
        404,
        f"this agent has no knowledge base {name!r}",
        type="not_found_error",
        code="knowledge_base_not_found",
    )


def _public(doc: DocumentInfo) -> DocumentPublic:
    return DocumentPublic(
        id=doc.doc_id,
        source=doc.source,
        owner=doc.owner,
        visibility=doc.visibility,
        shared_with=doc.shared_with,
        created_at=doc.created_at,
        chunks=doc.chunks,
    )


def _unavailable() -> ApiError:
    return ApiError(
        503,
        "the knowledge store is unavailable, retry shortly",
        type="api_error",
        headers={"Retry-After": "5"},
    )


@router.post("/{kb}/documents", status_code=201, summary="Upload a document (text, markdown, HTML or PDF)")
async def upload_document(
    kb: str,
    agent: CurrentAgent,
    principal: CurrentPrincipal,
    runtime: RuntimeDep,
    request_id: RequestId,
    file: Annotated[UploadFile, File(description="The document")],
    visibility: Annotated[Literal["org", "private", "shared"], Form()] = "private",
    shared_with: Annotated[
        list[str] | None, Form(description="Subjects or groups (repeat the field)")
    ] = None,
    source: Annotated[str | None, Form(max_length=512)] = None,
    doc_id: Annotated[str | None, Form(max_length=64, pattern=r"^[A-Za-z0-9._-]+$")] = None,
) -> DocumentPublic:
    base = _kb(agent, kb)
    tenant = agent.config.tenant
    if visibility == "org" and not principal.is_admin(tenant):
        raise ApiError(
            403, "only an admin of the tenant may publish a document org-wide", type="permission_error"
        )
    data = await file.read()
    kind = detect_kind(file.filename or "", file.content_type)
    try:
        text = extract_text(data, kind)
    except DocumentError as exc:
        raise ApiError(400, str(exc), param="file") from None
    chunks = chunk_text(text)
    if not chunks:
        raise ApiError(400, "the document has no text", param="file")
    shared = [s.strip() for item in shared_with or [] for s in item.split(",") if s.strip()]
    try:
        if doc_id is not None:
            existing = await runtime.knowledge.get_document(tenant, base, principal, doc_id)
            if (
                existing is not None
                and existing.owner != principal.subject
                and not principal.is_admin(tenant)
            ):
                raise ApiError(403, "the document belongs to someone else", type="permission_error")
        info = await runtime.knowledge.add_document(
            tenant,
            base,
            chunks,
            source=source or file.filename or "upload",
            owner=principal.subject,
            visibility=visibility,
            shared_with=shared,
            doc_id=doc_id,
            meter=runtime.chat.embedding_meter(agent, principal, request_id),
        )
    except RetrievalUnavailable:
        raise _unavailable() from None
    return _public(info)


@router.get("/{kb}/documents", summary="Documents of the knowledge base that the caller may read")
async def list_documents(
    kb: str, agent: CurrentAgent, principal: CurrentPrincipal, runtime: RuntimeDep
) -> DocumentList:
    base = _kb(agent, kb)
    try:
        docs = await runtime.knowledge.list_documents(agent.config.tenant, base, principal)
    except RetrievalUnavailable:
        raise _unavailable() from None
    return DocumentList(data=[_public(d) for d in docs])


@router.delete("/{kb}/documents/{doc_id}", status_code=204, summary="Delete a document and all its chunks")
async def delete_document(
    kb: str, doc_id: str, agent: CurrentAgent, principal: CurrentPrincipal, runtime: RuntimeDep
) -> Response:
    base = _kb(agent, kb)
    tenant = agent.config.tenant
    try:
        doc = await runtime.knowledge.get_document(tenant, base, principal, doc_id)
        if doc is None:
            raise ApiError(404, "no such document", type="not_found_error", code="document_not_found")
        if doc.owner != principal.subject and not principal.is_admin(tenant):
            raise ApiError(
                403, "only the owner or an admin may delete this document", type="permission_error"
            )
        await runtime.knowledge.delete_document(tenant, base, doc_id)
    except RetrievalUnavailable:
        raise _unavailable() from None
    return Response(status_code=204)


@router.post("/{kb}/query", summary="Retrieve the best chunks for a query, with scores and sources")
async def query(
    kb: str,
    body: QueryRequest,
    agent: CurrentAgent,
    principal: CurrentPrincipal,
    runtime: RuntimeDep,
    request_id: RequestId,
) -> QueryResponse:
    base = _kb(agent, kb)
    meter = runtime.chat.embedding_meter(agent, principal, request_id)
    try:
        hits = await runtime.knowledge.search(
            agent.config.tenant, [base], principal, body.query, body.top_k, meter=meter
        )
    except RetrievalUnavailable:
        raise _unavailable() from None
    return QueryResponse(
        data=[
            QueryHit(
                text=h.text,
                score=h.score,
                doc_id=h.doc_id,
                source=h.source,
                chunk=h.chunk,
                knowledge_base=h.knowledge_base,
            )
            for h in hits
        ]
    )
