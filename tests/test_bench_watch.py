"""The operator benchmark's watch (`loadtests/bench_operator.py`) on a real API server: a count that
stalls lists the objects again, takes the changes the watch did not show, and keeps a value the
watch showed after the list began (it is newer than the list); a restarted watch loses nothing."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from support.cluster import Cluster
from support.waiting import wait_for

pytestmark = [pytest.mark.k8s]

BENCH = Path(__file__).resolve().parents[1] / "loadtests" / "bench_operator.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_operator", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_operator"] = module
    spec.loader.exec_module(module)
    return module


@contextmanager
def watched_config_map(k8s: Cluster, bench: ModuleType) -> Iterator[tuple[str, str, Any]]:
    """A new ConfigMap (`v` is "1") and the bench's watch of ConfigMaps, once it shows it: (its
    name, its key in the watch, the watch)."""
    name = f"watched-{uuid.uuid4().hex[:8]}"
    key = f"default/{name}"
    k8s.kubectl("create", "configmap", name, "--from-literal=v=1")
    try:
        with bench.watching(k8s, "configmaps", "{.data.v}") as watch:
            wait_for("the watch to show the ConfigMap", lambda: watch.snapshot().get(key) == "1", timeout=30)
            yield name, key, watch
    finally:
        k8s.kubectl("delete", "configmap", name, "--wait=false")


def test_a_stalled_count_lists_and_takes_what_the_watch_missed(k8s: Cluster, bench: ModuleType) -> None:
    with watched_config_map(k8s, bench) as (name, key, watch):
        with watch._lock:  # a line the watch lost: it still shows the value before
            watch.values[key] = "0"
        guard = bench.StallGuard(watch, stall=0.0)

        def count() -> int:
            return int(watch.snapshot().get(key) == "1")

        assert not guard.moved(count())  # a new value is a move, not a stall
        assert guard.moved(count())  # the same value again: a stall, and the list finds the change
        assert (count(), watch.missed) == (1, 1)
        assert not guard.moved(count())  # nothing missed: a list finds nothing
        assert watch.missed == 1

        # a list that is older than a line the watch showed while it ran does not undo that line
        listing = watch._list

        def stale_list(attempts: int | None = None) -> str:
            listed: str = listing(attempts)
            k8s.kubectl("patch", "configmap", name, "--type=merge", "-p", '{"data":{"v":"2"}}')
            wait_for("the watch to show the change", lambda: watch.snapshot().get(key) == "2", timeout=30)
            return listed

        watch._list = stale_list
        assert watch.resync() == 0
        assert watch.snapshot()[key] == "2"


def test_a_restarted_watch_lists_only_once_the_api_server_holds_it(k8s: Cluster, bench: ModuleType) -> None:
    """The API server closed the watch and kubectl is started again. A change made right after the
    list that follows the restart is shown: the list waited until the new watch was held. Before, a
    kubectl slow to start (here by 2 s) watched from after that change, and the value stayed old."""
    with watched_config_map(k8s, bench) as (name, key, watch):
        command, listing = watch._kubectl, watch._list

        def slow_to_start(*args: str) -> list[str]:
            argv: list[str] = command(*args)
            return ["sh", "-c", 'sleep 2; exec "$@"', "sh", *argv] if "--watch-only" in args else argv

        def then_changed(attempts: int | None = None) -> str:
            listed: str = listing(attempts)
            watch._list = listing
            k8s.kubectl("patch", "configmap", name, "--type=merge", "-p", '{"data":{"v":"2"}}')
            return listed

        watch._kubectl, watch._list = slow_to_start, then_changed
        watch.process.kill()  # kubectl exits, as when the API server closes its watch
        wait_for(
            "the restarted watch to show the change made after its list",
            lambda: watch.snapshot().get(key) == "2",
            timeout=30,
        )
        assert (watch.restarts, watch.missed) == (1, 0)
