"""Why an agent's pods do not run: read from the pods' status, for the Agent's conditions.

A Deployment only says that replicas are unavailable. The pods say why — a Secret that does not
exist, an image that cannot be pulled, a runtime that exits because its stores are unreachable
(its termination message) — and that is what a tenant team needs to see on the Agent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

STALLED_WAITING = frozenset(
    {
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
        "ImagePullBackOff",
        "ErrImagePull",
        "ErrImageNeverPull",
        "InvalidImageName",
        "CrashLoopBackOff",
    }
)
"""Container waiting reasons that do not clear without someone changing something."""


@dataclass(frozen=True, slots=True)
class PodProblem:
    """What keeps one pod from running, as the kubelet and the container report it."""

    pod: str
    config_hash: str
    """The agent config the pod runs (its template annotation): problems of old pods are history."""
    reason: str
    message: str
    stalled: bool

    def describe(self) -> str:
        return (
            f"pod {self.pod}: {self.reason}: {self.message}"
            if self.message
            else f"pod {self.pod}: {self.reason}"
        )


def _tail(message: str, limit: int = 600) -> str:
    """A termination message, trimmed to its last lines (a traceback's end says the most)."""
    text = message.strip()
    return text if len(text) <= limit else "…" + text[-limit:]


def pod_problem(pod: Mapping[str, Any], config_annotation: str) -> PodProblem | None:
    """The problem of one pod, or None when it is running or still starting normally."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    name = str(meta.get("name", ""))
    config_hash = str((meta.get("annotations") or {}).get(config_annotation, ""))
    statuses: Iterable[Mapping[str, Any]] = [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]
    for container in statuses:
        state = container.get("state") or {}
        last = (container.get("lastState") or {}).get("terminated") or {}
        waiting = state.get("waiting") or {}
        reason = str(waiting.get("reason") or "")
        if reason in STALLED_WAITING:
            message = str(waiting.get("message") or "")
            if last:
                said = str(last.get("message") or "").strip()
                exited = f"exited with code {last.get('exitCode')} ({last.get('reason', 'Error')})"
                message = _tail(said) if said else exited
            return PodProblem(name, config_hash, reason, message, stalled=True)
        terminated = state.get("terminated") or {}
        if terminated and terminated.get("exitCode") not in (0, None):
            said = str(terminated.get("message") or "").strip()
            message = _tail(said) if said else f"exited with code {terminated.get('exitCode')}"
            return PodProblem(name, config_hash, "ContainerExited", message, stalled=False)
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            reason = str(condition.get("reason") or "Unschedulable")
            return PodProblem(name, config_hash, reason, str(condition.get("message") or ""), stalled=False)
    return None
