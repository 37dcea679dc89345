"""Benchmark: `agentplane validate` over 10,000 spec files (200 tenants x 50 files).

Run: uv run python loadtests/bench_validate.py [--tenants N] [--repeat R]
Prints the wall-clock time of the CLI (a fresh process, as CI runs it), best of R runs. The tree
passes the prod admission policies of policies/, which validate evaluates on every object, as in CI.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

POLICIES = Path(__file__).resolve().parents[1] / "policies"

TENANT = """apiVersion: agentplane.io/v1alpha1
kind: Tenant
metadata:
  name: {t}
  labels: {{agentplane.io/team: {t}, agentplane.io/cost-center: cc-4711}}
spec:
  owners: [{{kind: Group, name: {t}-owners}}]
  tier: premium
  allowedModels: [azure/gpt-4o, azure/gpt-4o-mini, openai/gpt-4o-mini]
  quotas: {{maxAgents: 50}}
  knowledgeBases:
    - {{name: docs, embeddingModel: azure/text-embedding-3-small, dimensions: 1536}}
  egress: [{{host: api.{t}.example}}]
"""
PROMPT = """apiVersion: agentplane.io/v1alpha1
kind: Prompt
metadata: {{name: prompt-{i}, namespace: tenant-{t}}}
spec:
  version: 2
  template: "You help {{{{ team }}}} with topic {i}. Today is {{{{ date }}}}."
  variables: [{{name: team}}]
  previousVersions:
    - {{version: 1, template: "You help {{{{ team }}}}.", variables: [{{name: team}}]}}
"""
TOOL = """apiVersion: agentplane.io/v1alpha1
kind: Tool
metadata: {{name: tool-{i}, namespace: tenant-{t}}}
spec:
  type: http
  description: Tool number {i}
  url: https://api.{t}.example/tools/{i}
  parameters: {{type: object, properties: {{q: {{type: string}}}}, required: [q]}}
"""
AGENT = """apiVersion: agentplane.io/v1alpha1
kind: Agent
metadata: {{name: agent-{i}, namespace: tenant-{t}}}
spec:
  model: {{name: azure/gpt-4o, fallbacks: [azure/gpt-4o-mini, openai/gpt-4o-mini], parameters: {{temperature: 0.2}}}}
  prompt: {{name: prompt-{p}, version: {v}, variables: {{team: team-{i}}}}}
  tools: [{{name: tool-0}}, {{name: tool-{k}}}]
  knowledge: [{{name: docs, topK: 4}}]
  runtime: {{autoscaling: {{minReplicas: 1, maxReplicas: 4}}}}
"""


def write_tree(root: Path, tenants: int) -> int:
    files = 0
    for n in range(tenants):
        t = f"team-{n:04d}"
        base = root / "tenants" / t
        for sub in ("agents", "tools", "prompts"):
            (base / sub).mkdir(parents=True)
        (base / "tenant.yaml").write_text(TENANT.format(t=t))
        files += 1
        for i in range(2):
            (base / "prompts" / f"prompt-{i}.yaml").write_text(PROMPT.format(t=t, i=i))
        for i in range(3):
            (base / "tools" / f"tool-{i}.yaml").write_text(TOOL.format(t=t, i=i))
        for i in range(44):
            agent = AGENT.format(t=t, i=i, p=i % 2, v=1 + i % 2, k=1 + i % 2)
            (base / "agents" / f"agent-{i}.yaml").write_text(agent)
        files += 2 + 3 + 44
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tenants", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = write_tree(root, args.tenants)
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "agentplane_platform",
                    "validate",
                    str(root),
                    "--policies",
                    str(POLICIES),
                ],
                capture_output=True,
                text=True,
            )
            times.append(time.perf_counter() - start)
            if done.returncode != 0:
                sys.exit(f"validate failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
        print(done.stdout.strip().splitlines()[-1])
        print(
            f"validate {files} files: best {min(times):.2f} s, median {sorted(times)[len(times) // 2]:.2f} s"
        )


if __name__ == "__main__":
    main()
