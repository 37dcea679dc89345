"""The `agentplane` command line: validate, generate, explain, up, chat."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from .explain import ExplainError, explain
from .generate import generate
from .specs import Report, validate_paths


def _summary(report: Report, paths: Sequence[Path]) -> str:
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
    lines.append(_summary(report, paths))
    return "\n".join(lines) + "\n"


def cmd_validate(args: argparse.Namespace, out: TextIO) -> int:
    paths = [Path(p) for p in args.paths] or [Path("specs")]
    report = validate_paths(paths)
    if args.format == "json":
        payload = {
            "ok": report.ok,
            "files": report.files,
            "documents": report.documents,
            "problems": [p.as_json() for p in report.problems],
        }
        out.write(json.dumps(payload, indent=2) + "\n")
    else:
        out.write(format_report(report, paths))
    return 0 if report.ok else 1


def cmd_generate(args: argparse.Namespace, out: TextIO) -> int:
    root = Path(args.specs)
    result = generate(root, check=args.check)
    if args.check:
        for path in result.stale:
            out.write(f"{path}: stale (run `agentplane generate`)\n")
        for path in result.unexpected:
            out.write(f"{path}: not generated from the models (remove it or run `agentplane generate`)\n")
        if result.stale or result.unexpected:
            return 1
        out.write(f"{root}: generated files are up to date\n")
        return 0
    for path in result.written:
        out.write(f"wrote {path}\n")
    for path in result.unexpected:
        out.write(f"removed {path}\n")
    if not result.written and not result.unexpected:
        out.write(f"{root}: generated files are up to date\n")
    return 0


def cmd_explain(args: argparse.Namespace, out: TextIO) -> int:
    try:
        out.write(explain(args.target))
    except ExplainError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    return 0


def _runtime(module: str) -> Any:
    """A module of the agent runtime, which depends on this package (never the other way round), so
    it is imported lazily; None, with the reason printed, when it is not installed."""
    # litellm (imported with the runtime) fetches its cost map from the network unless told not to
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        return importlib.import_module(f"agentplane_runtime.{module}")
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("agentplane_runtime"):
            raise
        sys.stderr.write(
            "error: this command needs the agent runtime (agentplane-runtime); "
            "install it with `uv sync --all-packages` (or `make install`)\n"
        )
        return None


def cmd_up(args: argparse.Namespace, out: TextIO) -> int:
    local = _runtime("local")
    if local is None:
        return 1
    up: Callable[..., int] = local.up
    return up(
        Path(args.path), host=args.host, port=args.port, state=Path(args.state), out=out, watch=args.watch
    )


def cmd_chat(args: argparse.Namespace, out: TextIO) -> int:
    terminal = _runtime("terminal")
    if terminal is None:
        return 1
    chat: Callable[..., int] = terminal.chat
    return chat(
        args.target,
        args.question,
        base_url=args.url,
        state=Path(args.state),
        key=args.key,
        out=out,
        err=sys.stderr,
    )


def parser() -> argparse.ArgumentParser:
    """The argument parser of the `agentplane` command."""
    top = argparse.ArgumentParser(
        prog="agentplane", description="Run AI agents for many tenants, from specs in Git."
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser("validate", help="check spec files: schema, names, references, secrets")
    validate.add_argument("paths", nargs="*", metavar="PATH", help="files or directories (default: specs/)")
    validate.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    validate.set_defaults(run=cmd_validate)

    gen = commands.add_parser("generate", help="write the CRDs and JSON Schemas derived from the spec API")
    gen.add_argument("--check", action="store_true", help="only report stale files; exit 1 when any")
    gen.add_argument(
        "--specs", default="specs", help="specs root holding crds/ and schemas/ (default: specs)"
    )
    gen.set_defaults(run=cmd_generate)

    exp = commands.add_parser("explain", help="documentation of a kind or field, like kubectl explain")
    exp.add_argument("target", metavar="KIND[.FIELD]", help="for example agent.spec.model")
    exp.set_defaults(run=cmd_explain)

    up = commands.add_parser(
        "up", help="serve every agent of the specs locally (SQLite, Qdrant local mode, offline model)"
    )
    up.add_argument("path", nargs="?", default="specs", metavar="PATH", help="spec tree (default: specs/)")
    up.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=8080, help="listen port (default 8080)")
    up.add_argument(
        "--state", default=".agentplane", help="state directory: SQLite, Qdrant, keys (default .agentplane/)"
    )
    up.add_argument(
        "--no-watch",
        dest="watch",
        action="store_false",
        help="serve the specs as they are at start; do not apply later changes",
    )
    up.set_defaults(run=cmd_up)

    chat = commands.add_parser(
        "chat",
        help="talk to an agent of `agentplane up` from the terminal: streams the answer, sources, usage",
    )
    chat.add_argument("target", metavar="TENANT/AGENT", help="for example acme/support-bot")
    chat.add_argument(
        "question", nargs="?", help="ask this one question and exit (default: an interactive conversation)"
    )
    chat.add_argument(
        "--url", default="http://127.0.0.1:8080", help="where `agentplane up` listens (default %(default)s)"
    )
    chat.add_argument(
        "--state",
        default=".agentplane",
        help="state directory of `up`, for the tenant's key (default .agentplane/)",
    )
    chat.add_argument("--key", help="API key to use (default: AGENTPLANE_API_KEY, else the one `up` saved)")
    chat.set_defaults(run=cmd_chat)
    return top


def run(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = parser().parse_args(argv)
    code: int = args.run(args, out or sys.stdout)
    return code


def main() -> None:
    """Console-script entry point."""
    raise SystemExit(run())
