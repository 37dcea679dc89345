"""The load scenario (loadtests/locustfile.py) run headless in a process of its own, as a platform
team runs it, and its CSV statistics read back."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOCUSTFILE = REPO / "loadtests" / "locustfile.py"


@dataclass
class Run:
    code: int
    output: str
    stats: dict[tuple[str, str], dict[str, str]]
    """Rows of `_stats.csv` by (type, name)."""
    failures: list[dict[str, str]]
    exceptions: list[dict[str, str]]

    def count(self, type_: str, name: str) -> int:
        row = self.stats.get((type_, name))
        return int(row["Request Count"]) if row else 0

    def failed(self) -> int:
        return int(self.stats[("", "Aggregated")]["Failure Count"])


def locust(host: str, csv_prefix: Path, seconds: int, users: int, **variables: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTPLANE_")}
    env["AGENTPLANE_LOAD_THINK_SECONDS"] = "0.05,0.2"  # short think time: more requests
    env.update(variables)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "--host",
            host,
            "--users",
            str(users),
            "--spawn-rate",
            str(users),
            "--run-time",
            f"{seconds}s",
            "--only-summary",
            "--csv",
            str(csv_prefix),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )


def collect(process: subprocess.Popen[str], csv_prefix: Path) -> Run:
    output, _ = process.communicate(timeout=60)

    def rows(suffix: str) -> list[dict[str, str]]:
        path = csv_prefix.parent / f"{csv_prefix.name}_{suffix}.csv"
        assert path.exists(), output
        with path.open(newline="") as file:
            return list(csv.DictReader(file))

    stats = {(row["Type"], row["Name"]): row for row in rows("stats")}
    return Run(process.returncode, output, stats, rows("failures"), rows("exceptions"))
