"""The types of JSON (and YAML) data whose shape is not ours to fix: a parsed document before it is
validated, a Kubernetes object, a JSON Schema, a diff's values. Typed as JSON rather than `Any`, so a
use that assumes a shape has to look first."""

from __future__ import annotations

from typing import TypeAlias

JsonValue: TypeAlias = str | int | float | bool | list["JsonValue"] | dict[str, "JsonValue"] | None
"""Any JSON value."""

JsonObject: TypeAlias = dict[str, JsonValue]
"""A JSON object."""
