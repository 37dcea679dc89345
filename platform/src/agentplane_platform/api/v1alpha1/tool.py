"""Tool: a function an agent's model may call — an HTTP endpoint, an MCP server's tool, or a builtin."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from ._base import (
    AGE_COLUMN,
    READY_COLUMN,
    REASON_COLUMN,
    ApiModel,
    PrinterColumn,
    Resource,
    Status,
    cel,
    k8s_extra,
)

TOOL_FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"
BUILTIN_TOOLS = ("retrieval", "calculator")


class KubernetesSecretKeyRef(ApiModel):
    """A key of a Kubernetes Secret in the tenant's namespace."""

    name: str = Field(min_length=1, max_length=253)
    """Name of the Secret."""
    key: str = Field(min_length=1, max_length=253)
    """Key within the Secret's data."""


class KeyVaultSecretRef(ApiModel):
    """A secret in the environment's Azure Key Vault, mounted through the Secrets Store CSI driver."""

    name: str = Field(min_length=1, max_length=127, pattern=r"^[0-9a-zA-Z-]+$")
    """Name of the Key Vault secret."""
    version: str | None = Field(default=None, max_length=64)
    """A specific version; the latest when unset."""


class SecretRef(ApiModel):
    """Where a credential lives. Credentials are never written inline in a spec."""

    model_config = ConfigDict(
        json_schema_extra=k8s_extra(
            validations=[
                cel(
                    "has(self.kubernetes) != has(self.keyVault)",
                    "exactly one of kubernetes or keyVault must be set",
                )
            ]
        )
    )

    kubernetes: KubernetesSecretKeyRef | None = None
    """A Kubernetes Secret in the tenant's namespace."""
    key_vault: KeyVaultSecretRef | None = None
    """A Key Vault secret."""

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.kubernetes is None) == (self.key_vault is None):
            raise ValueError("exactly one of kubernetes or keyVault must be set")
        return self


class ToolAuth(ApiModel):
    """How the runtime authenticates to the tool: a header whose value comes from a secret."""

    header: str = Field(default="Authorization", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9-]+$")
    """HTTP header that carries the credential."""
    scheme: str = Field(default="Bearer", max_length=32)
    """Prefix put before the secret value (`Bearer`); empty for none."""
    secret_ref: SecretRef
    """Where the credential lives."""


def _parameters_field() -> Any:
    return Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        json_schema_extra=k8s_extra(preserve_unknown_fields=True),
    )


class ToolAudit(ApiModel):
    """What the audit trail keeps of this tool's calls. Every call is recorded (the tool, the caller,
    the outcome, the duration); its arguments only when `recordArguments` is true."""

    record_arguments: bool = False
    """Keep each call's arguments (as the model sent them, up to 4 KiB) in its audit record. Off by
    default: arguments may carry personal data that the audit trail keeps for its whole retention."""


class _ToolBase(ApiModel):
    description: str = Field(min_length=1, max_length=4096)
    """What the tool does; the model reads this to decide when to call it."""
    function_name: str | None = Field(default=None, pattern=TOOL_FUNCTION_NAME)
    """Name the model sees; defaults to the Tool's name with `-` turned into `_`."""
    timeout_seconds: int = Field(default=30, ge=1, le=600)
    """How long one call may take before it is reported to the model as failed."""
    audit: ToolAudit | None = None
    """What the audit trail keeps of each call (by default: not its arguments)."""


class HttpTool(_ToolBase):
    """Calls an HTTP endpoint with the model's arguments as a JSON body (or query string for GET)."""

    type: Literal["http"]
    """`http`: an HTTP endpoint."""
    url: str = Field(min_length=1, max_length=2048, pattern=r"^https?://")
    """Endpoint to call; its host must be in the tenant's egress allowlist."""
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    """HTTP method."""
    headers: dict[str, str] = Field(default_factory=dict, max_length=32)
    """Extra non-secret headers. Credentials go in `auth`."""
    parameters: dict[str, Any] = _parameters_field()
    """JSON Schema of the arguments the model passes (an object schema)."""
    auth: ToolAuth | None = None
    """Credential sent with each call."""
    max_response_bytes: int = Field(default=262144, ge=1024, le=16777216)
    """Responses larger than this are cut before they reach the model."""


class McpTool(_ToolBase):
    """Calls one tool of a Model Context Protocol server over streamable HTTP."""

    type: Literal["mcp"]
    """`mcp`: a tool of an MCP server."""
    url: str = Field(min_length=1, max_length=2048, pattern=r"^https?://")
    """Streamable-HTTP endpoint of the MCP server; its host must be in the tenant's egress allowlist."""
    tool: str = Field(min_length=1, max_length=128)
    """Name of the tool on the MCP server."""
    parameters: dict[str, Any] | None = Field(
        default=None, json_schema_extra=k8s_extra(preserve_unknown_fields=True)
    )
    """JSON Schema of the arguments. When unset, the schema the MCP server lists for `tool` (`tools/list`, its `inputSchema`), discovered by the operator (see `status.discovered`) or by `agentplane up`; Agents using the tool wait until it is discovered."""
    auth: ToolAuth | None = None
    """Credential sent with each call."""
    stateless: bool = False
    """Open a new MCP session for every call and end it after the call. Otherwise the calls of one conversation (a chat request's `X-Conversation-Id`) share one session."""


class BuiltinTool(_ToolBase):
    """A tool the runtime provides itself."""

    type: Literal["builtin"]
    """`builtin`: provided by the runtime."""
    builtin: Literal["retrieval", "calculator"]
    """Which builtin: `retrieval` searches the agent's knowledge bases, `calculator` evaluates arithmetic."""
    parameters: dict[str, Any] | None = Field(
        default=None, json_schema_extra=k8s_extra(preserve_unknown_fields=True)
    )
    """JSON Schema of the arguments; the builtin's own when unset."""


ToolSpec = Annotated[HttpTool | McpTool | BuiltinTool, Field(discriminator="type")]


class ToolDiscovery(ApiModel):
    """The input schema an MCP server lists for the tool, as the operator last discovered it."""

    model_config = ConfigDict(extra="ignore")

    tool: str = Field(max_length=128)
    """The MCP tool listed (`spec.tool` when it was discovered)."""
    url: str = Field(max_length=2048)
    """The server listed (`spec.url` when it was discovered)."""
    parameters: str = Field(max_length=65536)
    """The tool's `inputSchema` as canonical JSON: what agents using the tool offer their model."""
    parameters_hash: str = Field(max_length=71)
    """`sha256:` of `parameters`; it changes when the server changes the tool's schema."""
    discovered_at: datetime
    """When this schema was first listed (a later listing of the same schema keeps the time)."""


class ToolStatus(Status):
    """Observed state of a tool."""

    discovered: ToolDiscovery | None = None
    """An MCP tool without declared `parameters`: the schema discovered from its server."""


class Tool(Resource):
    """A function agents may call: an HTTP endpoint, an MCP server's tool, or a runtime builtin."""

    kind_name: ClassVar[str] = "Tool"
    plural: ClassVar[str] = "tools"
    namespaced: ClassVar[bool] = True
    short_names: ClassVar[tuple[str, ...]] = ("tl",)
    printer_columns: ClassVar[tuple[PrinterColumn, ...]] = (
        PrinterColumn(name="Type", type="string", json_path=".spec.type"),
        READY_COLUMN,
        REASON_COLUMN,
        AGE_COLUMN,
    )

    kind: Literal["Tool"] = "Tool"
    spec: ToolSpec
    """Desired state of the tool; `type` selects the variant."""
    status: ToolStatus | None = None
    """Observed state, written by the operator."""

    @property
    def function_name(self) -> str:
        """The function name the model sees."""
        return self.spec.function_name or self.metadata.name.replace("-", "_").replace(".", "_")
