"""The model's tool arguments, checked against the tool's parameters before any call.

A model makes its arguments up; those that do not match the tool's JSON Schema (Draft 2020-12,
formats checked) never reach the tool: the model is told what is wrong, at which path, and can
correct itself within `maxToolCalls`. The schema checked is the one the model is offered
(`parameters_of`). Validators are compiled once per resolved config: the config of an agent
version is immutable, and a new version is a new `AgentConfig` object.
"""

from __future__ import annotations

import json
import re
import weakref
from dataclasses import dataclass
from typing import Any

from jsonschema.exceptions import best_match

from agentplane_platform.config import AgentConfig, ResolvedBuiltinTool, ResolvedTool
from agentplane_platform.specs import dotted
from agentplane_platform.tool_schema import arguments_validator, parameters_problems

CALCULATOR_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"expression": {"type": "string", "description": "Arithmetic, e.g. (2 + 3) * 4 / 7"}},
    "required": ["expression"],
}
RETRIEVAL_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"query": {"type": "string", "description": "What to look up in the knowledge bases"}},
    "required": ["query"],
}
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}

MAX_ERRORS = 5
"""Errors listed to the model per call; enough to fix several at once, short enough to read."""
MAX_ERROR_CHARS = 300
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


class InvalidArguments(Exception):
    """The model's arguments do not match the tool's parameters; the message is what it is told."""


class UnusableParameters(Exception):
    """The tool's own schema is broken (`validate` and the operator refuse it; an old config may not)."""


def parameters_of(tool: ResolvedTool) -> dict[str, Any]:
    """The JSON Schema the model is offered for `tool`, and that its arguments are checked against."""
    if tool.parameters:  # `{}` is offered as an object without properties, as before
        return tool.parameters
    if isinstance(tool, ResolvedBuiltinTool):
        return CALCULATOR_PARAMETERS if tool.builtin == "calculator" else RETRIEVAL_PARAMETERS
    return NO_PARAMETERS


@dataclass(frozen=True, slots=True)
class _Check:
    validator: Any  # jsonschema.Draft202012Validator, or None when the schema is unusable
    unusable: str | None


def _compile(tool: ResolvedTool) -> _Check:
    schema = parameters_of(tool)
    problems = parameters_problems(schema)
    if problems:
        where = "; ".join(f"{dotted(('parameters', *p.path))}: {p.message}" for p in problems[:3])
        return _Check(
            None, f"the tool cannot be called: its parameters are not a usable JSON Schema ({where})"
        )
    return _Check(arguments_validator(schema), None)


class _Compiled:
    """The validators of each live config's tools, by config object (compared by identity)."""

    def __init__(self) -> None:
        self._by_config: dict[int, tuple[weakref.ref[AgentConfig], dict[str, _Check]]] = {}

    def checks(self, config: AgentConfig) -> dict[str, _Check]:
        key = id(config)
        entry = self._by_config.get(key)
        if entry is not None and entry[0]() is config:
            return entry[1]
        checks = {tool.name: _compile(tool) for tool in config.tools}
        self._by_config[key] = (weakref.ref(config, lambda _: self._by_config.pop(key, None)), checks)
        return checks

    def __len__(self) -> int:
        return len(self._by_config)


_COMPILED = _Compiled()


def compiled_configs() -> int:
    """How many configs have compiled validators (the ones still alive)."""
    return len(_COMPILED)


def _where(path: Any) -> str:
    out = "arguments"
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _NAME.match(part):
            out += f".{part}"
        else:
            out += f"[{json.dumps(part)}]"
    return out


def _say(error: Any) -> str:
    if error.context:  # anyOf/oneOf: the closest alternative says more than "not valid under any"
        error = best_match(error.context)
    message = str(error.message)
    if len(message) > MAX_ERROR_CHARS:
        message = message[: MAX_ERROR_CHARS - 3] + "..."
    return f"{_where(error.absolute_path)}: {message}"


def checked_arguments(config: AgentConfig, tool: ResolvedTool, arguments: str) -> dict[str, Any]:
    """The model's arguments as an object that matches the tool's parameters.

    Raises `InvalidArguments` (not JSON, not an object, or not matching the schema: every error,
    up to `MAX_ERRORS`, with its JSON path) or `UnusableParameters`.
    """
    try:
        args = json.loads(arguments or "{}")
    except ValueError as exc:
        raise InvalidArguments(f"the arguments are not valid JSON ({exc})") from None
    if not isinstance(args, dict):
        raise InvalidArguments(f"the arguments must be a JSON object, not {type(args).__name__}")
    check = _COMPILED.checks(config).get(tool.name) or _compile(tool)
    if check.unusable is not None:
        raise UnusableParameters(check.unusable)
    errors = [_say(error) for error in check.validator.iter_errors(args)]
    if errors:
        more = f" (and {len(errors) - MAX_ERRORS} more)" if len(errors) > MAX_ERRORS else ""
        raise InvalidArguments(
            "the arguments do not match the tool's parameters: " + "; ".join(errors[:MAX_ERRORS]) + more
        )
    return args


__all__ = [
    "CALCULATOR_PARAMETERS",
    "NO_PARAMETERS",
    "RETRIEVAL_PARAMETERS",
    "InvalidArguments",
    "UnusableParameters",
    "checked_arguments",
    "compiled_configs",
    "parameters_of",
]
