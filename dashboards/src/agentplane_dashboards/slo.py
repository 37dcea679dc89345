"""SLO definitions (`dashboards/slos/*.yaml`): the model, and loading with errors at file:line.

The shape is close to Sloth's `prometheus/v1` spec, which SREs know: a file names its service and
lists SLOs, each with an SLI (good/bad events as PromQL with a `{{window}}` placeholder, or a latency
threshold on a histogram), an objective in percent, a window, and its alerting (name, labels,
annotations, runbook; page and ticket tuned apart).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agentplane_platform.specs import Problem, load_yaml_models

WINDOW = "{{window}}"
"""Placeholder in event queries for the range each recording rule evaluates (`5m`, `1h`, `30d`)."""

PAGE_BURNS = ((14.4, "1h", "5m"), (6.0, "6h", "30m"))
"""Multi-window multi-burn-rate page: (burn rate, long window, short window), either pair firing."""
TICKET_BURNS = ((3.0, "1d", "2h"), (1.0, "3d", "6h"))
"""Multi-window multi-burn-rate ticket (the Google SRE workbook's defaults for a 30-day window)."""

_DURATION = re.compile(r"^([0-9]+)(ms|s|m|h|d|w)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_LABEL = r"^[a-zA-Z_][a-zA-Z0-9_]*$"
_SLUG = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_ALERT_NAME = r"^[A-Z][A-Za-z0-9]*$"


def duration_seconds(text: str) -> float:
    """Seconds of a Prometheus duration with one unit (`5m`, `30d`)."""
    found = _DURATION.match(text)
    if found is None:
        raise ValueError(f"{text!r} is not a duration (expected a number and one of ms, s, m, h, d, w: 30d)")
    return int(found.group(1)) * _UNIT_SECONDS[found.group(2)]


def format_duration(seconds: float) -> str:
    """The shortest Prometheus duration for `seconds` (whole milliseconds)."""
    millis = round(seconds * 1000)
    if millis <= 0:
        raise ValueError(f"duration {seconds}s is not positive")
    for unit, size in (("w", 604800_000), ("d", 86400_000), ("h", 3600_000), ("m", 60_000), ("s", 1000)):
        if millis % size == 0:
            return f"{millis // size}{unit}"
    return f"{millis}ms"


Duration = Annotated[str, Field(pattern=_DURATION.pattern, examples=["30d", "5m"])]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EventsSLI(_Strict):
    """Bad and total events as PromQL, each a per-second rate over `{{window}}`.

    Both must keep the SLO's `by` labels (aggregate with `sum by (...)`). A window without any bad
    event counts as zero errors, not as no data.
    """

    errors: str = Field(
        min_length=1,
        description='Rate of bad events, e.g. `sum by (tenant) (rate(x{status="error"}[{{window}}]))`.',
    )
    total: str = Field(min_length=1, description="Rate of all events that count (good and bad).")

    @field_validator("errors", "total")
    @classmethod
    def _windowed(cls, query: str) -> str:
        if WINDOW not in query:
            raise ValueError(f"the query must read its range from {WINDOW} (e.g. rate(x[{WINDOW}]))")
        return query.strip()


class LatencySLI(_Strict):
    """Events slower than a threshold, from a Prometheus histogram: good events are those in the
    bucket whose `le` is the threshold (which must be one of the histogram's buckets)."""

    histogram: str = Field(pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]*$", description="Name without _bucket.")
    threshold: float = Field(gt=0, description="Seconds; a bucket boundary of the histogram.")
    selector: str = Field(
        default="", pattern=r"^(\{.*\})?$", description='Label matchers, e.g. `{status="ok"}`.'
    )


class SLI(_Strict):
    """Exactly one of `events` and `latency`."""

    events: EventsSLI | None = None
    latency: LatencySLI | None = None

    @model_validator(mode="after")
    def _one(self) -> SLI:
        if (self.events is None) == (self.latency is None):
            raise ValueError("set exactly one of events and latency")
        return self


class Severity(_Strict):
    """What differs between the page and the ticket alert."""

    for_: Duration = Field(alias="for")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class Alerting(_Strict):
    name: str = Field(pattern=_ALERT_NAME, description="Alert name shared by the page and the ticket.")
    runbook: str = Field(pattern=r"^https://", description="Runbook URL, in every alert's annotations.")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    page: Severity = Severity.model_validate({"for": "2m"})
    ticket: Severity = Severity.model_validate({"for": "15m"})

    @field_validator("labels")
    @classmethod
    def _own_labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for reserved in ("severity", "slo", "service"):
            if reserved in labels:
                raise ValueError(f"label {reserved!r} is set by the generator")
        return labels


class SLO(_Strict):
    name: str = Field(pattern=_SLUG, max_length=63)
    description: str = Field(min_length=1)
    objective: float = Field(gt=0, lt=100, description="Percent of good events, e.g. 99.5.")
    window: Duration = "30d"
    by: list[Annotated[str, Field(pattern=_LABEL)]] = Field(
        default_factory=list, description="Labels the SLI is computed per (tenant, agent)."
    )
    sli: SLI
    alerting: Alerting

    @field_validator("window")
    @classmethod
    def _window(cls, window: str) -> str:
        if duration_seconds(window) < duration_seconds("3d"):
            raise ValueError("the window must be at least 3d, the longest burn-rate alert window")
        return window

    @field_validator("objective")
    @classmethod
    def _burnable(cls, objective: float) -> float:
        fastest = max(burn for burn, _, _ in PAGE_BURNS)
        budget = 1 - objective / 100
        if fastest * budget >= 1:
            raise ValueError(
                f"objective {objective:g}% leaves an error budget of {budget:.4g}: a {fastest:g}x burn "
                f"would need an error ratio above 1, so the page alert could never fire (use an "
                f"objective above {100 - 100 / fastest:.2f}%)"
            )
        return objective

    @property
    def objective_ratio(self) -> float:
        """The objective as a ratio (0.995 for 99.5 %)."""
        return round(self.objective / 100, 10)

    @property
    def error_budget(self) -> float:
        """The share of events allowed to be bad (0.005 for 99.5 %)."""
        return round(1 - self.objective / 100, 10)


class SLOFile(_Strict):
    """One file: a service and its SLOs."""

    service: str = Field(pattern=_SLUG)
    labels: dict[str, str] = Field(default_factory=dict, description="Added to every alert of the file.")
    slos: list[SLO] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> SLOFile:
        names = [s.name for s in self.slos]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"SLO names repeat: {', '.join(duplicates)}")
        return self


@dataclass(frozen=True, slots=True)
class ServiceSLO:
    """An SLO with the service it belongs to, as the generators use it."""

    service: str
    slo: SLO
    labels: dict[str, str]

    @property
    def name(self) -> str:
        return self.slo.name


class SLOError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(p.format() for p in problems))


def load_slos(paths: Iterable[Path]) -> list[ServiceSLO]:
    """Every SLO of the files, sorted by service and name; SLOError lists every problem at once."""
    problems: list[Problem] = []
    found: list[ServiceSLO] = []
    seen: dict[str, str] = {}
    for path in sorted(paths):
        documents, file_problems = load_yaml_models(path, SLOFile)
        problems += file_problems
        for document, spec in documents:
            for index, slo in enumerate(spec.slos):
                if slo.name in seen:
                    problems.append(
                        Problem(
                            document.file,
                            document.position(("slos", index, "name")),
                            f"SLO {slo.name!r} is also defined in {seen[slo.name]}; SLO names are unique",
                            path=f"slos[{index}].name",
                        )
                    )
                    continue
                seen[slo.name] = document.file
                found.append(ServiceSLO(spec.service, slo, spec.labels))
    if problems:
        raise SLOError(problems)
    return sorted(found, key=lambda s: (s.service, s.name))


__all__ = [
    "PAGE_BURNS",
    "SLI",
    "SLO",
    "TICKET_BURNS",
    "WINDOW",
    "Alerting",
    "EventsSLI",
    "LatencySLI",
    "SLOError",
    "SLOFile",
    "ServiceSLO",
    "ValidationError",
    "duration_seconds",
    "format_duration",
    "load_slos",
]
