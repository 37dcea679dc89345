"""A Tool's `parameters`: one rule for what a usable JSON Schema is, and how arguments are checked.

`agentplane validate` and the operator's Tool status use `schema_problems` (the Draft 2020-12
metaschema with formats checked, so a `pattern` must compile; every `$ref` must resolve); the
runtime checks the model's arguments with `arguments_validator`. Both resolve references offline:
the schema itself and the JSON Schema metaschemas, never a URL on the network.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema_specifications  # type: ignore[import-untyped]
import referencing
import referencing.exceptions
import referencing.jsonschema
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

SchemaPath = tuple[str | int, ...]

_TYPE_NAMES = ("array", "boolean", "integer", "null", "number", "object", "string")
_TYPES = ", ".join(_TYPE_NAMES[:-1]) + " or " + _TYPE_NAMES[-1]
_ARTICLES = {
    "array": "an array",
    "boolean": "a boolean",
    "integer": "an integer",
    "number": "a number",
    "object": "an object",
    "string": "a string",
}
_NOT_SCHEMAS = frozenset({"const", "enum", "default", "examples"})
"""Keywords whose values are data, not schemas: a `$ref` inside them is not a reference."""


@dataclass(frozen=True, slots=True)
class SchemaProblem:
    """Why a schema is unusable, at `path` inside the schema (`("properties", "id", "type")`)."""

    path: SchemaPath
    message: str


def _registry(schema: Any) -> referencing.Registry[Any]:
    """The metaschemas and `schema` itself (under its `$id`, or as the document without a URI)."""
    metaschemas: referencing.Registry[Any] = jsonschema_specifications.REGISTRY
    resource = referencing.jsonschema.DRAFT202012.create_resource(schema)
    registry: referencing.Registry[Any] = metaschemas.with_resource(resource.id() or "", resource)
    return registry


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _describe(error: Any) -> tuple[SchemaPath, str]:
    """The path of a metaschema violation and a message in the house style (`got ... (expected ...)`)."""
    path: SchemaPath = tuple(error.absolute_path)
    if tuple(error.schema_path)[-3:] == ("properties", "type", "anyOf"):  # the `type` keyword
        value = error.instance
        if isinstance(value, list):
            wrong = [(i, v) for i, v in enumerate(value) if v not in _TYPE_NAMES]
            if wrong:
                path, value = (*path, wrong[0][0]), wrong[0][1]
            elif len(set(map(str, value))) < len(value):
                return path, f"got {_short(value)} (expected no duplicate types)"
        return path, f"got {_short(value)} (expected a JSON Schema type: {_TYPES})"
    if error.context:  # other anyOf/oneOf: the closest alternative says more than "not valid under any"
        error = best_match(error.context)
        path = tuple(error.absolute_path)
    keyword, expected, instance = error.validator, error.validator_value, error.instance
    if keyword == "type":
        names = expected if isinstance(expected, list) else [expected]
        if set(names) == {"object", "boolean"}:
            return path, f"got {_short(instance)} (expected a schema: an object, or true or false)"
        wanted = " or ".join(_ARTICLES.get(str(name), str(name)) for name in names)
        return path, f"got {_short(instance)} (expected {wanted})"
    if keyword == "format" and expected == "regex":
        why = f": {error.cause}" if isinstance(error.cause, re.error) else ""
        return path, f"got {_short(instance)}, not a valid regular expression{why}"
    if keyword == "minimum":
        return path, f"got {_short(instance)} (expected at least {expected})"
    if keyword == "uniqueItems":
        return path, f"got {_short(instance)} (expected no duplicate items)"
    return path, str(error.message)


def _refs(node: Any, path: SchemaPath) -> Iterator[tuple[SchemaPath, Any, list[Mapping[str, Any]]]]:
    """`(path of $ref, the $ref, the subschemas with an $id that enclose it)` for every `$ref`."""
    pending: list[tuple[Any, SchemaPath, list[Mapping[str, Any]]]] = [(node, path, [])]
    while pending:
        current, where, scopes = pending.pop()
        if isinstance(current, dict):
            if where != path and isinstance(current.get("$id"), str):
                scopes = [*scopes, current]
            if "$ref" in current and isinstance(current["$ref"], str):
                yield (*where, "$ref"), current["$ref"], scopes
            for key, value in current.items():
                if key not in _NOT_SCHEMAS:
                    pending.append((value, (*where, key), scopes))
        elif isinstance(current, list):
            for index, value in enumerate(current):
                pending.append((value, (*where, index), scopes))


def _unresolved(schema: Any) -> Iterator[SchemaProblem]:
    resolver = _registry(schema).resolver()
    for path, ref, scopes in _refs(schema, ()):
        scoped = resolver
        for scope in scopes:
            scoped = scoped.in_subresource(referencing.jsonschema.DRAFT202012.create_resource(scope))
        try:
            scoped.lookup(ref)
        except referencing.exceptions.Unresolvable:
            remote = (
                "" if ref.startswith("#") else "; references are resolved within the schema, never fetched"
            )
            yield SchemaProblem(
                path,
                f"$ref {ref!r} does not resolve (expected a $defs entry or an anchor of this schema{remote})",
            )


def schema_problems(schema: Any) -> list[SchemaProblem]:
    """Why `schema` is not a usable Draft 2020-12 JSON Schema; empty when it is."""
    metaschema = Draft202012Validator(
        Draft202012Validator.META_SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    # the metaschema's vocabularies can report one violation several times
    problems = list(dict.fromkeys(SchemaProblem(*_describe(e)) for e in metaschema.iter_errors(schema)))
    if not problems:  # a `$ref` that is not a string is the metaschema's to report
        problems.extend(_unresolved(schema))
    return sorted(problems, key=lambda p: [str(part) for part in p.path])


def parameters_problems(parameters: Mapping[str, Any]) -> list[SchemaProblem]:
    """Why a Tool's `parameters` cannot describe a function's arguments: a usable schema of an object."""
    problems = schema_problems(parameters)
    if parameters.get("type") != "object":
        problems.insert(
            0, SchemaProblem((), "got a non-object schema (expected a JSON Schema with type: object)")
        )
    return problems


def arguments_validator(schema: Any) -> Any:
    """A compiled validator of arguments against `schema` (formats checked, references offline).

    A `jsonschema.Draft202012Validator`; call `schema_problems` first, as an invalid schema fails
    only when an argument reaches the broken keyword.
    """
    return Draft202012Validator(
        schema, format_checker=Draft202012Validator.FORMAT_CHECKER, registry=_registry(schema)
    )


__all__ = [
    "SchemaPath",
    "SchemaProblem",
    "arguments_validator",
    "parameters_problems",
    "schema_problems",
]
