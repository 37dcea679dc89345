"""Prompt templates: `{{ name }}` placeholders, which variables a template uses, and rendering."""

from __future__ import annotations

import re
from collections.abc import Mapping

PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
VARIABLE_NAME = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*$")
BUILTIN_VARIABLES = frozenset({"tenant", "agent", "date"})
"""Variables every template may use without declaring them; the runtime fills them in."""


class TemplateError(ValueError):
    """A placeholder that is not `{{ name }}`, or a variable with no value."""


def variables_used(template: str) -> tuple[set[str], list[str]]:
    """The variable names a template uses, and the placeholders that are malformed."""
    used: set[str] = set()
    malformed: list[str] = []
    for match in PLACEHOLDER.finditer(template):
        name = VARIABLE_NAME.match(match.group(1))
        if name is None:
            malformed.append(match.group(0))
        else:
            used.add(name.group(1))
    return used, malformed


def render(template: str, values: Mapping[str, str]) -> str:
    """The template with every `{{ name }}` replaced by its value."""

    def replace(match: re.Match[str]) -> str:
        name = VARIABLE_NAME.match(match.group(1))
        if name is None:
            raise TemplateError(f"malformed placeholder {match.group(0)!r} (expected {{{{ name }}}})")
        try:
            return values[name.group(1)]
        except KeyError:
            raise TemplateError(f"no value for variable {name.group(1)!r}") from None

    return PLACEHOLDER.sub(replace, template)
