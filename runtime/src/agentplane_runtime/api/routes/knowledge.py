"""Knowledge bases of the agent: upload, list and delete documents; query them directly."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Request, UploadFile
from starlette.responses import Response

from agentplane_platform.audit import AuditAction, AuditOutcome, JsonValue
from agentplane_platform.config import ResolvedKnowledge
from agentplane_runtime.agents import AgentContext
from agentplane_runtime.api.deps import (
    CurrentAgent,
    CurrentPrincipal,
    RequestId,
    RuntimeDep,
    actor,
    client_address,
    denied,
)
from agentplane_runtime.api.schemas import DocumentList, DocumentPublic, QueryHit, QueryRequest, QueryResponse
from agentplane_runtime.audit import audit_event
from agentplane_runtime.auth import Principal
from agentplane_runtime.core.errors import ApiError, unavailable
from agentplane_runtime.documents import DocumentError, chunk_text, detect_kind, extract_text
from agentplane_runtime.retrieval import DocumentInfo, RetrievalUnavailable
from agentplane_runtime.services import Runtime

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


async def _audit(
    request: Request,
    runtime: Runtime,
    agent: AgentContext,
    principal: Principal,
    action: AuditAction,
    target: str,
    details: dict[str, JsonValue],
    outcome: AuditOutcome = AuditOutcome.SUCCESS,
) -> None:
    config = agent.config
    await runtime.audit.record(
        audit_event(
            action,
            tenant=config.tenant,
            actor=actor(request, principal),
            outcome=outcome,
            agent=config.agent,
            target=target,
            details=details,
        )
    )


async def _denied(
    request: Request, runtime: Runtime, agent: AgentContext, principal: Principal, target: str, reason: str
) -> ApiError:
    """The 403 of `reason`, audited as `access.denied`."""
    return await denied(
        request, runtime, agent, principal, target, ApiError(403, reason, type="permission_error")
    )


@router.post("/{kb}/documents", status_code=201, summary="Upload a document (text, markdown, HTML or PDF)")
async def upload_document(
    request: Request,
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
    target = f"document:{kb}/{doc_id or '(new)'}"
    if visibility == "org" and not principal.is_admin(tenant):
        raise await _denied(
            request,
            runtime,
            agent,
            principal,
            target,
            "only an admin of the tenant may publish a document org-wide",
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
                raise await _denied(
                    request, runtime, agent, principal, target, "the document belongs to someone else"
                )
        info = await runtime.knowledge.add_document(
            tenant,
            base,
            chunks,
            source=source or file.filename or "upload",
            owner=principal.subject,
            visibility=visibility,
            shared_with=shared,
            doc_id=doc_id,
            meter=runtime.chat.embedding_meter(agent, principal, request_id, client_address(request)),
        )
    except RetrievalUnavailable:
        raise unavailable("the knowledge store") from None
    target = f"document:{kb}/{info.doc_id}"
    uploaded: dict[str, JsonValue] = {
        "knowledge_base": kb,
        "source": info.source,
        "visibility": info.visibility,
        "chunks": info.chunks,
    }
    await _audit(request, runtime, agent, principal, AuditAction.DOCUMENT_UPLOADED, target, uploaded)
    if info.shared_with:
        shared_details: dict[str, JsonValue] = {"knowledge_base": kb, "shared_with": list(info.shared_with)}
        await _audit(request, runtime, agent, principal, AuditAction.DOCUMENT_SHARED, target, shared_details)
    return _public(info)


@router.get("/{kb}/documents", summary="Documents of the knowledge base that the caller may read")
async def list_documents(
    kb: str, agent: CurrentAgent, principal: CurrentPrincipal, runtime: RuntimeDep
) -> DocumentList:
    base = _kb(agent, kb)
    try:
        docs = await runtime.knowledge.list_documents(agent.config.tenant, base, principal)
    except RetrievalUnavailable:
        raise unavailable("the knowledge store") from None
    return DocumentList(data=[_public(d) for d in docs])


@router.delete("/{kb}/documents/{doc_id}", status_code=204, summary="Delete a document and all its chunks")
async def delete_document(
    request: Request,
    kb: str,
    doc_id: str,
    agent: CurrentAgent,
    principal: CurrentPrincipal,
    runtime: RuntimeDep,
) -> Response:
    base = _kb(agent, kb)
    tenant = agent.config.tenant
    target = f"document:{kb}/{doc_id}"
    try:
        doc = await runtime.knowledge.get_document(tenant, base, principal, doc_id)
        if doc is None:
            raise ApiError(404, "no such document", type="not_found_error", code="document_not_found")
        if doc.owner != principal.subject and not principal.is_admin(tenant):
            raise await _denied(
                request,
                runtime,
                agent,
                principal,
                target,
                "only the owner or an admin may delete this document",
            )
        await runtime.knowledge.delete_document(tenant, base, doc_id)
    except RetrievalUnavailable:
        raise unavailable("the knowledge store") from None
    deleted: dict[str, JsonValue] = {"knowledge_base": kb, "owner": doc.owner, "source": doc.source}
    await _audit(request, runtime, agent, principal, AuditAction.DOCUMENT_DELETED, target, deleted)
    return Response(status_code=204)


@router.post("/{kb}/query", summary="Retrieve the best chunks for a query, with scores and sources")
async def query(
    request: Request,
    kb: str,
    body: QueryRequest,
    agent: CurrentAgent,
    principal: CurrentPrincipal,
    runtime: RuntimeDep,
    request_id: RequestId,
) -> QueryResponse:
    base = _kb(agent, kb)
    meter = runtime.chat.embedding_meter(agent, principal, request_id, client_address(request))
    try:
        hits = await runtime.knowledge.search(
            agent.config.tenant, [base], principal, body.query, body.top_k, meter=meter
        )
    except RetrievalUnavailable:
        raise unavailable("the knowledge store") from None
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
