"""CRDs and JSON Schemas derived from the spec API's pydantic models.

The models are the single source of truth: the CRD's structural OpenAPI schema (with its CEL
rules, defaults and descriptions) and the editor JSON Schema are both computed from them here.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from .api.v1alpha1 import GROUP, KINDS, VERSION, Resource

JsonDict = dict[str, Any]

CATEGORY = "agentplane"
PART_OF = {"app.kubernetes.io/part-of": "agentplane"}
SCHEMA_BASE_URL = "https://agentplane.io/schemas/v1alpha1"

_DROP = {"title", "discriminator"}


class SchemaError(Exception):
    """A model uses a construct that has no structural-schema form."""


def _resolve(node: JsonDict, defs: JsonDict) -> JsonDict:
    """Inline a `$ref`, keeping the sibling keys (a field's description, default)."""
    ref = node["$ref"]
    target: JsonDict = copy.deepcopy(defs[ref.rsplit("/", 1)[-1]])
    for key, value in node.items():
        if key != "$ref":
            target[key] = value
    return target


def _merge_variants(node: JsonDict, defs: JsonDict, path: str) -> JsonDict:
    """A discriminated union as one object schema plus CEL rules on the discriminator.

    Structural schemas cannot branch on a value, so the variants' properties are merged and
    the per-variant required/forbidden fields are enforced by `x-kubernetes-validations`.
    """
    tag = node["discriminator"]["propertyName"]
    variants = [_structural(v, defs, path) for v in node["oneOf"]]
    properties: JsonDict = {}
    tags: list[str] = []
    for variant in variants:
        tags.extend(variant["properties"][tag]["enum"])
        for name, schema in variant["properties"].items():
            properties.setdefault(name, schema)
    present_sets = [set(v["properties"]) for v in variants]
    common_present = set.intersection(*present_sets)
    for name in properties.keys() - common_present:
        # A default of one variant's field would be applied to every variant by the API server.
        properties[name] = {k: v for k, v in properties[name].items() if k != "default"}
    properties[tag] = {
        "type": "string",
        "enum": tags,
        "description": "Variant of the object: " + ", ".join(f"`{t}`" for t in tags) + ".",
    }
    required_sets = [set(v.get("required", ())) for v in variants]
    common_required = set.intersection(*required_sets)
    rules: list[JsonDict] = []
    for variant, required, present in zip(variants, required_sets, present_sets, strict=True):
        (value,) = variant["properties"][tag]["enum"]
        for name in properties:
            if name in common_required or (name in common_present and name not in required):
                continue
            if name in required:
                rules.append(
                    {
                        "rule": f"self.{tag} != '{value}' || has(self.{name})",
                        "message": f"{name} is required when {tag} is {value}",
                    }
                )
            elif name not in present:
                rules.append(
                    {
                        "rule": f"self.{tag} != '{value}' || !has(self.{name})",
                        "message": f"{name} is not allowed when {tag} is {value}",
                    }
                )
    merged: JsonDict = {"type": "object", "properties": properties, "required": sorted(common_required)}
    for key, value in node.items():
        if key not in {"oneOf", "discriminator", "$ref"} | _DROP:
            merged[key] = value
    if rules:
        merged["x-kubernetes-validations"] = rules
    return merged


def _structural(node: JsonDict, defs: JsonDict, path: str = "") -> JsonDict:
    """A pydantic JSON Schema node as a Kubernetes structural schema node."""
    if "$ref" in node:
        node = _resolve(node, defs)
    if "oneOf" in node and "discriminator" in node:
        return _merge_variants(node, defs, path)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise SchemaError(f"{path or '<root>'}: untagged unions have no structural form")
        merged = {k: v for k, v in node.items() if k != "anyOf"}
        option = _resolve(options[0], defs) if "$ref" in options[0] else options[0]
        node = {**option, **merged}
    out: JsonDict = {}
    for key, value in node.items():
        if key in _DROP or key == "$defs":
            continue
        if key == "default" and value is None:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "properties":
            out["properties"] = {
                name: _structural(sub, defs, f"{path}.{name}") for name, sub in value.items()
            }
        elif key == "items":
            out["items"] = _structural(value, defs, f"{path}[]")
        elif key == "additionalProperties":
            if isinstance(value, dict):
                out["additionalProperties"] = _structural(value, defs, f"{path}.*")
            # `false` is the pruning default of a structural schema, `true` is preserve-unknown-fields.
        else:
            out[key] = value
    if out.get("x-kubernetes-preserve-unknown-fields"):
        out.pop("properties", None)
    return out


def _name_rule(kind: type[Resource]) -> JsonDict:
    pattern, max_length, what = kind.name_rule
    return {
        "rule": f"self.metadata.name.size() <= {max_length} && self.metadata.name.matches('{pattern}')",
        "message": f"metadata.name must be {what} of at most {max_length} characters",
    }


@functools.cache
def openapi_schema(kind: type[Resource]) -> JsonDict:
    """The structural `openAPIV3Schema` of a kind (cached: do not mutate it)."""
    source = kind.model_json_schema(by_alias=True, mode="validation")
    defs = source.get("$defs", {})
    spec = _structural(source["properties"]["spec"], defs, ".spec")
    properties: JsonDict = {
        "apiVersion": {"type": "string", "description": "Always `agentplane.io/v1alpha1`."},
        "kind": {"type": "string", "description": f"Always `{kind.kind_name}`."},
        "metadata": {"type": "object"},
        "spec": spec,
    }
    if "status" in source["properties"]:  # TierLimits has none
        properties["status"] = _structural(source["properties"]["status"], defs, ".status")
    return {
        "type": "object",
        "description": kind.__doc__ or "",
        "required": ["spec"],
        "properties": properties,
        "x-kubernetes-validations": [_name_rule(kind)],
    }


def crd(kind: type[Resource]) -> JsonDict:
    """The CustomResourceDefinition of a kind."""
    columns = [
        {
            "name": c.name,
            "type": c.type,
            "jsonPath": c.json_path,
            **({"description": c.description} if c.description else {}),
            **({"priority": c.priority} if c.priority else {}),
        }
        for c in kind.printer_columns
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{kind.plural}.{GROUP}", "labels": dict(PART_OF)},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind.kind_name,
                "listKind": f"{kind.kind_name}List",
                "plural": kind.plural,
                "singular": kind.kind_name.lower(),
                "shortNames": list(kind.short_names),
                **({"categories": [CATEGORY]} if kind.tenant_object else {}),
            },
            "scope": "Namespaced" if kind.namespaced else "Cluster",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema(kind)},
                    **({"subresources": {"status": {}}} if "status" in kind.model_fields else {}),
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


def _strip_k8s(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_k8s(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if isinstance(node, list):
        return [_strip_k8s(v) for v in node]
    return node


def json_schema(kind: type[Resource]) -> JsonDict:
    """The JSON Schema of a spec document of a kind, for editors (`# yaml-language-server: $schema=`)."""
    schema = _strip_k8s(kind.model_json_schema(by_alias=True, mode="validation"))
    schema["properties"].pop("status", None)
    pattern, max_length, what = kind.name_rule
    defs = schema.setdefault("$defs", {})
    meta_ref = schema["properties"]["metadata"]
    meta_name = f"{kind.kind_name}Metadata"
    defs[meta_name] = {
        "allOf": [meta_ref],
        "properties": {
            "name": {"type": "string", "pattern": pattern, "maxLength": max_length, "description": what}
        },
    }
    schema["properties"]["metadata"] = {"$ref": f"#/$defs/{meta_name}"}
    required = schema.get("required", [])
    schema["required"] = ["apiVersion", "kind", *(f for f in required if f not in ("apiVersion", "kind"))]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"{SCHEMA_BASE_URL}/{kind.kind_name.lower()}.json",
        **schema,
    }


def generated_files() -> dict[str, JsonDict]:
    """Every generated artefact, by its path relative to the specs root."""
    files: dict[str, JsonDict] = {}
    for kind in KINDS.values():
        files[f"crds/{GROUP}_{kind.plural}.yaml"] = crd(kind)
        files[f"schemas/{kind.kind_name.lower()}.json"] = json_schema(kind)
    return files
