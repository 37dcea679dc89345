"""Prompt: a versioned system-prompt template that agents pin by version."""

from __future__ import annotations

from typing import ClassVar, Literal

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

VARIABLE_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
MAX_TEMPLATE = 65536
MAX_PREVIOUS_VERSIONS = 20


class PromptVariable(ApiModel):
    """A variable the template uses, filled in by each Agent that pins the prompt."""

    name: str = Field(min_length=1, max_length=63, pattern=VARIABLE_NAME)
    """Name used in the template as `{{ name }}`."""
    description: str = Field(default="", max_length=1024)
    """What the variable means, for the agent authors who fill it in."""
    required: bool = True
    """Whether every Agent must supply a value (ignored when a default is set)."""
    default: str | None = Field(default=None, max_length=4096)
    """Value used when the Agent supplies none."""


_VARIABLES_LIST = k8s_extra(list_type="map", list_map_keys=["name"])


class PromptVersion(ApiModel):
    """An earlier version of the prompt, kept so that Agents pinned to it keep working."""

    model_config = ConfigDict(
        json_schema_extra=k8s_extra(
            validations=[
                cel("self.template == oldSelf.template", "a prompt version is immutable: bump the version")
            ]
        )
    )

    version: int = Field(ge=1)
    """The version number this template had."""
    template: str = Field(min_length=1, max_length=MAX_TEMPLATE)
    """The template of that version."""
    variables: list[PromptVariable] = Field(
        default_factory=list, max_length=64, json_schema_extra=_VARIABLES_LIST
    )
    """Variables of that version's template."""


class PromptSpec(ApiModel):
    """Desired state of a prompt: its current version and the earlier ones still pinned."""

    model_config = ConfigDict(
        json_schema_extra=k8s_extra(
            validations=[
                cel("self.version >= oldSelf.version", "version must never decrease"),
                cel(
                    "self.template == oldSelf.template || self.version > oldSelf.version",
                    "changing the template requires a higher version",
                ),
                cel(
                    "!has(self.previousVersions) || self.previousVersions.all(p, p.version < self.version)",
                    "previousVersions must be older than version",
                ),
            ]
        )
    )

    description: str = Field(default="", max_length=1024)
    """What the prompt is for."""
    version: int = Field(ge=1)
    """Version of `template`. A version is immutable: changing the template requires a higher version."""
    template: str = Field(min_length=1, max_length=MAX_TEMPLATE)
    """System prompt template; `{{ name }}` inserts a variable (also `{{ tenant }}`, `{{ agent }}`, `{{ date }}`)."""
    variables: list[PromptVariable] = Field(
        default_factory=list, max_length=64, json_schema_extra=_VARIABLES_LIST
    )
    """Variables the template uses."""
    previous_versions: list[PromptVersion] = Field(
        default_factory=list,
        max_length=MAX_PREVIOUS_VERSIONS,
        json_schema_extra=k8s_extra(list_type="map", list_map_keys=["version"]),
    )
    """Earlier versions kept for Agents that still pin them; drop one once no Agent uses it."""

    @model_validator(mode="after")
    def _previous_are_older(self) -> PromptSpec:
        for previous in self.previous_versions:
            if previous.version >= self.version:
                raise ValueError(
                    f"previousVersions has version {previous.version}, not older than version {self.version}"
                )
        return self

    def versions(self) -> dict[int, PromptVersion]:
        """Every version this prompt offers, current included, by number."""
        found = {p.version: p for p in self.previous_versions}
        found[self.version] = PromptVersion(
            version=self.version, template=self.template, variables=self.variables
        )
        return found


class PromptVersionStatus(ApiModel):
    """One version available for pinning."""

    model_config = ConfigDict(extra="ignore")

    version: int
    hash: str
    """sha256 of the version's template and variables."""
    config_map: str = ""
    """ConfigMap that holds it."""


class PromptStatus(Status):
    """Observed state of a prompt."""

    versions: list[PromptVersionStatus] = Field(default_factory=list, max_length=MAX_PREVIOUS_VERSIONS + 1)
    """Versions available for pinning, with their content hashes."""


class Prompt(Resource):
    """A versioned system-prompt template; Agents pin a version and fill in its variables."""

    kind_name: ClassVar[str] = "Prompt"
    plural: ClassVar[str] = "prompts"
    namespaced: ClassVar[bool] = True
    short_names: ClassVar[tuple[str, ...]] = ("pmt",)
    printer_columns: ClassVar[tuple[PrinterColumn, ...]] = (
        PrinterColumn(name="Version", type="integer", json_path=".spec.version"),
        READY_COLUMN,
        REASON_COLUMN,
        AGE_COLUMN,
    )

    kind: Literal["Prompt"] = "Prompt"
    spec: PromptSpec
    """Desired state of the prompt."""
    status: PromptStatus | None = None
    """Observed state, written by the operator."""
