"""`agentplane explain KIND[.field]`: the schema documentation, like `kubectl explain`, offline."""

from __future__ import annotations

import textwrap
from typing import Any

from .api.v1alpha1 import API_VERSION, KINDS, Resource
from .schemas import openapi_schema


class ExplainError(LookupError):
    """No such kind or field."""


def find_kind(name: str) -> type[Resource]:
    """A kind by its name, plural or short name, in any case."""
    wanted = name.lower()
    for kind in KINDS.values():
        if wanted in {kind.kind_name.lower(), kind.plural, *kind.short_names}:
            return kind
    raise ExplainError(f"unknown kind {name!r} (expected one of {', '.join(KINDS)})")


def _type_of(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if kind == "array":
        return f"[]{_type_of(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"map[string]{_type_of(schema['additionalProperties'])}"
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return "Object"
    if kind == "object":
        return "Object"
    return str(kind or "Object")


def explain(target: str) -> str:
    """The documentation of `KIND` or `KIND.path.to.field`."""
    kind_name, _, field_path = target.partition(".")
    kind = find_kind(kind_name)
    schema: dict[str, Any] = openapi_schema(kind)
    required = False
    walked: list[str] = []
    for part in [p for p in field_path.split(".") if p]:
        while schema.get("type") == "array":
            schema = schema.get("items", {})
        properties = schema.get("properties", {})
        if part not in properties:
            where = ".".join([kind.kind_name.lower(), *walked])
            raise ExplainError(
                f"field {part!r} does not exist in {where} (expected one of {', '.join(properties) or 'no fields'})"
            )
        required = part in schema.get("required", [])
        schema = properties[part]
        walked.append(part)
    lines = [
        f"GROUP:      {API_VERSION.split('/')[0]}",
        f"KIND:       {kind.kind_name}",
        f"VERSION:    {API_VERSION.split('/')[1]}",
        "",
    ]
    if walked:
        lines.append(f"FIELD: {walked[-1]} <{_type_of(schema)}>{' -required-' if required else ''}")
        lines.append("")
    description = schema.get("description") or "<empty>"
    lines.append("DESCRIPTION:")
    lines.extend(textwrap.wrap(description, 76, initial_indent="    ", subsequent_indent="    "))
    rules = schema.get("x-kubernetes-validations", [])
    if "enum" in schema:
        lines.append(f"    Possible values: {', '.join(str(v) for v in schema['enum'])}")
    if "default" in schema:
        lines.append(f"    Default: {schema['default']}")
    item = schema
    while item.get("type") == "array":
        item = item.get("items", {})
    properties = item.get("properties", {})
    if properties:
        lines.extend(["", "FIELDS:"])
        for name, sub in properties.items():
            mark = " -required-" if name in item.get("required", []) else ""
            lines.append(f"  {name}\t<{_type_of(sub)}>{mark}")
            first = (sub.get("description") or "").split("\n")[0]
            lines.extend(textwrap.wrap(first, 72, initial_indent="    ", subsequent_indent="    "))
            lines.append("")
    if rules:
        lines.extend(["VALIDATION RULES:"])
        lines.extend(f"    {rule['message']}" for rule in rules)
    return "\n".join(lines).rstrip() + "\n"
