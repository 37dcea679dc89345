"""`agentplane-operator`: run the operator, or write its deploy manifests."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import kopf
import uvloop

from agentplane_operator import manifests
from agentplane_operator.kopf_speedups import fast_watch_json
from agentplane_platform.process import freeze_import_heap

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy"
"""`operator/deploy/` in a source checkout."""

GC_THRESHOLDS = (20_000, 10, 10)
"""The cyclic collector's thresholds while the operator runs (Python's: 700, 10, 10). Each watch event
is a parsed object of a few thousand allocations that lives on (kopf's latest view of it, our
indexes): at 700 nearly every event started a young collection that only promoted it, and the full
collections that followed walked every watched object. Converging 1,000 Agents
(`loadtests/bench_operator.py`), with the import heap frozen: 3.4 s of collections, the longest
pause at most 0.5 s (`agentplane_operator_gc_pause_seconds`), against about 11 s and 1.2 s with
neither (timed with `gc.callbacks` before that metric existed). The cost: about 30 MiB more at the
peak, garbage held until a collection."""


def prepare_process() -> None:
    """Once the operator's modules are imported, before it watches anything: the import heap frozen
    out of the collector's reach, and fewer, larger young collections."""
    freeze_import_heap()
    gc.set_threshold(*GC_THRESHOLDS)


def _run(verbose: bool) -> NoReturn:
    from agentplane_operator.handlers import QuietEventHandlers, build_registry
    from agentplane_operator.settings import OperatorSettings

    settings = OperatorSettings()  # required fields come from the environment
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.FULL, log_prefix=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    if not fast_watch_json():
        logging.getLogger("agentplane.operator").warning(
            "kopf's watch streams are parsed with the standard library's json (this kopf version has "
            "no json module where agentplane_operator.kopf_speedups expects it): slower, still correct"
        )
    registry = build_registry(settings)
    logging.getLogger("kopf.objects").addFilter(QuietEventHandlers(registry))
    prepare_process()
    # uvloop, as kopf's own CLI runs it (`kopf.run` alone takes asyncio's loop): every watch event
    # and API request goes through the loop's transports
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        kopf.run(
            loop=runner.get_loop(),
            priority=settings.priority if settings.priority is not None else random.randint(1, 2**31),
            registry=registry,
            clusterwide=True,
            standalone=settings.standalone,
            peering_name=settings.peering_name(),
        )
    # kopf has stopped, and said goodbye to its peers. The interpreter's own teardown would free the
    # watched objects one by one: about 10 s of a core at 5,000 Agents, the pod Terminating meanwhile.
    logging.getLogger("agentplane.operator").info("the operator stopped")
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentplane-operator", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run", help="reconcile Tenants, Agents, Tools and Prompts (settings: AGENTPLANE_OPERATOR_*)"
    )
    run.add_argument("--verbose", action="store_true")
    generate = commands.add_parser("manifests", help="write the operator's deploy manifests")
    generate.add_argument("--out", type=Path, default=DEPLOY_DIR)
    generate.add_argument("--check", action="store_true", help="only report stale files (exit 1)")
    generate.add_argument(
        "--shards", type=int, default=1, help="one Deployment and peering per shard of the tenants (1: none)"
    )
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(args.verbose)
    if args.shards < 1:
        parser.error("--shards is at least 1")
    stale = manifests.write(args.out, check=args.check, shards=args.shards)
    for path in stale:
        print(f"{'stale' if args.check else 'wrote'}: {path}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
