"""`agentplane up` and `agentplane chat`: the runtime's subcommands of the platform's `agentplane` CLI,
registered as entry points of the group `agentplane.commands` (`agentplane_platform.commands`).

Light on purpose: the CLI loads this module to build its parser for every command, so the server
(litellm alone takes seconds to import) and the terminal client are imported only when run.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TextIO

DEFAULT_URL = "http://127.0.0.1:8080"
"""Where `agentplane chat` finds `agentplane up` unless told (`up`'s default host and port)."""
DEFAULT_STATE = ".agentplane"
"""The state directory of `agentplane up` (keys, SQLite, Qdrant), and where `chat` reads the keys."""


class UpCommand:
    """`agentplane up [PATH]`: serve every agent of a spec tree from one process."""

    name = "up"
    help = "serve every agent of the specs locally (SQLite, Qdrant local mode, offline model)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "path", nargs="?", default="specs", metavar="PATH", help="spec tree (default: specs/)"
        )
        parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
        parser.add_argument("--port", type=int, default=8080, help="listen port (default 8080)")
        parser.add_argument(
            "--state",
            default=DEFAULT_STATE,
            help="state directory: SQLite, Qdrant, keys (default .agentplane/)",
        )
        parser.add_argument(
            "--no-watch",
            dest="watch",
            action="store_false",
            help="serve the specs as they are at start; do not apply later changes",
        )

    def run(self, args: argparse.Namespace, out: TextIO) -> int:
        # litellm (imported with the server) fetches its cost map from the network unless told not to
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        from agentplane_runtime.local import up

        return up(
            Path(args.path),
            host=args.host,
            port=args.port,
            state=Path(args.state),
            out=out,
            watch=args.watch,
        )


class ChatCommand:
    """`agentplane chat TENANT/AGENT [QUESTION]`: the terminal client of `agentplane up`."""

    name = "chat"
    help = "talk to an agent of `agentplane up` from the terminal: streams the answer, sources, usage"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("target", metavar="TENANT/AGENT", help="for example acme/support-bot")
        parser.add_argument(
            "question",
            nargs="?",
            help="ask this one question and exit (default: an interactive conversation)",
        )
        parser.add_argument(
            "--url",
            default=DEFAULT_URL,
            help="where `agentplane up` listens (default %(default)s)",
        )
        parser.add_argument(
            "--state",
            default=DEFAULT_STATE,
            help="state directory of `up`, for the tenant's key (default .agentplane/)",
        )
        parser.add_argument(
            "--key", help="API key to use (default: AGENTPLANE_API_KEY, else the one `up` saved)"
        )

    def run(self, args: argparse.Namespace, out: TextIO) -> int:
        from agentplane_runtime.terminal import chat

        return chat(
            args.target,
            args.question,
            base_url=args.url,
            state=Path(args.state),
            key=args.key,
            out=out,
            err=sys.stderr,
        )


UP = UpCommand()
"""The entry point `up` of `agentplane.commands`."""
CHAT = ChatCommand()
"""The entry point `chat` of `agentplane.commands`."""
