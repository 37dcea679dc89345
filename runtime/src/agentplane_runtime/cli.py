"""`agentplane-runtime --config /etc/agentplane/agent.json [--host H] [--port P]`: serve one agent;
`agentplane-runtime knowledge-sync --source SRC`: ingest a spec tree's Git-kept knowledge."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agentplane_platform.contract import HTTP_PORT
from agentplane_runtime.core.config import Settings


def main(argv: list[str] | None = None) -> None:
    args_given = sys.argv[1:] if argv is None else argv
    if args_given[:1] == ["knowledge-sync"]:
        from agentplane_runtime.knowledge_sync import main as knowledge_sync

        raise SystemExit(knowledge_sync(args_given[1:]))
    parser = argparse.ArgumentParser(
        prog="agentplane-runtime", description="Serve one agent (OpenAI-compatible API)"
    )
    parser.add_argument("--config", type=Path, help="resolved agent config (default: $AGENTPLANE_CONFIG)")
    parser.add_argument("--host", help="listen address (default 0.0.0.0)")
    parser.add_argument("--port", type=int, help=f"listen port (default {HTTP_PORT})")
    parser.add_argument(
        "--metrics-port", type=int, help="serve /metrics on this port alone (default: beside the API)"
    )
    args = parser.parse_args(args_given)
    given = {"config": args.config, "host": args.host, "port": args.port, "metrics_port": args.metrics_port}
    overrides = {k: v for k, v in given.items() if v is not None}
    settings = Settings(**overrides)
    if settings.config is None:
        parser.error("no agent config: pass --config or set AGENTPLANE_CONFIG")

    import uvicorn

    from agentplane_platform.process import freeze_import_heap
    from agentplane_runtime.app import create_app
    from agentplane_runtime.core.logging import configure_logging

    configure_logging(settings.log_level, json=settings.log_json)
    app = create_app(settings)
    freeze_import_heap()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=20,
    )
