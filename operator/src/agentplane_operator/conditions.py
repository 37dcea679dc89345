"""kstatus conditions and minimal status patches: a reconcile that changes nothing writes nothing."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Cond:
    """One condition as a reconciler decides it."""

    type: str
    ok: bool | None
    reason: str
    message: str = ""
    stalled: bool = False
    """A failure that will not fix itself (a missing prompt version, a missing Secret, a container
    that cannot start): the object is `Stalled`, not `Reconciling`."""

    @property
    def status(self) -> str:
        return "Unknown" if self.ok is None else str(self.ok)


RECONCILING = "Reconciling"
STALLED = "Stalled"
PROGRESSING = "Progressing"
"""The reason of a condition not met yet because work is under way (a rollout): routine, not a
failure, so neither a Warning Event nor an error."""


def kstatus(wanted: Iterable[Cond]) -> tuple[list[Cond], set[str]]:
    """The kstatus conditions that go with `wanted`, and the ones to remove.

    `Stalled=True` when a failure will not fix itself, `Reconciling=True` while work is under way
    or being retried; neither once everything holds. Flux's and Argo CD's health checks (kstatus)
    then read `Failed` with the reason at once, instead of waiting for their timeout.
    """
    failing = [c for c in wanted if c.ok is not True]
    stalled = next((c for c in failing if c.stalled), None)
    if stalled is not None:
        return [Cond(STALLED, True, stalled.reason, stalled.message)], {RECONCILING}
    if failing:
        first = failing[0]
        return [Cond(RECONCILING, True, first.reason, first.message)], {STALLED}
    return [], {RECONCILING, STALLED}


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_conditions(
    current: Iterable[Mapping[str, Any]], wanted: Iterable[Cond], drop: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """The wanted conditions, keeping `lastTransitionTime` (and so the whole entry) when the status is
    unchanged; conditions of other types are kept as they are, except those in `drop`."""
    previous = {c.get("type"): c for c in current}
    dropped = set(drop)
    merged: dict[str, dict[str, Any]] = {str(k): dict(v) for k, v in previous.items() if k not in dropped}
    for cond in wanted:
        old = previous.get(cond.type)
        entry = {"type": cond.type, "status": cond.status, "reason": cond.reason, "message": cond.message}
        if old is not None and old.get("status") == cond.status:
            entry["lastTransitionTime"] = old.get("lastTransitionTime") or now()
        else:
            entry["lastTransitionTime"] = now()
        merged[cond.type] = entry
    return sorted(merged.values(), key=lambda c: (c["type"] != "Ready", c["type"]))


def status_patch(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level status fields whose value differs (empty: nothing to write)."""
    return {key: value for key, value in desired.items() if current.get(key) != value}


def merge_patched(current: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """`current` as the JSON merge patch `patch` (RFC 7386, what a status write sends) leaves it on
    the server: a null removes the field, an object is merged field by field, anything else replaces.
    What the operator remembers of its write must be that, or it never equals what the watch shows."""
    merged = dict(current)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping):
            old = merged.get(key)
            merged[key] = merge_patched(old if isinstance(old, Mapping) else {}, value)
        else:
            merged[key] = value
    return merged


def ready_reason(conditions: Iterable[Cond]) -> Cond | None:
    """The first failing condition, which becomes the `Ready` reason."""
    return next((c for c in conditions if c.ok is not True), None)
