"""Transition rules offline: correlation of old and new values as the API server does it, defaults
applied first, and the rule's message as the refusal."""

from __future__ import annotations

import copy
from typing import Any

from agentplane_platform.api.v1alpha1 import Prompt
from agentplane_platform.schemas import openapi_schema
from agentplane_platform.transition import apply_defaults, check_transition, is_transition_rule

PROMPT: dict[str, Any] = {
    "apiVersion": "agentplane.io/v1alpha1",
    "kind": "Prompt",
    "metadata": {"name": "support", "namespace": "tenant-acme"},
    "spec": {
        "version": 3,
        "template": "Hello {{ name }}",
        "variables": [{"name": "name"}],
        "previousVersions": [
            {"version": 1, "template": "Hi"},
            {"version": 2, "template": "Hi there"},
        ],
    },
}


def _check(new: dict[str, Any], old: dict[str, Any] = PROMPT) -> list[tuple[tuple[str | int, ...], str]]:
    return [(v.path, v.message) for v in check_transition(openapi_schema(Prompt), old, new)]


def test_unchanged_and_allowed_updates_pass() -> None:
    assert _check(PROMPT) == []
    bumped = copy.deepcopy(PROMPT)
    bumped["spec"]["version"] = 4
    bumped["spec"]["template"] = "Hello again {{ name }}"
    bumped["spec"]["previousVersions"].append({"version": 3, "template": "Hello {{ name }}"})
    assert _check(bumped) == []


def test_a_template_change_needs_a_higher_version() -> None:
    edited = copy.deepcopy(PROMPT)
    edited["spec"]["template"] = "Bye {{ name }}"
    assert _check(edited) == [(("spec",), "changing the template requires a higher version")]
    lowered = copy.deepcopy(PROMPT)
    lowered["spec"]["version"] = 2
    lowered["spec"]["previousVersions"] = [{"version": 1, "template": "Hi"}]
    assert (("spec",), "version must never decrease") in _check(lowered)


def test_list_map_items_correlate_by_their_keys_not_their_index() -> None:
    reordered = copy.deepcopy(PROMPT)
    reordered["spec"]["previousVersions"].reverse()
    assert _check(reordered) == []
    edited = copy.deepcopy(reordered)
    edited["spec"]["previousVersions"][0]["template"] = "Hi there!"  # version 2, now first
    assert _check(edited) == [
        (("spec", "previousVersions", 0), "a prompt version is immutable: bump the version")
    ]
    # an item the old object does not have is not correlated, so its rules do not run: v3 moved to
    # previousVersions with another template passes, as it does on the API server
    moved = copy.deepcopy(PROMPT)
    moved["spec"]["version"] = 4
    moved["spec"]["previousVersions"].append({"version": 3, "template": "not what v3 said"})
    assert _check(moved) == []


def test_maps_and_atomic_lists() -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "labels": {
                "type": "object",
                "additionalProperties": {
                    "type": "string",
                    "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "immutable"}],
                },
            },
            "steps": {
                "type": "array",
                "items": {
                    "type": "object",
                    "x-kubernetes-validations": [{"rule": "self.n == oldSelf.n"}],
                    "properties": {"n": {"type": "integer"}},
                },
            },
        },
    }
    old = {"labels": {"a": "1", "b": "2"}, "steps": [{"n": 1}]}
    new = {"labels": {"a": "1", "b": "3", "c": "4"}, "steps": [{"n": 2}]}
    violations = check_transition(schema, old, new)
    # map entries correlate by key (b changed, c is new); items of an atomic list never correlate
    assert [(v.path, v.message) for v in violations] == [(("labels", "b"), "immutable")]
    keyed = copy.deepcopy(schema)
    keyed["properties"]["steps"] |= {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["id"]}
    keyed["properties"]["steps"]["items"]["properties"]["id"] = {"type": "string"}
    violations = check_transition(keyed, {"steps": [{"id": "x", "n": 1}]}, {"steps": [{"id": "x", "n": 2}]})
    assert [(v.path, v.message) for v in violations] == [(("steps", 0), "failed rule: self.n == oldSelf.n")]


def test_defaults_are_applied_before_the_rules() -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {"mode": {"type": "string", "default": "a"}},
        "x-kubernetes-validations": [{"rule": "self.mode == oldSelf.mode", "message": "mode is immutable"}],
    }
    assert apply_defaults(schema, {}) == {"mode": "a"}
    assert check_transition(schema, {}, {"mode": "a"}) == []
    assert [v.message for v in check_transition(schema, {}, {"mode": "b"})] == ["mode is immutable"]


def test_only_rules_reading_old_self_are_transition_rules() -> None:
    assert is_transition_rule("self.version >= oldSelf.version")
    assert not is_transition_rule("self.oldSelfish == 1")
    assert not is_transition_rule("has(self.host) != has(self.cidr)")
