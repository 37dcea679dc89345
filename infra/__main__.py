"""Entry point of the Pulumi project (`Pulumi.yaml` at the repository root: `main: infra/`)."""

from pathlib import Path

from agentplane_infra import program

program(Path(__file__).resolve().parent.parent)
