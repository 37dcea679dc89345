"""Where kopf's own per-event work was most of the operator's CPU with many Agents, the same work
done cheaper. Each keeps kopf's behaviour exactly (tests compare with kopf's own) and replaces what
kopf documents as replaceable (its storages), except `fast_watch_json`, which replaces a module
attribute of kopf's API client; `LeanDiffBaseStorage` also calls one private method of kopf's
storages. `end_pause_waiters` ends tasks kopf leaves behind, found by the name kopf gives them, and
`report_tasks_left` names those still running once the cleanup is done. Tests
fail loudly if a kopf upgrade moves any of them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import types
from collections.abc import Iterable
from typing import Any, cast

import kopf
import orjson

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


class LeanDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's last-handled-configuration annotation, its essence built without copying the object:
    kopf's own deep-copies every event's object (its managed fields and status too) only to keep the
    spec, labels and annotations. The essence shares the event's nested values, which nothing
    changes: kopf parses each event afresh and our handlers only read it."""

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[kopf.FieldSpec] | None = None
    ) -> kopf.BodyEssence:
        if extra_fields:  # a handler watching other fields: kopf's way
            return super().build(body=body, extra_fields=extra_fields)
        skipped = ("apiVersion", "kind", "metadata", "status")
        essence: dict[str, Any] = {k: v for k, v in body.items() if k not in skipped}
        meta = body.get("metadata") or {}
        metadata: dict[str, Any] = {}
        if "labels" in meta:
            metadata["labels"] = meta["labels"]
        if "annotations" in meta:
            annotations = meta["annotations"] or {}
            ignored = tuple(f"{p}/" for p in self._detect_marked_prefixes(annotations))
            metadata["annotations"] = {
                k: v for k, v in annotations.items() if not k.startswith(ignored) and k != LAST_APPLIED
            }
        if metadata:
            essence["metadata"] = metadata
        lean = cast(kopf.BodyEssence, essence)
        self.remove_annotations(lean, set(self.make_keys(self.key, body=body)))
        self.remove_empty_stanzas(lean)
        return lean


class LeanProgressStorage(kopf.AnnotationsProgressStorage):
    """kopf's handler progress in annotations, cleared from an essence without deep-copying it: kopf
    copies the essence it was just given (built or parsed for this event alone) once more, on every
    event of every watched object. Only the two levels this changes are copied."""

    def clear(self, *, essence: kopf.BodyEssence) -> kopf.BodyEssence:
        lean = cast(dict[str, Any], dict(essence))
        if isinstance(lean.get("metadata"), dict):
            lean["metadata"] = dict(lean["metadata"])
        annotations = lean.get("metadata", {}).get("annotations") or {}
        ours = {k for k in annotations if self.prefix and k.startswith(f"{self.prefix}/")}
        cleared = cast(kopf.BodyEssence, lean)
        self.remove_annotations(cleared, ours)
        self.remove_empty_stanzas(cleared)
        return cleared


def fast_watch_json() -> bool:
    """Parse kopf's watch streams with orjson: same objects, about three times faster. Every event
    of every watched object is parsed (a rollout of a thousand Agents is tens of thousands of pod
    and Deployment events); the standard library's parser was a tenth of the operator's CPU.
    False (and nothing changed) when kopf's API client no longer parses with `json.loads`."""
    from kopf._cogs.clients import api

    if getattr(api, "json", None) is not json:
        return False
    setattr(api, "json", types.SimpleNamespace(loads=orjson.loads, dumps=json.dumps))  # noqa: B010
    return True


PAUSE_WAITER = "pause-waiter for "
"""How kopf (1.45) names the task each watch stream starts to learn that the operator was paused."""


def end_pause_waiters() -> int:
    """Cancel the pause waiters of kopf's watch streams still running once kopf has stopped them
    all; how many there were. kopf ends a stream's waiter when the stream's generator is closed, but
    it does not close a stream whose watcher was cancelled while the stream was suspended (busy with an
    event: with a thousand Agents, the Agents' stream usually is). That waiter then runs on, and kopf
    gives each task still running at exit 5 s before it cancels it: every exit took 5 s longer.
    Call it once kopf has stopped its watchers (its cleanup handlers run after that): a live stream
    whose waiter ends takes itself for paused."""
    waiters = [t for t in asyncio.all_tasks() if t.get_name().startswith(PAUSE_WAITER) and not t.done()]
    for task in waiters:
        task.cancel()
    return len(waiters)


EXIT_REPORT_SECONDS = 1.0
"""How long after the cleanup handler the tasks still running are named (`report_tasks_left`)."""


def report_tasks_left(logger: logging.Logger, delay: float = EXIT_REPORT_SECONDS) -> None:
    """Name, `delay` seconds from now, the tasks still running: at exit kopf gives any task left once
    its own have stopped 5 s before it cancels it, so a slow exit says what it waited for. Nothing is
    logged when the exit is done before (the loop is closed with the callback still pending)."""
    this = asyncio.current_task()

    def report() -> None:
        left = sorted(
            f"{task.get_name()} ({getattr(task.get_coro(), '__qualname__', '?')})"
            for task in asyncio.all_tasks()
            if task is not this and not task.done()
        )
        if left:
            logger.info(f"{len(left)} task(s) still running {delay:g} s after the cleanup: {'; '.join(left)}")

    asyncio.get_running_loop().call_later(delay, report)
