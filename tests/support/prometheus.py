"""A real Prometheus for the tests: Debian's `prometheus` package, on a loopback port, scraping the
targets a test names and evaluating the rule files it is given.

    with running_prometheus(workdir, targets={"runtime": ["127.0.0.1:8080"]}, rule_files=[...]) as prom:
        prom.wait_for_targets()
        prom.query('sum(rate(agentplane_requests_total[1m]))')

Scrapes and rule evaluation run every second, so tests with scaled-down windows see their rules
move within seconds. Only the standard library and httpx are used.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from support.ports import free_port
from support.service_fixtures import unavailable
from support.services import ServiceUnavailable, terminate


class PrometheusError(AssertionError):
    """Prometheus refused a query or a rule file; the message has its error."""


@dataclass
class Prometheus:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=30)
        body = response.json()
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result (a vector's samples, or a scalar as one sample)."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def query_range(self, expr: str, seconds: float, step: str = "1s") -> list[dict[str, Any]]:
        end = time.time()
        data = self.api("query_range", query=expr, start=str(end - seconds), end=str(end), step=step)
        result: list[dict[str, Any]] = data["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.api("targets")["activeTargets"]
        return active

    def wait_for_targets(self, timeout: float = 60.0) -> None:
        """Until every target has been scraped successfully once."""
        deadline = time.monotonic() + timeout
        while True:
            targets = self.targets()
            if targets and all(t["health"] == "up" for t in targets):
                return
            if time.monotonic() > deadline:
                raise PrometheusError(
                    f"targets not up: {[(t['scrapeUrl'], t['lastError']) for t in targets]}"
                )
            time.sleep(0.5)

    def alerts(self) -> list[dict[str, Any]]:
        """Alerts pending or firing now (`state`, `labels`, `annotations`)."""
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return alerts

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule (recording and alerting), with its health and last error."""
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]

    def stop(self) -> None:
        terminate(self.process)


def binary(name: str = "prometheus") -> str:
    found = shutil.which(name)
    if found is None:
        raise ServiceUnavailable(
            f"{name} is not installed (Debian's prometheus package: tools/install-system-deps.sh)"
        )
    return found


def promtool() -> str:
    """promtool's path; skips the test (fails it in CI) where Debian's prometheus is missing."""
    found = shutil.which("promtool")
    if found is None:
        unavailable("promtool", "not installed (Debian's prometheus package: tools/install-system-deps.sh)")
    assert found is not None
    return found


def check_metrics(text: str) -> None:
    """`promtool check metrics` accepts an exposition: names, types, help and its lint rules."""
    checked = subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def write_config(
    path: Path, targets: Mapping[str, Sequence[str]], rule_files: Sequence[Path], interval: str = "1s"
) -> None:
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(addresses)}]}
            for job, addresses in sorted(targets.items())
        ],
    }
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML


@contextlib.contextmanager
def running_prometheus(
    workdir: Path,
    *,
    targets: Mapping[str, Sequence[str]],
    rule_files: Sequence[Path] = (),
    timeout: float = 60.0,
) -> Iterator[Prometheus]:
    """Start Prometheus (a fresh TSDB under `workdir`), yield it once it is ready, stop it after."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    write_config(config, targets, rule_files)
    check = subprocess.run(
        [binary("promtool"), "check", "config", str(config)], capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        raise PrometheusError(f"promtool check config:\n{check.stdout}{check.stderr}")
    port = free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary(),
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=1d",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    prometheus = Prometheus(process, port, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise ServiceUnavailable(
                    f"prometheus exited with {process.returncode}: {log.read_text()[-3000:]}"
                )
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{prometheus.url}/-/ready", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise ServiceUnavailable(
                    f"prometheus not ready within {timeout:.0f}s: {log.read_text()[-3000:]}"
                )
            time.sleep(0.2)
        yield prometheus
    finally:
        prometheus.stop()
