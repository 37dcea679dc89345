"""Transition rules, offline: the `x-kubernetes-validations` of a structural schema that read
`oldSelf`, evaluated on an update of an object the way the API server evaluates them.

Kubernetes evaluates a transition rule only where the new value can be correlated with an old
one: object properties by name, map entries (`additionalProperties`) by key, and items of
`x-kubernetes-list-type: map` lists by their `x-kubernetes-list-map-keys`; items of other lists
are never correlated, so the rules under them do not run. Both objects are defaulted from the
schema first, as the API server defaults what it reads from etcd and what a request sends. The
rule's `message` is what a refusal says (else `failed rule: <rule>`, as the API server words it).

General over kinds and schemas: `agentplane plan` uses it with the CRDs generated from the spec
models (`agentplane_platform.schemas.openapi_schema`) against the base commit's objects.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from agentplane_platform.cel import CelError, compile_expression

__all__ = ["TransitionViolation", "apply_defaults", "check_transition", "is_transition_rule"]

_OLD_SELF = re.compile(r"\boldSelf\b")

Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class TransitionViolation:
    """A transition rule that refuses the update: where (a path in the new object), which rule, why."""

    path: Path
    rule: str
    message: str


def is_transition_rule(rule: str) -> bool:
    """Whether a CEL rule reads `oldSelf` (Kubernetes' definition of a transition rule)."""
    return _OLD_SELF.search(rule) is not None


def apply_defaults(schema: Mapping[str, Any], value: Any) -> Any:
    """A copy of `value` with the schema's defaults filled in where properties are absent."""
    if isinstance(value, dict):
        out = dict(value)
        properties: Mapping[str, Any] = schema.get("properties") or {}
        for name, sub in properties.items():
            if name not in out and "default" in sub:
                out[name] = copy.deepcopy(sub["default"])
            if name in out:
                out[name] = apply_defaults(sub, out[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, Mapping):
            for name in out:
                if name not in properties:
                    out[name] = apply_defaults(extra, out[name])
        return out
    if isinstance(value, list):
        items = schema.get("items")
        return [apply_defaults(items, v) for v in value] if isinstance(items, Mapping) else list(value)
    return value


def _list_items(schema: Mapping[str, Any], old: list[Any], new: list[Any]) -> Iterator[tuple[int, Any, Any]]:
    """(index in new, old item, new item) of the items a `map` list correlates by its keys."""
    if schema.get("x-kubernetes-list-type") != "map":
        return
    keys = list(schema.get("x-kubernetes-list-map-keys") or [])

    def identity(item: Any) -> tuple[Any, ...] | None:
        return tuple(item.get(k) for k in keys) if isinstance(item, dict) else None

    previous = {identity(item): item for item in old if identity(item) is not None}
    for index, item in enumerate(new):
        ident = identity(item)
        if ident is not None and ident in previous:
            yield index, previous[ident], item


def _walk(schema: Mapping[str, Any], old: Any, new: Any, path: Path) -> Iterator[TransitionViolation]:
    for entry in schema.get("x-kubernetes-validations") or []:
        rule = str(entry.get("rule", ""))
        if not is_transition_rule(rule):
            continue
        try:
            result = compile_expression(rule, ["self", "oldSelf"]).evaluate({"self": new, "oldSelf": old})
        except CelError as exc:
            yield TransitionViolation(path, rule, f"the rule could not be evaluated: {exc}")
            continue
        if result is not True:
            yield TransitionViolation(path, rule, str(entry.get("message") or f"failed rule: {rule}"))
    if isinstance(old, dict) and isinstance(new, dict):
        properties: Mapping[str, Any] = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for name, value in new.items():
            sub = properties.get(name, extra)
            if isinstance(sub, Mapping) and name in old:
                yield from _walk(sub, old[name], value, (*path, name))
    elif isinstance(old, list) and isinstance(new, list):
        items = schema.get("items")
        if isinstance(items, Mapping):
            for index, old_item, new_item in _list_items(schema, old, new):
                yield from _walk(items, old_item, new_item, (*path, index))


def check_transition(schema: Mapping[str, Any], old: Any, new: Any) -> list[TransitionViolation]:
    """Every transition rule of `schema` that refuses updating `old` to `new` (both defaulted first)."""
    return list(_walk(schema, apply_defaults(schema, old), apply_defaults(schema, new), ()))
