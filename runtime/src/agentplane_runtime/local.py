"""`agentplane up`: every Agent of a spec tree served from one process, on embedded defaults.

The specs are validated and resolved by the platform (`validate_paths`, `resolve_agent` — the same
code the operator runs); the runtime app is the one an agent pod runs, with the agent router mounted
at `/t/{tenant}/a/{agent}/v1`. Defaults: SQLite under the state directory for API keys and usage,
in-process quota counters with each Tenant's limits, Qdrant local mode under `<state>/qdrant`,
keyword retrieval, and the offline model for agents whose provider has no credentials. Any of them
is replaced by setting the runtime's usual `AGENTPLANE_*` variables.

This module starts it (`up`: settings, load, bind, serve); the parts are `local_specs` (what is
served), `local_platform` (serving it and applying changes), `local_keys` (the tenants' local API
keys) and `local_banner` (what it prints when ready).
"""

from __future__ import annotations

import contextlib
import socket
import sys
from pathlib import Path
from typing import TextIO

from agentplane_runtime.core.config import Settings
from agentplane_runtime.local_platform import create_local_app
from agentplane_runtime.local_specs import load_specs, local_discovery


def local_settings(*, state: Path, host: str, port: int) -> Settings:
    """The runtime settings of `up`: the environment's, with the embedded defaults under `state`."""
    return Settings(
        stores="embedded",
        state_dir=state,
        qdrant_path=state / "qdrant",
        ensure_collections=True,
        offline_model=True,
        host=host,
        port=port,
        log_json=False,
        log_level="WARNING",
        otel_traces_exporter="none",
    )


def up(
    specs: Path, *, host: str, port: int, state: Path, out: TextIO | None = None, watch: bool = True
) -> int:
    """Validate, resolve and serve; returns the exit code (1 when the specs are invalid)."""
    out = out or sys.stdout
    settings = local_settings(state=state, host=host, port=port)
    discovery = local_discovery(settings)
    loaded = load_specs(specs, discovery)
    if not loaded.ok:
        out.write(loaded.problems([specs]))
        out.write("agentplane up: not starting, fix the problems above\n")
        return 1
    for key in sorted(loaded.refused):
        out.write(f"specs: ! {key[0]}/{key[1]} not served: {loaded.errors[key]}\n")
    state.mkdir(parents=True, exist_ok=True)
    # bind first: a busy port fails at once, before any state is touched or a banner is printed
    try:
        sock = socket.create_server((host, port))
    except OSError as exc:
        out.write(f"agentplane up: cannot listen on {host}:{port}: {exc.strerror} (use --port)\n")
        return 1

    import uvicorn

    from agentplane_platform.process import freeze_import_heap
    from agentplane_runtime.core.logging import configure_logging

    configure_logging(settings.log_level, json=settings.log_json)
    app = create_local_app(
        settings, specs, loaded, out, f"http://{host}:{port}", watch=watch, discovery=discovery
    )
    freeze_import_heap()
    server = uvicorn.Server(
        uvicorn.Config(
            app, log_config=None, log_level="warning", access_log=False, timeout_graceful_shutdown=5
        )
    )
    with sock, contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises Ctrl-C after shutting down
        server.run(sockets=[sock])
    out.write("agentplane up: stopped\n")
    return 0
