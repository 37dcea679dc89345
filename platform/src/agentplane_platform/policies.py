"""The admission policies of `policies/`, evaluated offline as the API server evaluates them.

A policies directory holds ValidatingAdmissionPolicies with their bindings (`*.yaml`), the
parameter objects of each environment (`params/<environment>/*.yaml`, TierLimits) and test cases
(`tests/*.yaml`). :func:`load_policies` reads one environment of it into a :class:`PolicySet`;
:meth:`PolicySet.evaluate` gives what the API server would deny for an object, and why.

What is reproduced of the API server's admission, and how:

- matching: a policy's `matchConstraints.resourceRules` (API group, resource, CREATE/UPDATE) and
  its `matchConditions`; a binding's `matchResources.namespaceSelector` against the labels of the
  object's namespace (`tenant_namespace_labels`), not applied to cluster-scoped objects, as the API
  server does; `objectSelector` against the object's labels;
- parameters: `paramRef.name` or `paramRef.selector` over the environment's TierLimits, with
  `parameterNotFoundAction`; a policy is evaluated once per selected parameter object;
- the object as admission sees it: the CRD's structural defaults are applied first;
- validations in order, `message`/`messageExpression`, `reason` (and, for `agentplane validate`'s
  file:line, the field each is about from the `agentplane.io/field-paths` annotation); an expression
  that fails to evaluate denies under `failurePolicy: Fail` (the default) with the API server's
  wording. `variables` and the `authorizer` are not supported (a policy using them does not load).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from copy import deepcopy
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .api.v1alpha1 import GROUP, KINDS, TIER_LABEL, Resource, TierLimits
from .cel import CelError, CompiledExpression, compile_expression
from .schemas import openapi_schema
from .specs import Document, Problem, load_yaml_models
from .specs._yaml import decode, read_documents

__all__ = [
    "ADMISSION_API",
    "Binding",
    "Case",
    "CaseResult",
    "Policy",
    "PolicyError",
    "PolicySet",
    "Validation",
    "Violation",
    "field_path",
    "load_cases",
    "load_policies",
    "run_case",
    "summarize",
]

ADMISSION_API = "admissionregistration.k8s.io/v1"
VARIABLES = ("object", "oldObject", "params", "request", "namespaceObject")
"""What a policy's expressions may refer to offline."""
VALIDATION_FIELDS = frozenset({"expression", "message", "messageExpression", "reason"})
"""The fields of a ValidatingAdmissionPolicy validation (admissionregistration.k8s.io/v1)."""
FIELD_PATHS_ANNOTATION = "agentplane.io/field-paths"
"""A policy's annotation: a JSON list with the field path (or null) of each of its validations."""


class PolicyError(Exception):
    """A policies directory that cannot be used: the message names the file and line and what to fix."""


@dataclass(frozen=True, slots=True)
class Violation:
    """One validation of one policy that denies an object, as the API server would report it."""

    policy: str
    binding: str
    message: str
    field_path: str | None
    reason: str

    def admission_message(self) -> str:
        """The whole message the API server answers with."""
        return f"ValidatingAdmissionPolicy '{self.policy}' with binding '{self.binding}' denied request: {self.message}"


@dataclass(frozen=True, slots=True)
class Validation:
    expression: CompiledExpression
    message: str | None
    message_expression: CompiledExpression | None
    field_path: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class Policy:
    """One ValidatingAdmissionPolicy."""

    name: str
    file: str
    line: int
    rules: tuple[tuple[frozenset[str], frozenset[str], frozenset[str]], ...]
    """(API groups, resources, operations) it matches."""
    match_conditions: tuple[tuple[str, CompiledExpression], ...]
    validations: tuple[Validation, ...]
    param_kind: str | None
    fail_on_error: bool


@dataclass(frozen=True, slots=True)
class Binding:
    """One ValidatingAdmissionPolicyBinding."""

    name: str
    policy: str
    file: str
    line: int
    param_name: str | None
    param_selector: Mapping[str, Any] | None
    deny_without_params: bool
    namespace_selector: Mapping[str, Any] | None
    object_selector: Mapping[str, Any] | None
    deny: bool


@dataclass(slots=True)
class PolicySet:
    """The policies, bindings and parameters of one environment of a policies directory."""

    directory: Path
    environment: str
    policies: dict[str, Policy] = field(default_factory=dict)
    bindings: list[Binding] = field(default_factory=list)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    """TierLimits objects by name."""

    def evaluate(
        self,
        obj: Mapping[str, Any],
        *,
        old: Mapping[str, Any] | None = None,
        namespace_labels: Mapping[str, str] | None = None,
    ) -> list[Violation]:
        """What the API server would deny of a CREATE (or, with `old`, an UPDATE) of `obj` in a
        namespace labelled `namespace_labels`: one violation per failing validation, per binding."""
        kind = KINDS.get(str(obj.get("kind")))
        api_version = str(obj.get("apiVersion", ""))
        group = api_version.rpartition("/")[0] if "/" in api_version else ""
        resource = kind.plural if kind is not None and group == GROUP else str(obj.get("kind", "")).lower()
        operation = "CREATE" if old is None else "UPDATE"
        namespaced = kind.namespaced if kind is not None else bool(_meta(obj).get("namespace"))
        admitted = _with_defaults(obj, kind)
        old_admitted = _with_defaults(old, kind) if old is not None else None
        request = {
            "operation": operation,
            "kind": {"group": group, "version": api_version.rpartition("/")[2], "kind": obj.get("kind")},
            "resource": {"group": group, "version": api_version.rpartition("/")[2], "resource": resource},
            "name": _meta(obj).get("name"),
            "namespace": _meta(obj).get("namespace"),
        }
        namespace_object = (
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": _meta(obj).get("namespace"), "labels": dict(namespace_labels or {})},
            }
            if namespaced
            else None
        )
        violations: list[Violation] = []
        for binding in self.bindings:
            policy = self.policies.get(binding.policy)
            if policy is None or not binding.deny:
                continue
            if not any(
                (group in groups or "*" in groups)
                and (resource in resources or "*" in resources)
                and (operation in operations or "*" in operations)
                for groups, resources, operations in policy.rules
            ):
                continue
            if namespaced and binding.namespace_selector is not None:
                if not _selects(binding.namespace_selector, namespace_labels or {}):
                    continue
            if binding.object_selector is not None and not _selects(
                binding.object_selector, _meta(obj).get("labels") or {}
            ):
                continue
            params: list[dict[str, Any] | None]
            if policy.param_kind is None:
                params = [None]
            elif binding.param_name is not None:
                found = self.params.get(binding.param_name)
                params = [found] if found is not None else []
            else:
                params = [
                    p
                    for _, p in sorted(self.params.items())
                    if _selects(binding.param_selector or {}, _meta(p).get("labels") or {})
                ]
            if not params:
                if binding.deny_without_params:
                    violations.append(
                        Violation(
                            policy.name,
                            binding.name,
                            "failed to configure binding: no params found for policy binding with `Deny` "
                            "parameterNotFoundAction",
                            None,
                            "Forbidden",
                        )
                    )
                continue
            for param in params:
                variables: dict[str, object] = {
                    "object": admitted,
                    "oldObject": old_admitted,
                    "params": param,
                    "request": request,
                    "namespaceObject": namespace_object,
                }
                violations.extend(_validate(policy, binding, variables))
        return violations


def _validate(policy: Policy, binding: Binding, variables: Mapping[str, object]) -> list[Violation]:
    for name, condition in policy.match_conditions:
        try:
            if condition.evaluate(variables) is not True:
                return []
        except CelError as error:
            if not policy.fail_on_error:
                return []
            return [
                Violation(
                    policy.name,
                    binding.name,
                    f"failed to evaluate match condition {name!r}: {error}",
                    None,
                    "Forbidden",
                )
            ]
    violations: list[Violation] = []
    for validation in policy.validations:
        try:
            result = validation.expression.evaluate(variables)
        except CelError as error:
            if policy.fail_on_error:
                violations.append(
                    Violation(
                        policy.name,
                        binding.name,
                        f"expression '{validation.expression.expression}' resulted in error: {error}",
                        validation.field_path,
                        "Invalid",
                    )
                )
            continue
        if result is True:
            continue
        message = validation.message
        if validation.message_expression is not None:
            try:
                computed = validation.message_expression.evaluate(variables)
            except CelError:
                computed = None
            if isinstance(computed, str) and computed.strip() and "\n" not in computed:
                message = computed
        if not message:
            message = f"failed expression: {validation.expression.expression}"
        violations.append(
            Violation(policy.name, binding.name, message, validation.field_path, validation.reason)
        )
    return violations


def _meta(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    meta = obj.get("metadata") if obj is not None else None
    return meta if isinstance(meta, Mapping) else {}


def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against labels."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for requirement in selector.get("matchExpressions") or []:
        key, operator, values = requirement["key"], requirement["operator"], requirement.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def _apply_defaults(value: Any, schema: Mapping[str, Any]) -> Any:
    """The API server's structural defaulting: absent properties with a `default` are set, then
    every present object and array is defaulted in turn."""
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        for name, sub in properties.items():
            if name not in value and "default" in sub:
                value[name] = deepcopy(sub["default"])
        for name, item in value.items():
            if name in properties:
                value[name] = _apply_defaults(item, properties[name])
            elif isinstance(schema.get("additionalProperties"), dict):
                value[name] = _apply_defaults(item, schema["additionalProperties"])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_apply_defaults(item, schema["items"]) for item in value]
    return value


def _with_defaults(obj: Mapping[str, Any] | None, kind: type[Resource] | None) -> dict[str, Any] | None:
    if obj is None:
        return None
    copy = deepcopy(dict(obj))
    if kind is None:
        return copy
    result: dict[str, Any] = _apply_defaults(copy, openapi_schema(kind))
    return result


_SEGMENT = re.compile(r"\.([A-Za-z_$][\w$-]*)|\[(\d+)\]|\['([^']*)'\]")


def field_path(path: str) -> tuple[str | int, ...]:
    """A validation's field path (`.spec.model.fallbacks[0]`, `.metadata.labels['a/b']`, from the
    `agentplane.io/field-paths` annotation) as a path into the object's document."""
    parts: list[str | int] = []
    position = 0
    while position < len(path):
        match = _SEGMENT.match(path, position)
        if match is None:
            break
        name, index, key = match.groups()
        parts.append(int(index) if index is not None else (name if name is not None else key))
        position = match.end()
    return tuple(parts)


# --- loading ----------------------------------------------------------------------------------------


def _read(path: Path) -> list[Document]:
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise PolicyError(f"{path}: cannot read: {error.strerror}") from None
    text, problem = decode(raw, str(path))
    if problem is not None or text is None:
        raise PolicyError(problem.format() if problem else f"{path}: unreadable")
    documents, problems = read_documents(text, str(path))
    if problems:
        raise PolicyError("\n".join(p.format() for p in problems))
    return [d for d in documents if d.data is not None]


def _where(document: Document, *path: str | int) -> str:
    position = document.position(path)
    return f"{document.file}:{position.line}:{position.column}"


def _compile(document: Document, path: tuple[str | int, ...], expression: object) -> CompiledExpression:
    if not isinstance(expression, str) or not expression.strip():
        raise PolicyError(f"{_where(document, *path)}: expected a CEL expression")
    try:
        return compile_expression(expression, VARIABLES)
    except CelError as error:
        raise PolicyError(f"{_where(document, *path)}: {error}") from None


def _field_paths(document: Document, count: int) -> list[str | None]:
    """The field each validation is about, from the policy's `agentplane.io/field-paths` annotation:
    a JSON list with one path (or null) per validation. (The API server has no place for it in a
    validation; offline it puts a denial at its field's file:line.)"""
    annotations = (document.data.get("metadata") or {}).get("annotations") or {}
    raw = annotations.get(FIELD_PATHS_ANNOTATION)
    if raw is None:
        return [None] * count
    where = _where(document, "metadata", "annotations", FIELD_PATHS_ANNOTATION)
    try:
        paths = json.loads(raw)
    except (TypeError, ValueError):
        paths = None
    if (
        not isinstance(paths, list)
        or len(paths) != count
        or not all(p is None or isinstance(p, str) for p in paths)
    ):
        raise PolicyError(
            f"{where}: expected a JSON list of {count} field paths (or null), one per validation"
        )
    return paths


def _policy(document: Document) -> Policy:
    data: dict[str, Any] = document.data
    name = str((data.get("metadata") or {}).get("name", ""))
    spec = data.get("spec") or {}
    if spec.get("variables"):
        raise PolicyError(f"{_where(document, 'spec', 'variables')}: variables are not supported offline")
    rules = []
    for rule in (spec.get("matchConstraints") or {}).get("resourceRules") or []:
        rules.append(
            (
                frozenset(rule.get("apiGroups") or []),
                frozenset(rule.get("resources") or []),
                frozenset(rule.get("operations") or []),
            )
        )
    if not rules:
        raise PolicyError(f"{_where(document, 'spec')}: spec.matchConstraints.resourceRules is required")
    conditions = tuple(
        (
            str(c.get("name")),
            _compile(document, ("spec", "matchConditions", i, "expression"), c.get("expression")),
        )
        for i, c in enumerate(spec.get("matchConditions") or [])
    )
    raw_validations = spec.get("validations") or []
    field_paths = _field_paths(document, len(raw_validations))
    validations = []
    for i, v in enumerate(raw_validations):
        at = ("spec", "validations", i)
        unknown = sorted(set(v) - VALIDATION_FIELDS)
        if unknown:
            # The API server refuses them (strict field validation): the policy would not install.
            raise PolicyError(
                f"{_where(document, *at, unknown[0])}: a ValidatingAdmissionPolicy validation has no "
                f"{', '.join(unknown)} (only {', '.join(sorted(VALIDATION_FIELDS))}); the field a "
                f"validation is about goes in the {FIELD_PATHS_ANNOTATION} annotation"
            )
        message_expression = v.get("messageExpression")
        validations.append(
            Validation(
                _compile(document, (*at, "expression"), v.get("expression")),
                v.get("message"),
                _compile(document, (*at, "messageExpression"), message_expression)
                if message_expression
                else None,
                field_paths[i],
                str(v.get("reason") or "Invalid"),
            )
        )
    if not validations:
        raise PolicyError(f"{_where(document, 'spec')}: a policy needs spec.validations")
    param_kind = spec.get("paramKind")
    if param_kind is not None and param_kind.get("kind") != TierLimits.kind_name:
        raise PolicyError(
            f"{_where(document, 'spec', 'paramKind')}: paramKind must be {TierLimits.kind_name} (the only parameters "
            "kept in policies/params)"
        )
    return Policy(
        name,
        document.file,
        document.start.line,
        tuple(rules),
        conditions,
        tuple(validations),
        param_kind.get("kind") if param_kind else None,
        spec.get("failurePolicy", "Fail") == "Fail",
    )


def _binding(document: Document) -> Binding:
    data: dict[str, Any] = document.data
    spec = data.get("spec") or {}
    param_ref = spec.get("paramRef") or {}
    match = spec.get("matchResources") or {}
    actions = spec.get("validationActions") or []
    if not spec.get("policyName"):
        raise PolicyError(f"{_where(document, 'spec')}: spec.policyName is required")
    return Binding(
        str((data.get("metadata") or {}).get("name", "")),
        str(spec["policyName"]),
        document.file,
        document.start.line,
        param_ref.get("name"),
        param_ref.get("selector"),
        param_ref.get("parameterNotFoundAction", "Deny") == "Deny",
        match.get("namespaceSelector"),
        match.get("objectSelector"),
        "Deny" in actions,
    )


def _yaml_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml"))


def policy_environments(directory: Path) -> list[str]:
    """The environments of a policies directory: the folders of its `params/`, sorted."""
    params = directory / "params"
    return sorted(p.name for p in params.iterdir() if p.is_dir()) if params.is_dir() else []


def load_policies(directory: Path, environment: str) -> PolicySet:
    """Every policy and binding of `directory` and the parameters of `params/<environment>/`;
    `PolicyError` (with file:line:column) for a missing directory or environment, an unreadable
    or malformed file, an expression that does not compile, or a binding to no policy."""
    if not directory.is_dir():
        raise PolicyError(f"{directory}: no such policies directory")
    params_root = directory / "params"
    environments = policy_environments(directory)
    if environment not in environments:
        raise PolicyError(
            f"{params_root / environment}: unknown policy environment {environment!r} "
            f"(environments: {', '.join(environments) or 'none'})"
        )
    result = PolicySet(directory, environment)
    for path in _yaml_files(directory):
        for document in _read(path):
            data = document.data
            if not isinstance(data, dict) or data.get("apiVersion") != ADMISSION_API:
                raise PolicyError(
                    f"{_where(document)}: expected a ValidatingAdmissionPolicy or ValidatingAdmissionPolicyBinding "
                    f"of {ADMISSION_API}"
                )
            if data.get("kind") == "ValidatingAdmissionPolicy":
                policy = _policy(document)
                if policy.name in result.policies:
                    raise PolicyError(
                        f"{_where(document, 'metadata', 'name')}: policy {policy.name} is defined twice"
                    )
                result.policies[policy.name] = policy
            elif data.get("kind") == "ValidatingAdmissionPolicyBinding":
                result.bindings.append(_binding(document))
            else:
                raise PolicyError(f"{_where(document, 'kind')}: unexpected kind {data.get('kind')!r}")
    for binding in result.bindings:
        if binding.policy not in result.policies:
            raise PolicyError(
                f"{binding.file}:{binding.line}: binding {binding.name} names no policy {binding.policy!r}"
            )
    for path in _yaml_files(params_root / environment):
        for document in _read(path):
            try:
                limits = TierLimits.model_validate(document.data, by_alias=True, by_name=False)
            except ValidationError as error:
                first = error.errors(include_url=False)[0]
                where = _where(document, *first["loc"])
                raise PolicyError(f"{where}: not a valid TierLimits: {first['msg']}") from None
            result.params[limits.metadata.name] = document.data
    return result


@lru_cache(maxsize=8)
def _cached_policies(directory: Path, environment: str) -> PolicySet:
    return load_policies(directory, environment)


# --- test cases -------------------------------------------------------------------------------------


class _CaseSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1)
    environment: str = "prod"
    tier: str | None = None
    object: dict[str, Any]
    old_object: dict[str, Any] | None = Field(default=None, alias="oldObject")
    expect: Literal["admit", "deny"]
    message: str | None = None


class _CaseFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: str = Field(min_length=1)
    cases: list[_CaseSpec] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class Case:
    """One case of `policies/tests/<policy>.yaml`: an object (and parameters) and the verdict of one policy."""

    file: str
    line: int
    policy: str
    name: str
    environment: str
    tier: str | None
    object: dict[str, Any]
    old_object: dict[str, Any] | None
    expect: Literal["admit", "deny"]
    message: str | None


@dataclass(frozen=True, slots=True)
class CaseResult:
    """What the policy decided for a case, against what the case expects."""

    case: Case
    verdict: Literal["admit", "deny"]
    message: str | None
    """The message of the policy's first violation (what the API server answers), if it denied."""
    error: str | None = None
    """Why the case could not be run (its environment does not load, its policy does not exist)."""

    @property
    def passed(self) -> bool:
        expected = self.case
        return (
            self.error is None
            and self.verdict == expected.expect
            and (expected.expect == "admit" or self.message == expected.message)
        )

    def describe(self) -> str:
        """Why the case failed, in one line."""
        if self.error is not None:
            return self.error
        expected = self.case.expect + (f" {self.case.message!r}" if self.case.expect == "deny" else "")
        actual = self.verdict + (f" {self.message!r}" if self.verdict == "deny" else "")
        return f"expected {expected}, got {actual}"


def load_cases(directory: Path) -> list[Case]:
    """Every case of the `*.yaml` files of `directory` (a policies directory's `tests/`);
    `PolicyError` with file:line:column for a malformed file or a deny case without a message."""
    if not directory.is_dir():
        raise PolicyError(f"{directory}: no such directory of policy test cases")
    cases: list[Case] = []
    problems: list[Problem] = []
    for path in _yaml_files(directory):
        typed, found = load_yaml_models(path, _CaseFile)
        problems.extend(found)
        for document, case_file in typed:
            for index, spec in enumerate(case_file.cases):
                position = document.position(("cases", index))
                if spec.expect == "deny" and not spec.message:
                    problems.append(
                        Problem(document.file, position, f"case {spec.name!r}: a deny case needs the message")
                    )
                    continue
                cases.append(
                    Case(
                        document.file,
                        position.line,
                        case_file.policy,
                        spec.name,
                        spec.environment,
                        spec.tier,
                        spec.object,
                        spec.old_object,
                        spec.expect,
                        spec.message,
                    )
                )
    if problems:
        raise PolicyError("\n".join(p.format() for p in problems))
    return cases


def run_case(policies_dir: Path, case: Case) -> CaseResult:
    """Evaluate a case's object against its environment's policies (as if in a namespace labelled
    with the case's tier); the verdict and first message of the case's policy."""
    try:
        policies = _cached_policies(policies_dir.resolve(), case.environment)
    except PolicyError as error:
        return CaseResult(case, "admit", None, str(error))
    if case.policy not in policies.policies:
        return CaseResult(case, "admit", None, f"no policy {case.policy!r} in {policies_dir}")
    labels = {TIER_LABEL: case.tier} if case.tier is not None else {}
    violations = [
        v
        for v in policies.evaluate(case.object, old=case.old_object, namespace_labels=labels)
        if v.policy == case.policy
    ]
    if not violations:
        return CaseResult(case, "admit", None)
    return CaseResult(case, "deny", violations[0].message)


def summarize(results: Sequence[CaseResult]) -> tuple[str, bool]:
    """A gator-style report of case results: per policy, cases passed and failed, each failure
    with its file:line; and whether all passed."""
    lines: list[str] = []
    by_policy: dict[str, list[CaseResult]] = {}
    for result in results:
        by_policy.setdefault(result.case.policy, []).append(result)
    for policy, policy_results in sorted(by_policy.items()):
        failed = [r for r in policy_results if not r.passed]
        status = "ok" if not failed else "FAIL"
        lines.append(f"{status:4} {policy}: {len(policy_results) - len(failed)} passed, {len(failed)} failed")
        for result in failed:
            lines.append(
                f"       {result.case.file}:{result.case.line}: {result.case.name}: {result.describe()}"
            )
    passed = sum(r.passed for r in results)
    lines.append(f"{passed}/{len(results)} cases passed, {len(by_policy)} policies")
    return "\n".join(lines), passed == len(results)
