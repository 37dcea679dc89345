"""Reading spec files into typed objects, with every schema problem pinned to file:line:column."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from agentplane_platform.api.v1alpha1 import API_VERSION, GROUP, KINDS, SPEC_KINDS, Resource, TierLimits
from agentplane_platform.schemas import crd, openapi_schema

from ._problems import Position, Problem, dotted
from ._yaml import Document, Path_, decode, read_documents

R = TypeVar("R", bound=Resource)
R_co = TypeVar("R_co", bound=Resource, covariant=True)
M = TypeVar("M", bound=BaseModel)

SPEC_SUFFIXES = (".yaml", ".yml")
SKIPPED_DIRS = frozenset({".git", ".agentplane", "node_modules", "__pycache__", ".venv"})


@dataclass(frozen=True, slots=True)
class Loaded(Generic[R_co]):
    """A spec object and the document it was read from (a `Loaded[Agent]` is a `Loaded[Resource]`)."""

    resource: R_co
    document: Document

    @property
    def file(self) -> str:
        return self.document.file

    def of(self, kind: type[R]) -> Loaded[R] | None:
        """This object as a `Loaded[kind]` when its resource is one, else None."""
        return cast("Loaded[R]", self) if isinstance(self.resource, kind) else None

    def at(self, path: Path_, message: str, *, severity: str = "error") -> Problem:
        """A problem about the field at `path` of this object."""
        return Problem(
            self.document.file,
            self.document.position(path),
            message,
            kind=self.resource.kind_name,
            name=self.resource.metadata.name,
            path=dotted(path),
            severity="warning" if severity == "warning" else "error",
        )


@dataclass(slots=True)
class RawObject:
    """What a document says it is, even when its schema is broken (so references to it still resolve)."""

    kind: str
    name: str
    namespace: str | None
    document: Document


@dataclass(slots=True)
class LoadResult:
    """Everything read from a set of paths."""

    files: int = 0
    documents: int = 0
    objects: list[Loaded[Resource]] = field(default_factory=list)
    raw: list[RawObject] = field(default_factory=list)
    """Every document that named a kind and a name, valid or not."""
    generated: int = 0
    """Generated CRDs found among the specs (checked against the models)."""
    problems: list[Problem] = field(default_factory=list)


def spec_files(paths: Sequence[Path]) -> tuple[list[Path], list[Problem]]:
    """The YAML files under the given paths (files named explicitly are taken whatever their suffix)."""
    found: list[Path] = []
    problems: list[Problem] = []
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
                found.extend(Path(root, f) for f in sorted(files) if f.endswith(SPEC_SUFFIXES))
        elif path.is_file():
            found.append(path)
        else:
            problems.append(Problem(str(path), Position(1, 1), "no such file or directory"))
    return found, problems


def _display(path: Path, cwd: str) -> str:
    """The path as the user wrote it, or relative to the working directory when absolute."""
    text = str(path)
    return text[len(cwd) :] if text.startswith(cwd) else text


def _describe(error: ErrorDetails) -> str:
    """A pydantic error as `what is wrong (expected X)`."""
    kind: str = error["type"]
    message: str = error["msg"]
    ctx: dict[str, object] = error.get("ctx") or {}
    value = error.get("input")
    got = _short(value)
    if kind == "missing":
        return "required field is missing"
    if kind == "union_tag_invalid":
        return f"got {_short(ctx.get('tag'))} (expected one of {ctx.get('expected_tags')})"
    if kind == "literal_error":
        return f"got {got} (expected {ctx.get('expected')})"
    if kind == "value_error":
        return message.removeprefix("Value error, ")
    if kind in {"model_type", "model_attributes_type", "dict_type"}:
        return f"got {_type_name(value)} (expected a mapping)"
    if kind == "list_type":
        return f"got {_type_name(value)} (expected a list)"
    if kind == "string_pattern_mismatch":
        return f"got {got} (expected to match {ctx.get('pattern')})"
    if message.startswith("Input should be "):
        expected = message.removeprefix("Input should be ").split(",")[0]
        return f"got {got} (expected {expected})"
    lowered = message[0].lower() + message[1:] if message else kind
    return f"got {got} ({lowered})"


def _type_name(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    return f"{type(value).__name__} {_short(value)}"


def _short(value: object) -> str:
    if isinstance(value, dict | list):
        return _type_name(value)
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _data_path(data: object, loc: Iterable[str | int]) -> Path_:
    """The path inside the document that a pydantic `loc` designates (union tags dropped)."""
    path: list[str | int] = []
    current = data
    tagged: set[int] = set()
    for part in loc:
        if isinstance(current, dict) and current.get("type") == part and id(current) not in tagged:
            # pydantic puts a discriminated union's tag (the value of `type`) into the loc
            tagged.add(id(current))
        elif isinstance(current, dict) and isinstance(part, str) and part in current:
            current = current[part]
            path.append(part)
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            current = current[part]
            path.append(part)
        elif isinstance(current, dict) and isinstance(part, str):
            path.append(part)
            current = None
    return tuple(path)


def _schema_problems(
    loaded_kind: type[Resource], document: Document, exc: ValidationError, name: str | None
) -> list[Problem]:
    problems = []
    for error in exc.errors(include_url=False):
        path = _data_path(document.data, error["loc"])
        message = _describe(error)
        if error["type"] in {"union_tag_invalid", "union_tag_not_found"}:
            tag = str((error.get("ctx") or {}).get("discriminator", "type")).strip("'")
            path = (*path, tag)
            if error["type"] == "union_tag_not_found":
                error = {**error, "type": "missing"}
                tags = _field_schema(loaded_kind, path).get("enum", [])
                message = "required field is missing (expected one of " + ", ".join(map(repr, tags)) + ")"
        if error["type"] == "extra_forbidden":
            allowed = _allowed_fields(loaded_kind, path[:-1])
            message = "unknown field" + (f" (expected one of: {', '.join(allowed)})" if allowed else "")
        problems.append(
            Problem(
                document.file,
                document.position(path if error["type"] != "missing" else path[:-1]),
                message,
                kind=loaded_kind.kind_name,
                name=name,
                path=dotted(path),
            )
        )
    return problems


def _allowed_fields(kind: type[Resource], path: Path_) -> list[str]:
    """The field names the schema allows at `path` (for "unknown field" messages)."""
    return sorted(_field_schema(kind, path).get("properties", {}))


def _field_schema(kind: type[Resource], path: Path_) -> dict[str, Any]:
    """The structural schema of the field at `path`."""
    schema: dict[str, Any] = openapi_schema(kind)
    for part in path:
        if isinstance(part, int):
            schema = schema.get("items", {})
        elif "properties" in schema:
            schema = schema["properties"].get(part, {})
        else:
            extra = schema.get("additionalProperties")
            schema = extra if isinstance(extra, dict) else {}
    return schema


def _document_problem(document: Document, message: str, path: Path_ = ()) -> Problem:
    return Problem(document.file, document.position(path), message, path=dotted(path) or None)


def load_document(document: Document, result: LoadResult, generated_crds: dict[str, Any]) -> None:
    """Type one document, adding the object or its problems to `result`."""
    data = document.data
    if data is None:
        return
    result.documents += 1
    if not isinstance(data, dict):
        result.problems.append(
            _document_problem(
                document,
                f"document is {_type_name(data)}, not an object (expected a mapping with apiVersion and kind)",
            )
        )
        return
    api_version, kind_name = data.get("apiVersion"), data.get("kind")
    metadata = data.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    name = name if isinstance(name, str) else None
    namespace = metadata.get("namespace") if isinstance(metadata, dict) else None
    if api_version == "apiextensions.k8s.io/v1" and kind_name == "CustomResourceDefinition":
        spec = data.get("spec")
        if isinstance(spec, dict) and spec.get("group") == GROUP:
            result.generated += 1
            if generated_crds.get(str(name)) != data:
                result.problems.append(
                    Problem(
                        document.file,
                        document.start,
                        "generated CRD is stale or edited by hand (expected the output of `agentplane generate`)",
                        kind="CustomResourceDefinition",
                        name=name,
                    )
                )
            return
    if api_version is None:
        result.problems.append(_document_problem(document, f"apiVersion is missing (expected {API_VERSION})"))
        return
    if kind_name is None:
        result.problems.append(
            _document_problem(document, f"kind is missing (expected one of {', '.join(SPEC_KINDS)})")
        )
        return
    if api_version != API_VERSION:
        result.problems.append(
            _document_problem(
                document,
                f"unknown apiVersion {_short(api_version)} (expected {API_VERSION})",
                ("apiVersion",),
            )
        )
        return
    if kind_name == TierLimits.kind_name:
        result.problems.append(
            _document_problem(
                document,
                "TierLimits does not belong in a spec tree: it parameterises the admission policies and lives "
                "in policies/params/<environment>/ (checked by `agentplane policy test`)",
                ("kind",),
            )
        )
        return
    kind = SPEC_KINDS.get(kind_name) if isinstance(kind_name, str) else None
    if kind is None:
        result.problems.append(
            _document_problem(
                document,
                f"unknown kind {_short(kind_name)} (expected one of {', '.join(SPEC_KINDS)})",
                ("kind",),
            )
        )
        return
    if name is not None:
        result.raw.append(
            RawObject(kind.kind_name, name, namespace if isinstance(namespace, str) else None, document)
        )
    try:
        resource = kind.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as exc:
        result.problems.extend(_schema_problems(kind, document, exc, name))
        return
    result.objects.append(Loaded(resource, document))


def load_yaml_models(path: Path, model: type[M]) -> tuple[list[tuple[Document, M]], list[Problem]]:
    """Every document of one YAML file typed as `model` (a pydantic model other than a spec kind:
    SLO definitions, policy cases), with the same reader, limits and file:line:column problems as
    spec files. An empty document is skipped."""
    display = _display(path, str(Path.cwd()).rstrip("/") + "/")
    try:
        data = path.read_bytes()
    except OSError as exc:
        return [], [Problem(display, Position(1, 1), f"cannot read: {exc.strerror}")]
    text, problem = decode(data, display)
    if problem is not None or text is None:
        return [], [problem or Problem(display, Position(1, 1), "unreadable")]
    documents, problems = read_documents(text, display)
    typed: list[tuple[Document, M]] = []
    for document in documents:
        if document.data is None:
            continue
        try:
            typed.append((document, model.model_validate(document.data, strict=False)))
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                where = _data_path(document.data, error["loc"])
                message = "unknown field" if error["type"] == "extra_forbidden" else _describe(error)
                anchor = where if error["type"] != "missing" else where[:-1]
                problems.append(
                    Problem(display, document.position(anchor), message, path=dotted(where) or None)
                )
    return typed, problems


def load_paths(paths: Sequence[Path]) -> LoadResult:
    """Read and type every spec document under the paths."""
    generated = {f"{k.plural}.{GROUP}": crd(k) for k in KINDS.values()}
    files, problems = spec_files(paths)
    result = LoadResult(problems=problems)
    cwd = str(Path.cwd()).rstrip("/") + "/"
    for path in files:
        result.files += 1
        display = _display(path, cwd)
        try:
            data = path.read_bytes()
        except OSError as exc:
            result.problems.append(Problem(display, Position(1, 1), f"cannot read: {exc.strerror}"))
            continue
        text, problem = decode(data, display)
        if problem is not None or text is None:
            result.problems.append(problem or Problem(display, Position(1, 1), "unreadable"))
            continue
        documents, yaml_problems = read_documents(text, display)
        result.problems.extend(yaml_problems)
        for document in documents:
            load_document(document, result, generated)
    return result


def iter_kind(result: LoadResult, kind: type[R]) -> Iterator[Loaded[R]]:
    """The loaded objects of one kind."""
    for loaded in result.objects:
        if (found := loaded.of(kind)) is not None:
            yield found
