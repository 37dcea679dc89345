"""The text `agentplane validate` prints for a validated spec tree, shared by every command that shows
spec problems the same way (`agentplane up` prints an invalid tree's problems with it)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from .specs import Report


def report_summary(report: Report, paths: Sequence[Path]) -> str:
    """One line: what was checked (files, documents, objects by kind) and how many problems."""
    counts = Counter(loaded.resource.kind_name for loaded in report.specs_objects())
    parts = [f"{n} {kind}{'s' if n != 1 else ''}" for kind, n in sorted(counts.items())]
    if report.generated:
        parts.append(f"{report.generated} generated CRD{'s' if report.generated != 1 else ''}")
    where = " ".join(str(p) for p in paths)
    checked = (
        f"{where}: {report.files} files, {report.documents} documents ({', '.join(parts) or 'no objects'})"
    )
    errors, warnings = len(report.errors), len(report.warnings)
    if not errors and not warnings:
        return f"{checked}: no problems"
    return f"{checked}: {errors} error{'s' if errors != 1 else ''}, {warnings} warning{'s' if warnings != 1 else ''}"


def format_report(report: Report, paths: Sequence[Path]) -> str:
    """`agentplane validate`'s text output: one line per problem, then the summary."""
    lines = [problem.format() for problem in report.problems]
    lines.append(report_summary(report, paths))
    return "\n".join(lines) + "\n"
