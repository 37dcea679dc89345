"""The operator, run with its heap traced: what `bench_operator.py --heap` starts in place of
`python -m agentplane_operator`.

It imports the operator's modules first and only then starts tracemalloc, so the import-time heap
(kopf, the Kubernetes models, pydantic) is left out and the objects it traces are those the operator
made while running: what the watched and remembered objects cost. SIGUSR2 writes a snapshot of the
live traced blocks, after a full collection, to `AGENTPLANE_BENCH_HEAP_SNAPSHOT`. Tracing slows the
operator several times over: a run with it measures memory, not time.

    python loadtests/operator_heap.py run   # the operator's own arguments
"""

from __future__ import annotations

import gc
import importlib
import os
import runpy
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType

MODULES = ("kopf", "agentplane_operator.cli", "agentplane_operator.handlers", "agentplane_operator.reconcile")
FRAMES = 8
"""Frames kept per traced block: enough to tell a watch stream's body from a reconcile's copy."""


def main() -> None:
    target = Path(os.environ["AGENTPLANE_BENCH_HEAP_SNAPSHOT"])
    for name in MODULES:
        importlib.import_module(name)

    def snapshot(signum: int, frame: FrameType | None) -> None:
        gc.collect()
        written = target.with_suffix(".tmp")
        tracemalloc.take_snapshot().dump(str(written))
        written.rename(target)  # whole, or not there

    signal.signal(signal.SIGUSR2, snapshot)
    tracemalloc.start(FRAMES)
    sys.argv = ["agentplane_operator", *sys.argv[1:]]
    runpy.run_module("agentplane_operator", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
