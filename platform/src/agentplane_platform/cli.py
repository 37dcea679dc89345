"""The `agentplane` command line: validate, policy, plan, generate, explain, keys; and the commands other
installed packages register (`agentplane_platform.commands`: the runtime's up and chat)."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO, TypedDict, TypeVar

from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import Connection
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from . import audit
from .api.v1alpha1._base import DNS1123_LABEL
from .commands import Command, installed_commands
from .db import create_engine, migrate
from .explain import ExplainError, explain
from .generate import generate
from .keys import (
    MAX_ROTATION_OVERLAP,
    KeyInfo,
    KeyNotRotatable,
    create_api_key,
    get_api_key,
    list_api_keys,
    revoke_api_key,
    rotate_api_key,
    split_key,
)
from .plan import RENDERERS, ClusterError, GitError, plan_against_cluster, plan_against_git
from .policies import PolicyError, PolicySet, load_cases, load_policies, run_case, summarize
from .report_text import format_report, report_summary
from .specs import Report, validate_paths
from .usage_report import (
    FORMATS,
    GROUP_BY,
    UsageReport,
    UsageRow,
    UsageSelect,
    format_usage,
    parse_group_by,
    usage_query,
    usage_rows,
    usage_window,
    utc,
)


def _policy_set(args: argparse.Namespace) -> PolicySet | None:
    """The admission policies `--policies DIR --environment ENV` name (None with `--no-policies`);
    `PolicyError` when they cannot be read: the check fails closed."""
    if args.no_policies:
        return None
    directory = Path(args.policies)
    if not directory.is_dir():
        raise PolicyError(
            f"{directory}: no policies directory (give it with --policies DIR, "
            "or skip the admission policies with --no-policies)"
        )
    return load_policies(directory, args.environment)


def _add_policy_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--policies",
        default="policies",
        metavar="DIR",
        help="admission policies to evaluate the specs against (default: policies)",
    )
    command.add_argument(
        "--environment",
        default="prod",
        metavar="ENV",
        help="parameters of the policies: DIR/params/ENV (default: prod)",
    )
    command.add_argument(
        "--no-policies", action="store_true", help="skip the admission policies (they are checked by default)"
    )


def cmd_validate(args: argparse.Namespace, out: TextIO) -> int:
    paths = [Path(p) for p in args.paths] or [Path("specs")]
    try:
        policies = _policy_set(args)
    except PolicyError as exc:
        if args.format == "json":
            out.write(json.dumps({"ok": False, "error": str(exc), "problems": []}, indent=2) + "\n")
        else:
            sys.stderr.write(f"error: {exc}\n")
        return 2
    report = validate_paths(paths, policies=policies)
    if args.format == "json":
        payload = {
            "ok": report.ok,
            "files": report.files,
            "documents": report.documents,
            "problems": [p.as_json() for p in report.problems],
        }
        out.write(json.dumps(payload, indent=2) + "\n")
    elif args.format == "github":
        for problem in report.problems:
            out.write(problem.github_annotation() + "\n")
        out.write(report_summary(report, paths) + "\n")
    else:
        out.write(format_report(report, paths))
    return 0 if report.ok else 1


def cmd_plan(args: argparse.Namespace, out: TextIO) -> int:
    paths = [Path(p) for p in args.paths] or [Path("specs")]
    try:
        policies = _policy_set(args)

        def validate(paths: Sequence[Path]) -> Report:
            return validate_paths(paths, policies=policies)

        result = (
            plan_against_cluster(paths, validate=validate)
            if args.cluster
            else plan_against_git(paths, base=args.base, validate=validate)
        )
    except (GitError, ClusterError, PolicyError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    out.write(RENDERERS[args.format](result))
    return result.exit_code


def cmd_policy_test(args: argparse.Namespace, out: TextIO) -> int:
    directory = Path(args.directory)
    try:
        cases = load_cases(directory / "tests")
    except PolicyError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    text, passed = summarize([run_case(directory, case) for case in cases])
    out.write(text + "\n")
    return 0 if passed and cases else 1


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


class KeysSettings(BaseSettings):
    """`agentplane keys`' environment: the platform database (the one the runtimes check keys in)."""

    model_config = SettingsConfigDict(env_prefix="AGENTPLANE_", extra="ignore")

    database_url: str | None = None


_DURATION = re.compile(r"^(\d+)([dhm])$")


def parse_overlap(text: str) -> timedelta:
    """`24h`, `7d`, `90m`, `0m`: how long a rotated key keeps working (at most `MAX_ROTATION_OVERLAP`)."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"--overlap {text!r}: give a duration (24h, 7d, 90m; 0m ends the old key now)")
    unit = {"d": "days", "h": "hours", "m": "minutes"}[match[2]]
    overlap = timedelta(**{unit: int(match[1])})
    if overlap > MAX_ROTATION_OVERLAP:
        raise ValueError(f"--overlap {text!r} is longer than {MAX_ROTATION_OVERLAP.days} days")
    return overlap


def parse_expiry(text: str, now: datetime) -> datetime:
    """`30d`, `12h`, `90m` from now, or an ISO date / date-time (UTC when it names no zone)."""
    match = _DURATION.match(text)
    if match:
        unit = {"d": "days", "h": "hours", "m": "minutes"}[match[2]]
        return now + timedelta(**{unit: int(match[1])})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"--expires {text!r}: give a duration (30d, 12h, 90m) or an ISO date (2027-01-31)"
        ) from None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    if moment <= now:
        raise ValueError(f"--expires {text!r} is in the past")
    return moment


class KeyRow(TypedDict):
    """A key as `agentplane keys list --format json` prints it."""

    id: str
    name: str
    agents: list[str] | None
    roles: list[str]
    state: str
    created: str | None
    expires: str | None
    revoked: str | None
    tokens_per_minute: int | None
    requests_per_minute: int | None


def _key_row(key: KeyInfo, now: datetime) -> KeyRow:
    return {
        "id": key.id,
        "name": key.name,
        "agents": key.agents,
        "roles": key.roles,
        "state": key.state(now),
        "created": key.created_at.isoformat() if key.created_at else None,
        "expires": key.expires_at.isoformat() if key.expires_at else None,
        "revoked": key.revoked_at.isoformat() if key.revoked_at else None,
        "tokens_per_minute": key.tokens_per_minute,
        "requests_per_minute": key.requests_per_minute,
    }


async def _keys(args: argparse.Namespace, database_url: str, out: TextIO) -> int:
    engine = create_engine(database_url, pool_pre_ping=True)
    try:
        await migrate(engine)  # idempotent: a key can be made before any agent ran
        now = datetime.now(UTC)
        if args.action == "create":
            expires = parse_expiry(args.expires, now) if args.expires else None
            key = await create_api_key(
                engine, tenant=args.tenant, name=args.name, agents=args.agent or None,
                roles=args.role or [], expires_at=expires,
                tokens_per_minute=args.tokens_per_minute, requests_per_minute=args.requests_per_minute,
            )  # fmt: skip
            new_id = (split_key(key) or ("?", ""))[0]
            if args.format == "json":
                out.write(json.dumps({"key": key, "id": new_id}) + "\n")
            else:
                scope = f"agents {', '.join(args.agent)}" if args.agent else "every agent"
                until = f", expires {expires.isoformat()}" if expires else ""
                out.write(f"{key}\n")
                sys.stderr.write(
                    f"key {new_id} for tenant {args.tenant} ({scope}{until}): "
                    "shown once, only its hash is stored\n"
                )
            return 0
        if args.action == "list":
            rows = [
                _key_row(k, now) for k in await list_api_keys(engine, tenant=args.tenant, agent=args.agent)
            ]
            if args.format == "json":
                out.write(json.dumps(rows, indent=2) + "\n")
                return 0
            table = [("ID", "NAME", "AGENTS", "STATE", "CREATED", "EXPIRES")]
            table += [
                (r["id"], r["name"], ",".join(r["agents"] or ["*"]), r["state"],
                 (r["created"] or "")[:19], (r["expires"] or "never")[:19])
                for r in rows
            ]  # fmt: skip
            widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
            for row in table:
                out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")
            return 0
        parts = split_key(args.key)
        key_id: str = parts[0] if parts else args.key
        if args.action == "rotate":
            return await _rotate(engine, args, key_id, out)
        if await revoke_api_key(engine, key_id=key_id, tenant=args.tenant):
            out.write(f"revoked key {key_id} of tenant {args.tenant}\n")
            return 0
        sys.stderr.write(f"error: tenant {args.tenant} has no active key {key_id}\n")
        return 1
    finally:
        await engine.dispose()


async def _rotate(engine: AsyncEngine, args: argparse.Namespace, key_id: str, out: TextIO) -> int:
    overlap = parse_overlap(args.overlap)
    try:
        key = await rotate_api_key(engine, key_id=key_id, tenant=args.tenant, overlap=overlap)
    except KeyNotRotatable as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    if key is None:
        sys.stderr.write(f"error: tenant {args.tenant} has no key {key_id}\n")
        return 1
    new_id = (split_key(key) or ("?", ""))[0]
    old = await get_api_key(engine, key_id=key_id, tenant=args.tenant)
    old_until = old.expires_at.isoformat() if old is not None and old.expires_at else None
    if args.format == "json":
        out.write(json.dumps({"key": key, "id": new_id, "replaces": key_id, "old_expires": old_until}) + "\n")
    else:
        out.write(f"{key}\n")
        sys.stderr.write(
            f"key {new_id} replaces {key_id} of tenant {args.tenant}, which works until {old_until}: "
            "the new key is shown once, only its hash is stored\n"
        )
    return 0


def cmd_keys(args: argparse.Namespace, out: TextIO) -> int:
    if not re.match(DNS1123_LABEL, args.tenant):
        sys.stderr.write(f"error: --tenant {args.tenant!r} is not a tenant name\n")
        return 2
    database_url = args.database_url or KeysSettings().database_url
    if not database_url:
        sys.stderr.write(
            "error: no database: set AGENTPLANE_DATABASE_URL or --database-url to the platform database "
            "(for `agentplane up`: sqlite:///.agentplane/agentplane.db)\n"
        )
        return 2
    try:
        return asyncio.run(_keys(args, database_url, out))
    except ValueError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except (SQLAlchemyError, OSError) as exc:
        sys.stderr.write(f"error: the database cannot be used: {type(exc).__name__}: {exc}\n")
        return 1


def parse_moment(option: str, text: str) -> datetime:
    """An ISO date (its midnight, UTC) or date-time (UTC when it names no zone) given to `option`."""
    try:
        return utc(datetime.fromisoformat(text))
    except ValueError:
        raise ValueError(
            f"{option} {text!r}: give an ISO date (2026-11-01) or date-time (2026-11-01T12:00:00Z)"
        ) from None


async def _usage_rows(database_url: str, query: UsageSelect) -> list[UsageRow]:
    engine = create_engine(database_url, pool_pre_ping=True)
    try:
        async with engine.connect() as connection:
            return usage_rows((await connection.execute(query)).mappings())
    finally:
        await engine.dispose()


def cmd_usage(args: argparse.Namespace, out: TextIO) -> int:
    if not re.match(DNS1123_LABEL, args.tenant):
        sys.stderr.write(f"error: --tenant {args.tenant!r} is not a tenant name\n")
        return 2
    try:
        group_by = parse_group_by(name.strip() for name in args.by.split(",") if name.strip())
        since = parse_moment("--from", args.since) if args.since else None
        until = parse_moment("--to", args.until) if args.until else None
    except ValueError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    if since is not None and until is not None and since >= until:
        sys.stderr.write(f"error: --from {args.since} is not before --to {args.until} (--to is exclusive)\n")
        return 2
    try:
        database_url = _existing_database(args)
    except ValueError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    since, until = usage_window(since, until, datetime.now(UTC))
    try:
        rows = asyncio.run(_usage_rows(database_url, usage_query(args.tenant, since, until, group_by)))
    except (SQLAlchemyError, OSError) as exc:
        sys.stderr.write(f"error: the database cannot be used: {type(exc).__name__}: {exc}\n")
        return 1
    report = UsageReport(tenant=args.tenant, since=since, until=until, group_by=group_by, rows=rows)
    out.write(format_usage(report, args.format))
    return 0


T = TypeVar("T")


def _existing_database(args: argparse.Namespace) -> str:
    """The database `agentplane usage` and `agentplane audit` read, found as `keys` finds it; ValueError
    when none is set or a SQLite file is missing (these commands never create one)."""
    database_url: str | None = args.database_url or KeysSettings().database_url
    if not database_url:
        raise ValueError(
            "no database: set AGENTPLANE_DATABASE_URL or --database-url to the platform database"
        )
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        if not Path(url.database).is_file():  # SQLite would create an empty one
            raise ValueError(f"no database at {url.database}")
    return database_url


async def _on_audit_trail(database_url: str, work: Callable[[Connection], T], *, snapshot: bool) -> T:
    """`work` on one connection (one REPEATABLE READ snapshot on PostgreSQL when `snapshot`), committed."""
    engine = create_engine(database_url, pool_pre_ping=True)
    try:
        async with engine.connect() as connection:
            if snapshot and connection.dialect.name == "postgresql":
                await connection.execution_options(isolation_level="REPEATABLE READ")
            result = await connection.run_sync(work)
            await connection.commit()
            return result
    finally:
        await engine.dispose()


def cmd_audit(args: argparse.Namespace, out: TextIO) -> int:
    """verify: exit 0 intact, 1 tampered (a line per problem: tenant, seq, kind), 2 errors. export: JSON
    lines. prune: how many records went."""
    try:
        if args.tenant is not None and not re.match(DNS1123_LABEL, args.tenant):
            raise ValueError(f"--tenant {args.tenant!r} is not a tenant name")
        database_url = _existing_database(args)
        if args.action == "verify":
            reports = asyncio.run(
                _on_audit_trail(database_url, lambda c: audit.verify(c, args.tenant), snapshot=True)
            )
            for report in reports:
                for problem in report.problems:
                    out.write(problem.line() + "\n")
                state = "intact" if report.ok else f"{len(report.problems)} problem(s)"
                sys.stderr.write(f"{report.tenant}: {report.records} records, {state}\n")
            return 0 if all(report.ok for report in reports) else 1
        if args.action == "export":
            since = parse_moment("--from", args.since) if args.since else None
            until = parse_moment("--to", args.until) if args.until else None

            def write(connection: Connection) -> None:
                for line in audit.export(connection, args.tenant, since, until):
                    out.write(line + "\n")

            asyncio.run(_on_audit_trail(database_url, write, snapshot=True))
            return 0
        match = _DURATION.match(args.older_than)
        if not match:
            raise ValueError(f"--older-than {args.older_than!r}: give a duration (90d, 12h, 30m)")
        unit = {"d": "days", "h": "hours", "m": "minutes"}[match[2]]
        cutoff = datetime.now(UTC) - timedelta(**{unit: int(match[1])})
        removed = asyncio.run(_on_audit_trail(database_url, lambda c: audit.prune(c, cutoff), snapshot=False))
        out.write(f"pruned {removed} audit records written before {cutoff.isoformat()}\n")
        return 0
    except ValueError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except (SQLAlchemyError, OSError) as exc:
        sys.stderr.write(f"error: the database cannot be used: {type(exc).__name__}: {exc}\n")
        return 2


PLUGIN_COMMANDS = {"up": "agentplane-runtime", "chat": "agentplane-runtime"}
"""The commands `agentplane` expects other packages to register (`agentplane_platform.commands`), with
the distribution that provides each: named here only to say what to install when one is missing."""


def _missing_plugin(distribution: str) -> Callable[[argparse.Namespace, TextIO], int]:
    def run(args: argparse.Namespace, out: TextIO) -> int:
        sys.stderr.write(
            f"error: this command needs the agent runtime ({distribution}); "
            "install it with `uv sync --all-packages` (or `make install`)\n"
        )
        return 1

    return run


def _add_plugin_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    plugins: Sequence[Command],
    taken: set[str],
) -> None:
    """A subcommand per plugin command (the expected ones first); for an expected command that no
    installed package provides, one that accepts anything and says what to install."""
    order = list(PLUGIN_COMMANDS)
    for command in sorted(
        plugins, key=lambda c: (order.index(c.name) if c.name in order else len(order), c.name)
    ):
        if command.name in taken:
            sys.stderr.write(f"warning: ignoring the plugin command {command.name!r}: the name is taken\n")
            continue
        taken.add(command.name)
        sub = commands.add_parser(command.name, help=command.help)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    for name, distribution in PLUGIN_COMMANDS.items():
        if name not in taken:
            # no option is declared and none looks like one (prefix "\0"): whatever follows the
            # name, the command runs and says what to install, rather than argparse's usage error
            sub = commands.add_parser(
                name, help=f"(not installed: needs {distribution})", add_help=False, prefix_chars="\0"
            )
            sub.add_argument("arguments", nargs=argparse.REMAINDER)
            sub.set_defaults(run=_missing_plugin(distribution))


def parser(plugins: Sequence[Command] | None = None) -> argparse.ArgumentParser:
    """The argument parser of the `agentplane` command: its own commands and those of `plugins`
    (default: the installed ones, a warning on stderr for each that cannot be loaded)."""
    if plugins is None:
        plugins, unavailable = installed_commands()
        for broken in unavailable:
            sys.stderr.write(
                f"warning: the agentplane command {broken.entry_point} cannot be loaded: {broken.reason}\n"
            )
    top = argparse.ArgumentParser(
        prog="agentplane", description="Run AI agents for many tenants, from specs in Git."
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser("validate", help="check spec files: schema, names, references, secrets")
    validate.add_argument("paths", nargs="*", metavar="PATH", help="files or directories (default: specs/)")
    validate.add_argument(
        "--format",
        choices=("text", "json", "github"),
        default="text",
        help="output format (github: workflow commands that annotate the pull request's lines)",
    )
    _add_policy_options(validate)
    validate.set_defaults(run=cmd_validate)

    policy = commands.add_parser("policy", help="the admission policies of policies/")
    policy_actions = policy.add_subparsers(dest="action", required=True, metavar="ACTION")
    policy_test = policy_actions.add_parser(
        "test", help="run the policies' test cases (DIR/tests) offline: per policy, cases passed and failed"
    )
    policy_test.add_argument(
        "directory", nargs="?", default="policies", metavar="DIR", help="default: policies"
    )
    policy_test.set_defaults(run=cmd_policy_test)

    plan = commands.add_parser(
        "plan",
        help="what merging the specs does (added, changed, removed; pods that roll; refusals), "
        "compared with the base commit or the live cluster; exit 0 no change, 1 changes, 2 errors",
    )
    plan.add_argument("paths", nargs="*", metavar="PATH", help="files or directories (default: specs/)")
    plan.add_argument(
        "--base",
        metavar="REF",
        help="commit to compare with (default: the merge base of HEAD and origin/HEAD, else main, else master)",
    )
    plan.add_argument(
        "--format",
        choices=("text", "markdown", "json"),
        default="text",
        help="output format (markdown: a PR comment)",
    )
    plan.add_argument(
        "--cluster",
        action="store_true",
        help="compare with the live cluster of the current kubeconfig instead, with a server-side dry run",
    )
    _add_policy_options(plan)
    plan.set_defaults(run=cmd_plan)

    gen = commands.add_parser("generate", help="write the CRDs and JSON Schemas derived from the spec API")
    gen.add_argument("--check", action="store_true", help="only report stale files; exit 1 when any")
    gen.add_argument(
        "--specs", default="specs", help="specs root holding crds/ and schemas/ (default: specs)"
    )
    gen.set_defaults(run=cmd_generate)

    exp = commands.add_parser("explain", help="documentation of a kind or field, like kubectl explain")
    exp.add_argument("target", metavar="KIND[.FIELD]", help="for example agent.spec.model")
    exp.set_defaults(run=cmd_explain)

    keys = commands.add_parser(
        "keys", help="create, list, revoke and rotate tenant API keys in the platform database"
    )
    key_actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--tenant", required=True, help="the tenant the keys belong to")
    common.add_argument(
        "--database-url",
        help="the platform database (default: AGENTPLANE_DATABASE_URL), postgresql://… or sqlite:///…",
    )
    create = key_actions.add_parser("create", parents=[common], help="make a key and print it (shown once)")
    create.add_argument(
        "--agent", action="append", help="limit the key to this agent (repeatable; default: all)"
    )
    create.add_argument("--name", default="cli", help="what the key is for (default: cli)")
    create.add_argument("--expires", help="30d, 12h, 90m from now, or an ISO date (default: never)")
    create.add_argument(
        "--role", action="append", choices=["admin"], help="admin: may manage the tenant's documents"
    )
    create.add_argument(
        "--tokens-per-minute", type=int, help="a limit of this key's own, within the tenant's"
    )
    create.add_argument(
        "--requests-per-minute", type=int, help="a limit of this key's own, within the tenant's"
    )
    create.add_argument("--format", choices=("text", "json"), default="text")
    listing = key_actions.add_parser("list", parents=[common], help="the tenant's keys (never their secrets)")
    listing.add_argument("--agent", help="only keys usable on this agent")
    listing.add_argument("--format", choices=("table", "json"), default="table")
    revoke = key_actions.add_parser(
        "revoke", parents=[common], help="revoke a key (by id, or the key itself)"
    )
    revoke.add_argument("key", metavar="KEY_ID")
    rotate = key_actions.add_parser(
        "rotate",
        parents=[common],
        help="replace a key by a new one (printed once) with the same name, agents, roles, limits and "
        "lifetime; the old key keeps working for the overlap, then expires",
    )
    rotate.add_argument("key", metavar="KEY_ID")
    rotate.add_argument(
        "--overlap",
        default="24h",
        help="how long the old key keeps working: 24h, 7d at most, 90m, 0m (default: 24h)",
    )
    rotate.add_argument("--format", choices=("text", "json"), default="text")
    keys.set_defaults(run=cmd_keys)

    usage = commands.add_parser(
        "usage", help="a tenant's requests, tokens, cost and errors, from the platform database"
    )
    usage.add_argument("--tenant", required=True, help="the tenant to report on")
    usage.add_argument(
        "--from",
        dest="since",
        metavar="DATE",
        help="ISO date or date-time (UTC unless it names a zone), inclusive; without --from and --to: this month so far",
    )
    usage.add_argument(
        "--to", dest="until", metavar="DATE", help="ISO date or date-time, exclusive (default: no end)"
    )
    usage.add_argument(
        "--by",
        default="",
        metavar="GROUPS",
        help=f"group by any of {','.join(GROUP_BY)}, comma-separated (default: the total only)",
    )
    usage.add_argument("--format", choices=FORMATS, default="table")
    usage.add_argument(
        "--database-url",
        help="the platform database (default: AGENTPLANE_DATABASE_URL), postgresql://… or sqlite:///…",
    )
    usage.set_defaults(run=cmd_usage)

    audit_command = commands.add_parser(
        "audit", help="the tamper-evident audit trail: verify its chains, export it, prune old records"
    )
    audit_actions = audit_command.add_subparsers(dest="action", required=True, metavar="ACTION")
    audit_db = argparse.ArgumentParser(add_help=False)
    audit_db.add_argument(
        "--database-url",
        help="the platform database (default: AGENTPLANE_DATABASE_URL), postgresql://… or sqlite:///…",
    )
    audit_verify = audit_actions.add_parser(
        "verify",
        parents=[audit_db],
        help="check each tenant's chain; exit 0 intact, 1 tampered (a line per problem: tenant seq kind)",
    )
    audit_verify.add_argument("--tenant", help="only this tenant (default: all)")
    audit_export = audit_actions.add_parser(
        "export", parents=[audit_db], help="a tenant's records as JSON lines, with their hashes (for a SIEM)"
    )
    audit_export.add_argument("--tenant", required=True)
    audit_export.add_argument(
        "--from", dest="since", metavar="DATE", help="written at or after this ISO date or date-time"
    )
    audit_export.add_argument("--to", dest="until", metavar="DATE", help="written before this (exclusive)")
    audit_prune = audit_actions.add_parser(
        "prune", parents=[audit_db], help="delete records older than the retention; the chains still verify"
    )
    audit_prune.add_argument("--older-than", required=True, metavar="AGE", help="90d, 12h or 30m")
    audit_prune.set_defaults(tenant=None)
    audit_command.set_defaults(run=cmd_audit)

    _add_plugin_commands(commands, plugins, set(commands.choices))
    return top


def run(
    argv: Sequence[str] | None = None, out: TextIO | None = None, plugins: Sequence[Command] | None = None
) -> int:
    """Run the command line; returns the exit code. `plugins`: as for `parser`."""
    args = parser(plugins).parse_args(argv)
    code: int = args.run(args, out or sys.stdout)
    return code


def main() -> None:
    """Console-script entry point."""
    raise SystemExit(run())
