"""The seam through which other installed packages add subcommands to `agentplane`.

A package registers an object that has the shape of `Command` under the entry-point group
`agentplane.commands` (the runtime registers `up` and `chat`). This package imports nothing of theirs:
the CLI finds them with `installed_commands()` when it builds its parser, so the dependencies keep
pointing one way (everything depends on platform, platform on none of them).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Protocol, TextIO, runtime_checkable

ENTRY_POINT_GROUP = "agentplane.commands"
"""The entry-point group of `agentplane`'s plugin commands."""


@runtime_checkable
class Command(Protocol):
    """One `agentplane` subcommand that another package provides."""

    name: str
    """The subcommand's name, as typed after `agentplane`."""
    help: str
    """One line for `agentplane --help`."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare the subcommand's arguments on its own parser."""

    def run(self, args: argparse.Namespace, out: TextIO) -> int:
        """Run with the parsed arguments, writing to `out` (errors to stderr); the exit code."""


@dataclass(frozen=True)
class Unavailable:
    """An entry point that did not load, and why; the CLI warns about it instead of failing."""

    entry_point: str
    reason: str


def load_commands(found: Iterable[EntryPoint]) -> tuple[list[Command], list[Unavailable]]:
    """The commands the entry points name, and those that cannot be loaded (an import error, or an
    object that is not a `Command`)."""
    commands: list[Command] = []
    unavailable: list[Unavailable] = []
    for entry_point in found:
        where = f"{entry_point.name} = {entry_point.value}"
        if entry_point.dist is not None:
            where += f" (from {entry_point.dist.name})"
        try:
            loaded: object = entry_point.load()
        except Exception as exc:  # a broken plugin must not take the other commands down with it
            unavailable.append(Unavailable(where, f"{type(exc).__name__}: {exc}"))
            continue
        if not isinstance(loaded, Command):
            unavailable.append(
                Unavailable(where, "not an agentplane command (needs name, help, add_arguments, run)")
            )
            continue
        commands.append(loaded)
    return commands, unavailable


def installed_commands() -> tuple[list[Command], list[Unavailable]]:
    """The commands registered under `agentplane.commands` by the installed distributions."""
    return load_commands(entry_points(group=ENTRY_POINT_GROUP))
