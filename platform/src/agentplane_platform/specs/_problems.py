"""Problems found in spec files, each pinned to a file, line and column."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """A 1-based line and column in a file."""

    line: int
    column: int


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a spec: where, in which object and field, and what."""

    file: str
    position: Position
    message: str
    kind: str | None = None
    name: str | None = None
    path: str | None = None
    """Dotted field path inside the document (`spec.prompt.version`)."""
    severity: Literal["error", "warning"] = "error"

    @property
    def object(self) -> str | None:
        """`kind/name` of the object the problem is in, when known."""
        if self.kind is None:
            return None
        return f"{self.kind}/{self.name or '?'}"

    def format(self) -> str:
        """`file:line:column: kind/name: field.path: message`, the form editors and CI understand."""
        parts = [f"{self.file}:{self.position.line}:{self.position.column}"]
        if self.severity == "warning":
            parts.append("warning")
        if self.object is not None:
            parts.append(self.object)
        if self.path:
            parts.append(self.path)
        parts.append(self.message)
        return ": ".join(parts)

    def as_json(self) -> dict[str, str | int | None]:
        """A JSON object for CI annotations."""
        return {
            "file": self.file,
            "line": self.position.line,
            "column": self.position.column,
            "severity": self.severity,
            "kind": self.kind,
            "name": self.name,
            "path": self.path,
            "message": self.message,
        }

    def github_annotation(self) -> str:
        """A GitHub Actions workflow command: the problem shown on its line of the pull request's diff."""
        title = ": ".join(part for part in (self.object, self.path) if part) or "agentplane validate"
        properties = ",".join(
            f"{key}={_escape(value, property_=True)}"
            for key, value in (
                ("file", self.file),
                ("line", str(self.position.line)),
                ("col", str(self.position.column)),
                ("title", title),
            )
        )
        return f"::{self.severity} {properties}::{_escape(self.message)}"

    def sort_key(self) -> tuple[str, int, int, str]:
        return (self.file, self.position.line, self.position.column, self.message)


def _escape(text: str, *, property_: bool = False) -> str:
    """Escape text for a workflow command (its data, or with `property_` a property value)."""
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if property_:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


def dotted(path: tuple[str | int, ...]) -> str:
    """`spec.tools[0].name` from `("spec", "tools", 0, "name")`."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
