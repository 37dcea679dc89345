"""Benchmark: the operator converging N tenants x M agents, beside the limit of the control plane.

Run: uv run python loadtests/bench_operator.py [--tenants 50] [--agents 20] [--only operator|limit]

Starts everything the tests use (PostgreSQL, Redis, a control plane with kwok nodes) and measures,
each on a fresh control plane whose kube-controller-manager and kube-scheduler run at the client rates
of a production cluster (`--rates large`: `support.cluster.LARGE_CLUSTER_RATES`, 600/s with bursts of
800; `--rates default`: client-go's 20/s):

- the limit: the objects the operator would create for every Tenant and Agent (namespace, quota,
  policies, secrets, service account; per Prompt its ConfigMap; per Agent its ConfigMap, Deployment
  and Service), rendered by the operator's own builders with the settings the operator runs with,
  server-side applied straight with kubectl (one kubectl per tenant, `--parallel` at once: as many
  as the operator's requests in flight), no operator running; timed from the first apply until
  every Deployment is Available (no owner references: there are no Agent objects to own them);
  then the Prompt change below as the same
  kind of apply of what it changes (every Agent's ConfigMap and Deployment), timed until applied.
- the operator: every Tenant, Prompt, Tool and Agent created at once, timed from the first
  `kubectl apply` (server-side, as Flux's kustomize-controller applies a Git repository;
  `--spec-apply client-side` for kubectl's default) until every Agent is Ready (its pods,
  simulated by kwok, available with the current config hash); then
  - write requests per Agent: the operator's own (its `agentplane_operator_api_writes_total`, for
    the kinds an Agent owns, plus its Agent status patches), kopf's bookkeeping patches of Agents
    (from the API server's `apiserver_request_total`), and the Events posted about Agents (listed);
  - the requests of an idle resync: every write, and the operator's reads, counted again after
    waiting past the resync interval;
  - one Prompt change per tenant (a new default of its variable changes every dependent's config):
    the time until every Agent shows its new config hash (`--tenants 1 --agents 1000`: one Prompt
    with 1,000 dependents);
  - the operator's memory: its peak (RSS), and what it holds once idle after converging;
  - with `--heap FILE` (best with `--only operator`), what that memory is: the operator runs under
    `loadtests/operator_heap.py` (tracemalloc, started after its imports), and once every Agent is
    Ready a snapshot of its live heap goes to FILE, summed here by where it was allocated. Tracing
    slows the operator several times over: such a run measures memory, not time.
- on both sides, where the machine's CPU went until they converged: the API server, etcd, the
  controller manager, the scheduler, kwok, the operator, and the rest (kubectl, the kernel). On two
  shared cores a side is as fast as the work all of them do together: that is what `operator /
  limit` compares;
- with `--timeline`, when the operator had sent its last Deployment, when a watch had seen every
  Deployment and every one was Available, and when it had written its last Agent's Ready (one more
  kubectl watch runs beside it); with `--api-server-profile DIR`, the API server's own CPU profile
  while each side converged (Go's pprof, summed up by `go tool pprof`: what the operator's requests
  cost it beyond the limit's).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from k8s.operator_specs import agent, builtin_tool, prompt, tenant  # noqa: E402

from agentplane_operator.builders import (  # noqa: E402
    AGENT_LABEL,
    build_agent_children,
    build_prompt_config_maps,
    build_tenant_children,
)
from agentplane_operator.settings import API_CONCURRENCY, OperatorSettings  # noqa: E402
from agentplane_platform.api.v1alpha1 import Agent, Prompt, Tenant, Tool  # noqa: E402
from agentplane_platform.config import resolve_agent  # noqa: E402
from support.cluster import (  # noqa: E402
    FAKE_NODE_NAMES,
    LARGE_CLUSTER_RATES,
    ClientRates,
    Cluster,
    add_fake_nodes,
    running_cluster,
)
from support.operator_process import (  # noqa: E402
    OperatorProcess,
    install_llm_secret,
    install_operator_rbac,
    operator_environment,
    start_operator,
    total_of,
)
from support.services import start_postgres, start_redis  # noqa: E402
from support.waiting import wait_for  # noqa: E402

AGENT_KINDS = (
    "ConfigMap",
    "Deployment",
    "Service",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "Agent",
)
LLM_SECRET_DATA = {"OPENAI_API_KEY": "sk-test"}
RATES = {"large": LARGE_CLUSTER_RATES, "default": None}
SPEC_APPLY: dict[str, tuple[str, ...]] = {
    "server-side": ("--server-side", "--field-manager=kustomize-controller"),
    "client-side": (),
}
PY_SPY = Path.home() / ".local" / "bin" / "py-spy"


@dataclass(frozen=True)
class Layout:
    """The benchmark's objects: per tenant its Tenant, one Prompt, one Tool and its Agents."""

    tenants: int
    agents: int

    @property
    def names(self) -> list[str]:
        return [f"bench-{i:03}" for i in range(self.tenants)]

    @property
    def total(self) -> int:
        return self.tenants * self.agents

    def tenant(self, name: str) -> dict[str, Any]:
        return tenant(
            name,
            quotas={
                "maxAgents": self.agents,
                "compute": {"pods": self.agents * 2, "cpu": "64", "memory": "256Gi"},
            },
        )

    def prompt(self, name: str, changed: bool = False) -> dict[str, Any]:
        """The tenant's Prompt; `changed`: with a new default of its variable (every dependent's
        config changes)."""
        found = prompt(f"tenant-{name}", "assistant")
        if changed:
            found["spec"]["variables"][0]["default"] = "a concise assistant"
        return found

    def namespaced(self, name: str, changed: bool = False) -> list[dict[str, Any]]:
        """The tenant's Prompt, Tool and Agents, as a tenant team applies them."""
        ns = f"tenant-{name}"
        docs = [self.prompt(name, changed), builtin_tool(ns)]
        docs += [agent(ns, f"agent-{i:04}", tools=[{"name": "calculator"}]) for i in range(self.agents)]
        return docs


class Watch:
    """`kubectl get KIND -A --watch`, one line per event: the latest value of a JSONPath for every
    object. One stream, instead of listing every object each time the count is checked (at a
    thousand objects each list cost the machine under test most of a core). Start it before the
    objects exist: kubectl prints the objects it lists first as one line, not one each.

    An API server short of CPU closes a watch whose reader falls behind ("Forcing ... watcher close
    due to unresponsiveness"), and kubectl then exits: the watch is started again (`--watch-only`),
    the objects are listed once the API server holds the new watch (kubectl's request log says its
    watch request was answered; a list taken before that missed what changed until then: 14 new
    config hashes after one restart), and then what the new watch shows, in order, is taken over that (its
    events from before the list come first, the newer after them)."""

    def __init__(self, cluster: Cluster, kind: str, jsonpath: str) -> None:
        self.cluster, self.kind = cluster, kind
        self.template = "{.metadata.namespace}/{.metadata.name} " + jsonpath + '{"\\n"}'
        self.values: dict[str, str] = {}
        self.restarts = 0
        self.failed_lists = 0
        self.missed = 0
        """Values a list found that the watch had not shown (`resync`)."""
        self._events = 0  # lines the watch has shown, and the number of each object's last one
        self._last_event: dict[str, int] = {}
        self._closed = False
        self._lock = threading.Lock()
        self._requests: Any = None  # a restarted kubectl's request log (`_watching`)
        self.process = self._start(watch_only=False)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _kubectl(self, *args: str) -> list[str]:
        return [str(self.cluster.kubectl_path), f"--kubeconfig={self.cluster.kubeconfig}", "get", self.kind, "-A",
                *args]  # fmt: skip

    def _start(self, *, watch_only: bool) -> subprocess.Popen[str]:
        args: tuple[str, ...] = ("--watch",)
        stderr: Any = subprocess.DEVNULL
        if watch_only:  # a restart: its request log says when its watch is held (`_watching`)
            if self._requests is not None:
                self._requests.close()
            self._requests = stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 (lives with the process; closed by the next start or `close`)
            args = ("--watch-only", "-v=6")
        return subprocess.Popen(
            self._kubectl(*args, "-o", f"jsonpath={self.template}"),
            stdout=subprocess.PIPE, stderr=stderr, text=True, env=self.cluster.env(),
        )  # fmt: skip

    def _watching(self, process: subprocess.Popen[str], timeout: float = 60.0) -> bool:
        """Wait until the restarted kubectl's watch request has been answered: the API server answers
        once it holds the watch, so a list taken after that misses nothing. False if kubectl exited or
        `timeout` passed first."""
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            self._requests.seek(0)
            log = self._requests.read()
            if any("watch=true" in line and "200 OK" in line for line in log.splitlines()):
                return True
            time.sleep(0.05)
        return False

    def _read(self) -> None:
        while True:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                key, _, value = line.rstrip("\n").partition(" ")
                with self._lock:
                    self.values[key] = value
                    self._events += 1
                    self._last_event[key] = self._events
            self.process.wait()
            self.process.stdout.close()
            with self._lock:
                if self._closed:
                    return
                self.restarts += 1
                self.process = process = self._start(watch_only=True)
            self._watching(process)
            self._take(self._list(), newer_than=None)  # the new watch's lines are read after it

    def _list(self, attempts: int | None = None) -> str:
        """Every object's line, listed once; a list the API server refuses (it is short of CPU when it
        closes watches) is asked for again (up to `attempts` times, else until it is given): without
        it, what changed while no watch ran is lost."""
        while True:
            listed = subprocess.run(
                self._kubectl("-o", "jsonpath={range .items[*]}" + self.template + "{end}"),
                capture_output=True, text=True, env=self.cluster.env(), check=False,
            )  # fmt: skip
            if listed.returncode == 0 or self._closed:
                return listed.stdout
            self.failed_lists += 1
            if attempts is not None and (attempts := attempts - 1) <= 0:
                return ""
            _progress(f"listing {self.kind} failed, again in 1 s: {listed.stderr.strip()[:300]}")
            time.sleep(1.0)

    def resync(self) -> int:
        """List the objects once and take the values the watch did not show: an object's listed value
        replaces its own unless the watch has shown a line of it since the list began (that line is
        newer). How many values changed: changes the watch missed."""
        with self._lock:
            began = self._events
        fixed = self._take(self._list(attempts=3), newer_than=began)
        self.missed += fixed
        return fixed

    def _take(self, listed: str, newer_than: int | None) -> int:
        """Take a list's values, except (with `newer_than`) of objects the watch has shown a line of
        since its `newer_than`th: how many values changed."""
        fixed = 0
        with self._lock:
            for line in listed.splitlines():
                key, _, value = line.partition(" ")
                newer = newer_than is not None and self._last_event.get(key, 0) > newer_than
                if not newer and self.values.get(key) != value:
                    self.values[key] = value
                    fixed += 1
        return fixed

    def snapshot(self) -> dict[str, str]:
        with self._lock:
            return dict(self.values)

    def count(self, value: str, field: int = 0) -> int:
        """How many objects show `value` as the `field`th of the space-separated values."""
        return sum(1 for v in self.snapshot().values() if ([*v.split(" "), ""])[field] == value)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            process = self.process
        process.terminate()
        process.wait(timeout=10)
        self._reader.join(timeout=10)  # it closes the process's output once read to its end
        if self._requests is not None:
            self._requests.close()
        if self.restarts:
            _progress(
                f"the {self.kind} watch was closed by the API server {self.restarts} time(s) and restarted; "
                f"{self.failed_lists} list(s) failed and were asked for again"
            )
        if self.missed:
            _progress(
                f"the {self.kind} watch missed {self.missed} change(s), found by listing when a count stalled"
            )


class StallGuard:
    """Lists a watch's objects again (`Watch.resync`) when a count taken from it has not moved for
    `stall` seconds: a watch can miss changes (one run sat at 984 of 1,000 Ready for 800 s while
    every Agent was Ready), and a count that is only waited for would then never arrive."""

    def __init__(self, watch: Watch, stall: float = 30.0) -> None:
        self.watch, self.stall = watch, stall
        self._value: object = None
        self._since = time.monotonic()

    def moved(self, value: object) -> bool:
        """Note the count's `value`; True when it stalled and a list found changes (count again)."""
        now = time.monotonic()
        if value != self._value:
            self._value, self._since = value, now
            return False
        if now - self._since < self.stall:
            return False
        self._since = now
        fixed = self.watch.resync()
        if fixed:
            _progress(
                f"{self.watch.kind}: stalled for {self.stall:.0f} s; a list found {fixed} change(s) the watch missed"
            )
        return fixed > 0


@contextmanager
def watching(cluster: Cluster, kind: str, jsonpath: str) -> Iterator[Watch]:
    watch = Watch(cluster, kind, jsonpath)
    try:
        yield watch
    finally:
        watch.close()


AVAILABLE = '{.status.conditions[?(@.type=="Available")].status}'
READY_AND_CONFIG = '{.status.conditions[?(@.type=="Ready")].status} {.status.configHash}'


AGENTS_PER_NODE = 600
"""Agent pods a fake node holds with room to roll (64 CPUs, 0.1 CPU each): the three nodes a test
cluster starts with hold a thousand Agents; more need more nodes."""


def _room_for(cluster: Cluster, layout: Layout) -> None:
    extra = math.ceil(layout.total / AGENTS_PER_NODE) - len(FAKE_NODE_NAMES)
    if extra > 0:
        add_fake_nodes(cluster, extra)


def _cpu_seconds(pid: int) -> float:
    """The process's CPU time so far (user and system), s."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_seconds() -> float:
    """CPU time the whole machine has spent busy so far (every core, every process and the kernel;
    not the time the hypervisor gave to others), s."""
    user, nice, system, _idle, _iowait, irq, softirq = (
        int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]
    )
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


class CpuLedger:
    """Where the machine's CPU went between `start` and `stop`: the control plane's processes and
    the operator each, and the rest (kubectl, this script, the kernel), s. On two shared cores a side
    converges only as fast as the work all of them do together allows."""

    def __init__(self, cluster: Cluster, operator_pid: int | None = None) -> None:
        self.pids = {p.name: p.pid for p in cluster.processes}
        if operator_pid is not None:
            self.pids["operator"] = operator_pid
        self.before: dict[str, float] = {}

    def _sample(self) -> dict[str, float]:
        sample = {"machine": _machine_busy_seconds()}
        for name, pid in self.pids.items():
            try:
                sample[name] = _cpu_seconds(pid)
            except OSError:  # gone: counted as nothing more
                sample[name] = self.before.get(name, 0.0)
        return sample

    def start(self) -> None:
        self.before = self._sample()

    def stop(self, elapsed: float) -> str:
        after = self._sample()
        used = {k: after[k] - self.before.get(k, 0.0) for k in after}
        machine = used.pop("machine")
        rest = machine - sum(used.values())
        parts = ", ".join(f"{k} {v:.0f}" for k, v in sorted(used.items(), key=lambda kv: -kv[1]))
        cores = os.cpu_count() or 1
        return (
            f"{machine:.0f} s of CPU, {machine / elapsed / cores:.0%} of {cores} cores: {parts}, "
            f"the rest (kubectl, this script, the kernel) {rest:.0f}"
        )


def _memory_mib(pid: int, field: str) -> float:
    """A memory field of the process's /proc status, MiB: `VmRSS` (resident now), `VmHWM` (its peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mib(pid: int) -> float:
    return _memory_mib(pid, "VmHWM")


def _rss_mib(pid: int) -> float:
    return _memory_mib(pid, "VmRSS")


def _short(filename: str) -> str:
    """A traced file's name from its package on (no site-packages or source-tree prefix)."""
    return filename.split("site-packages/")[-1].split("/src/")[-1]


def _heap_snapshot(operator: OperatorProcess, path: Path, agents: int) -> list[str]:
    """Signal the operator (run by `operator_heap.py`) to write its live heap to `path`; the lines
    that sum it up: the total and per Agent, then the allocation sites holding the most."""
    path.unlink(missing_ok=True)
    operator.process.send_signal(signal.SIGUSR2)
    wait_for("the operator's heap snapshot", path.exists, timeout=600, interval=1)
    snapshot = tracemalloc.Snapshot.load(str(path))
    by_line = snapshot.statistics("lineno")
    total = sum(s.size for s in by_line)
    lines = [
        f"live heap made while running: {total / 2**20:.1f} MiB in {sum(s.count for s in by_line):,} blocks, "
        f"{total / agents / 1024:.0f} KiB per Agent"
    ]
    for stat in snapshot.statistics("filename")[:6]:
        lines.append(
            f"  {stat.size / 2**20:7.1f} MiB {stat.count:>9,} blocks  {_short(stat.traceback[0].filename)}"
        )
    lines.append("  the allocation sites holding the most:")
    for stat in by_line[:6]:
        frame = stat.traceback[0]
        lines.append(
            f"  {stat.size / 2**20:7.1f} MiB {stat.count:>9,} blocks  {_short(frame.filename)}:{frame.lineno}"
        )
    return lines


def _api_requests(cluster: Cluster) -> dict[tuple[str, str, str], float]:
    """The API server's `apiserver_request_total`, summed by (resource, subresource, verb)."""
    text = cluster.kubectl("get", "--raw", "/metrics").stdout
    totals: dict[tuple[str, str, str], float] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(part.split("=", 1) for part in line[line.index("{") + 1 : line.index("}")].split(","))
        resource, subresource, verb = (
            labels.get(k, '""').strip('"') for k in ("resource", "subresource", "verb")
        )
        key = (resource, subresource, verb)
        totals[key] = totals.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE", "APPLY")


def _agent_events(cluster: Cluster) -> int:
    """The Events about Agents (only the operator posts them: kopf's poster sends them one by one,
    behind the reconciles), once their count has stopped growing for 3 s."""

    def count() -> int:
        listed = cluster.kubectl(
            "get", "events", "-A", "--field-selector", "involvedObject.kind=Agent", "-o", "name"
        )
        return len(listed.stdout.split())

    last: int | None = None  # the count 3 s before (none at the first look)

    def settled() -> tuple[int] | None:
        nonlocal last
        before, last = last, count()
        return (last,) if last == before else None

    return wait_for("the Events about Agents to stop growing", settled, timeout=120, interval=3)[0]


def _writes_on(requests: dict[tuple[str, str, str], float], resource: str, subresource: str = "") -> float:
    return sum(
        v
        for (r, s, verb), v in requests.items()
        if r == resource and s == subresource and verb in WRITE_VERBS
    )


class ApiServerProfile:
    """The API server's CPU profile while it runs: consecutive 10-s Go profiles from its
    `/debug/pprof/profile` into `directory/<label>-N.pb.gz` (the cluster started with profiling on),
    summed up at the end by `go tool pprof`."""

    SECONDS = 10

    def __init__(self, cluster: Cluster, directory: Path, label: str) -> None:
        self.cluster, self.label = cluster, label
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.files: list[Path] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._record, daemon=True)
        self._thread.start()

    def _record(self) -> None:
        while not self._stop.is_set():
            out = self.directory / f"{self.label}-{len(self.files):03}.pb.gz"
            with out.open("wb") as sink:
                done = subprocess.run(
                    [str(self.cluster.kubectl_path), f"--kubeconfig={self.cluster.kubeconfig}", "get", "--raw",
                     f"/debug/pprof/profile?seconds={self.SECONDS}"],
                    stdout=sink, stderr=subprocess.DEVNULL, env=self.cluster.env(), check=False,
                )  # fmt: skip
            if done.returncode == 0:
                self.files.append(out)

    def stop(self) -> list[str]:
        """Stop after the profile under way; the top of all of them, by cumulative CPU."""
        self._stop.set()
        self._thread.join(timeout=self.SECONDS + 30)
        go = shutil.which("go") or "/usr/local/go/bin/go"
        if not self.files:
            return [f"{self.label}: no API server profile taken"]
        top = subprocess.run(
            [go, "tool", "pprof", "-top", "-cum", "-nodecount=40", *map(str, self.files)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        return [f"{self.label}: the API server's CPU, {len(self.files)} profiles in {self.directory}",
                *top.stdout.splitlines()]  # fmt: skip


@contextmanager
def _api_server_profile(cluster: Cluster, directory: Path | None, label: str) -> Iterator[list[str]]:
    """Profile the API server meanwhile (when `directory` is given); the summary goes into the list."""
    summary: list[str] = []
    if directory is None:
        yield summary
        return
    profile = ApiServerProfile(cluster, directory, label)
    try:
        yield summary
    finally:
        summary.extend(profile.stop())


@contextmanager
def _profiling(pid: int | None, output: Path | None) -> Iterator[None]:
    """py-spy recording `pid` meanwhile (raw, collapsed stacks), when `output` is given."""
    if pid is None or output is None:
        yield
        return
    spy = subprocess.Popen(
        [str(PY_SPY), "record", "--pid", str(pid), "--format", "raw", "-o", str(output), "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()


def _settings(env: dict[str, str]) -> OperatorSettings:
    """The operator's settings from the environment it is started with."""
    prefix = "AGENTPLANE_OPERATOR_"
    fields = {k.removeprefix(prefix).lower(): v for k, v in env.items() if k.startswith(prefix)}
    return OperatorSettings.model_validate(fields)


def render(
    layout: Layout, settings: OperatorSettings, changed: bool = False
) -> dict[str, list[dict[str, Any]]]:
    """Per tenant, what the operator would create for it, rendered by its own builders (`changed`:
    after the Prompt change)."""
    rendered: dict[str, list[dict[str, Any]]] = {}
    agent_build = settings.build()
    for name in layout.names:
        owner = Tenant.model_validate(layout.tenant(name))
        docs = layout.namespaced(name, changed)
        prompts = {p.name: p for p in (Prompt.model_validate(d) for d in docs if d["kind"] == "Prompt")}
        tools = {t.name: t for t in (Tool.model_validate(d) for d in docs if d["kind"] == "Tool")}
        objects = build_tenant_children(
            owner, settings.build(llm_secret_data=LLM_SECRET_DATA), list(tools.values())
        )
        for found in prompts.values():
            objects += build_prompt_config_maps(found)
        for doc in docs:
            if doc["kind"] == "Agent":
                model = Agent.model_validate(doc)
                config = resolve_agent(model, owner, prompts, tools)
                objects += build_agent_children(model, config, agent_build)
        rendered[name] = objects
    return rendered


def _apply_all(cluster: Cluster, batches: list[str], parallel: int, *args: str) -> None:
    def one(batch: str) -> None:
        cluster.kubectl("apply", *args, "-f", "-", input=batch, timeout=600)

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        list(pool.map(one, batches))


def _wait(
    what: str,
    count: Callable[[], int],
    want: int,
    timeout: float,
    report: Callable[[str], None] | None = None,
    guard: StallGuard | None = None,
) -> None:
    last = [0]

    def done() -> bool:
        last[0] = count()
        if guard is not None and last[0] < want and guard.moved(last[0]):
            last[0] = count()
        if report is not None:
            report(f"{last[0]} of {want}")
        return last[0] >= want

    try:
        wait_for(what, done, timeout=timeout, interval=2)
    except Exception as exc:
        raise RuntimeError(f"{what}: {last[0]} of {want} after {timeout:.0f} s") from exc


@dataclass
class LimitFigures:
    converged: float
    """every Deployment Available, from the first apply"""
    changed: float
    """the Prompt change's new ConfigMaps and Deployments of every Agent applied"""
    timeline: dict[str, float]
    """when every object was applied and every Deployment seen by a watch, s from the first apply"""
    cpu: str
    """where the machine's CPU went until then (`CpuLedger`)"""


def run_limit(
    layout: Layout,
    work: Path,
    env: dict[str, str],
    rates: ClientRates | None,
    parallel: int,
    timeout: float,
    api_profile: Path | None = None,
) -> LimitFigures:
    settings = _settings(env)
    rendered = render(layout, settings)
    batches = ["\n---\n".join(json.dumps(o) for o in objects) for objects in rendered.values()]
    apply_args = ("--server-side", "--force-conflicts", "--field-manager=agentplane-operator")
    with running_cluster(
        work / "limit", REPO / "specs" / "crds", client_rates=rates, profiling=api_profile is not None
    ) as cluster:
        _room_for(cluster, layout)
        install_llm_secret_namespace(cluster)
        with (
            watching(cluster, "deployments", AVAILABLE) as deployments,
            _api_server_profile(cluster, api_profile, "limit") as summary,
        ):
            ledger = CpuLedger(cluster)
            ledger.start()
            started = time.perf_counter()
            _apply_all(cluster, batches, parallel, *apply_args)
            timeline = {"every object applied": time.perf_counter() - started}

            def available() -> int:
                if len(deployments.snapshot()) >= layout.total:
                    timeline.setdefault("every Deployment seen by a watch", time.perf_counter() - started)
                return deployments.count("True")

            _wait(
                "every Deployment Available", available, layout.total, timeout, guard=StallGuard(deployments)
            )
            converged = time.perf_counter() - started
            cpu = ledger.stop(converged)
        _report_profile(summary)
        # The Prompt change: what it changes of every Agent (its ConfigMap and Deployment), applied
        # while those Deployments roll; the operator also writes each Agent's status.
        changed = [
            "\n---\n".join(
                json.dumps(o)
                for o in objects
                if o["kind"] == "Deployment"
                or (o["kind"] == "ConfigMap" and AGENT_LABEL in o["metadata"]["labels"])
            )
            for objects in render(layout, settings, changed=True).values()
        ]
        _progress(f"limit: every Deployment Available after {converged:.1f} s")
        started = time.perf_counter()
        _apply_all(cluster, changed, parallel, *apply_args)
        figures = LimitFigures(converged, time.perf_counter() - started, timeline, cpu)
        _progress(f"limit: the Prompt change applied after {figures.changed:.1f} s")
        return figures


def _report_profile(summary: list[str]) -> None:
    for line in summary:
        print(line, file=sys.stderr, flush=True)


def _progress(line: str) -> None:
    """A figure as soon as it is measured (a long run cut short still has it)."""
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


class _Reporter:
    """Every `every` seconds of a long wait, a line of how far it got and what the operator is doing:
    its reconciles waiting or running and those done since the wait began, by cause, and its writes."""

    def __init__(self, operator: OperatorProcess, what: str, every: float = 30.0) -> None:
        self.operator, self.what, self.every = operator, what, every
        self.started = self.last = time.perf_counter()
        self.before = self._sample()

    def _sample(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        try:
            return self.operator.metrics()
        except OSError:
            return {}

    def __call__(self, progress: str) -> None:
        now = time.perf_counter()
        if now - self.last < self.every:
            return
        self.last = now
        sample = self._sample()

        def since(name: str, label: str) -> dict[str, int]:
            by: dict[str, int] = {}
            for (n, labels), value in sample.items():
                if n == name:
                    key = dict(labels).get(label, "")
                    by[key] = by.get(key, 0) + int(value - self.before.get((n, labels), 0))
            return {k: v for k, v in sorted(by.items()) if v}

        depth = {
            dict(labels)["kind"]: int(v)
            for (n, labels), v in sample.items()
            if n == "agentplane_operator_queue_depth" and v
        }
        _progress(
            f"  {self.what}, {now - self.started:.0f} s: {progress}; queued or running {depth}; "
            f"reconciles since by cause {since('agentplane_operator_reconcile_total', 'cause')}; "
            f"writes since {since('agentplane_operator_api_writes_total', 'kind')}"
        )


def install_llm_secret_namespace(cluster: Cluster) -> None:
    cluster.kubectl("create", "namespace", "agentplane-system")
    install_llm_secret(cluster, LLM_SECRET_DATA)


@dataclass
class OperatorFigures:
    applied: float
    converged: float
    writes: dict[str, float]
    own: float
    kopf: float
    events: float
    """Events posted about Agents as they converged (each a POST of its own)."""
    idle_writes: dict[str, float]
    idle_wait: float
    propagated: float
    dependents: int
    start_mib: float
    peak_mib: float
    idle_mib: float
    cpu_converged: float
    cpu_propagated: float
    heap: list[str]
    gc: str
    """The operator's garbage collections until every Agent was Ready."""
    timeline: dict[str, float]
    """With `--timeline`: when the operator had sent its last Deployment, when a watch had seen every
    Deployment and every one was Available, and when it had written its last Ready, s from the first
    apply."""
    cpu: str
    """Where the machine's CPU went until every Agent was Ready (`CpuLedger`)."""


def _gc_pauses(operator: OperatorProcess) -> str:
    """The operator's cyclic garbage collections so far (`agentplane_operator_gc_pause_seconds`): their
    pauses' total, their number, and the bucket of the longest."""
    name = "agentplane_operator_gc_pause_seconds"
    samples = operator.metrics()
    total = sum(v for (n, _), v in samples.items() if n == f"{name}_sum")
    count = sum(v for (n, _), v in samples.items() if n == f"{name}_count")
    by_bound: dict[float, float] = {}
    for (n, labels), v in samples.items():
        if n == f"{name}_bucket":
            bound = float(dict(labels)["le"])
            by_bound[bound] = by_bound.get(bound, 0) + v
    bounds = sorted(by_bound)
    # the first bound whose cumulative count holds every collection bounds the longest pause
    longest = next((b for b in bounds if by_bound[b] >= count), math.inf)
    return f"{total:.1f} s in {int(count):,} collections, the longest at most {longest:g} s"


def run_operator(
    layout: Layout,
    work: Path,
    services: tuple[str, str],
    rates: ClientRates | None,
    parallel: int,
    timeout: float,
    resync: float,
    profile: Path | None,
    keep_log: Path | None = None,
    heap: Path | None = None,
    timeline: bool = False,
    api_profile: Path | None = None,
    spec_apply: tuple[str, ...] = (),
    idle_check: bool = True,
) -> OperatorFigures:
    redis_url, database_url = services
    with running_cluster(
        work / "operator", REPO / "specs" / "crds", client_rates=rates, profiling=api_profile is not None
    ) as cluster:
        _room_for(cluster, layout)
        kubeconfig = install_operator_rbac(cluster, work)
        operator = start_operator(
            cluster, kubeconfig, work, redis_url=redis_url, database_url=database_url,
            qdrant_path=work / "qdrant", resync_seconds=resync,
            extra_env={
                # as many requests in flight as the limit's kubectl processes
                "AGENTPLANE_OPERATOR_API_CONCURRENCY": str(parallel),
                **({"AGENTPLANE_BENCH_HEAP_SNAPSHOT": str(heap)} if heap else {}),
            },
            launcher=REPO / "loadtests" / "operator_heap.py" if heap else None,
        )  # fmt: skip
        agents = Watch(cluster, "agents", READY_AND_CONFIG)  # before the Agents exist
        deployments = Watch(cluster, "deployments", AVAILABLE) if timeline else None
        milestones: dict[str, float] = {}

        def ready() -> int:
            if deployments is not None:
                seen = deployments.snapshot()
                done = operator.metrics()
                for what, reached in (
                    (
                        "the operator's last Deployment sent",
                        total_of(done, "agentplane_operator_api_writes_total", kind="Deployment")
                        >= layout.total,
                    ),
                    ("every Deployment seen by a watch", len(seen) >= layout.total),
                    ("every Deployment Available", sum(v == "True" for v in seen.values()) >= layout.total),
                    (
                        "the operator's last Agent Ready written",
                        total_of(done, "agentplane_operator_agent_ready_seconds_count") >= layout.total,
                    ),
                ):
                    if reached and what not in milestones:
                        milestones[what] = time.perf_counter() - started
            return agents.count("True")

        start_mib = _rss_mib(operator.process.pid)  # its imports, and no object yet
        try:
            names = layout.names
            with (
                _profiling(operator.process.pid, profile),
                _api_server_profile(cluster, api_profile, "operator") as summary,
            ):
                cpu_at_start = _cpu_seconds(operator.process.pid)
                ledger = CpuLedger(cluster, operator.process.pid)
                ledger.start()
                started = time.perf_counter()
                tenants = [layout.tenant(n) for n in names]
                cluster.kubectl(
                    "apply", *spec_apply, "-f", "-", input="\n---\n".join(json.dumps(t) for t in tenants),
                    timeout=300,
                )  # fmt: skip
                wanted = {f"namespace/tenant-{n}" for n in names}
                wait_for(
                    "namespaces",
                    lambda: wanted <= set(cluster.kubectl("get", "namespaces", "-o", "name").stdout.split()),
                    timeout=300,
                    interval=1,
                )
                _apply_all(
                    cluster,
                    ["\n---\n".join(json.dumps(d) for d in layout.namespaced(n)) for n in names],
                    parallel,
                    *spec_apply,
                )
                applied = time.perf_counter() - started
                report = _Reporter(operator, "every Agent Ready")
                _wait("every Agent Ready", ready, layout.total, timeout, report, StallGuard(agents))
                converged = time.perf_counter() - started
                cpu_converged = _cpu_seconds(operator.process.pid) - cpu_at_start
                machine_cpu = ledger.stop(converged)
                collections = _gc_pauses(operator)
            _report_profile(summary)
            _progress(
                f"operator: every Agent Ready after {converged:.1f} s ({cpu_converged:.0f} s of CPU, "
                f"peak RSS {_peak_rss_mib(operator.process.pid):.0f} MiB)"
            )
            time.sleep(5)  # let trailing status writes land before counting
            writes = {
                kind: operator.total("agentplane_operator_api_writes_total", kind=kind)
                for kind in AGENT_KINDS
            }
            own = sum(writes.values()) - layout.tenants  # one ConfigMap per Prompt version, not an Agent's
            kopf = sum(
                v
                for (r, sub, verb), v in _api_requests(cluster).items()
                if (r, sub, verb) == ("agents", "", "PATCH")
            )
            events = _agent_events(cluster)
            peak_mib = _peak_rss_mib(operator.process.pid)
            held = _heap_snapshot(operator, heap, layout.total) if heap else []

            # An idle resync: nothing changed, every timer fires once more.
            def counted() -> dict[str, float]:
                requests = _api_requests(cluster)
                return {
                    "operator": operator.writes(),
                    "operator reads": operator.total("agentplane_operator_api_reads_total"),
                    **{r: _writes_on(requests, r) for r in ("agents", "tenants", "prompts", "tools")},
                    **{f"{r}/status": _writes_on(requests, r, "status") for r in ("agents", "tenants")},
                    "events": _writes_on(requests, "events"),
                    "clusterkopfpeerings": _writes_on(requests, "clusterkopfpeerings"),
                }

            before = counted()
            idle_wait = resync + 20 if idle_check else 0.0
            time.sleep(idle_wait)
            after = counted()
            idle = {k: after[k] - before[k] for k in before}
            idle_mib = _rss_mib(operator.process.pid)

            # One Prompt change per tenant: a new default of its variable changes every dependent's config.
            prompt_profile = profile.with_suffix(".prompt" + profile.suffix) if profile else None

            def config_hashes() -> dict[str, str]:
                return {k: ([*v.split(" "), ""])[1] for k, v in agents.snapshot().items()}

            hashes = config_hashes()
            bumped = [layout.prompt(n, changed=True) for n in names]
            cpu_before_change = _cpu_seconds(operator.process.pid)
            with _profiling(operator.process.pid, prompt_profile):
                changed_at = time.perf_counter()
                cluster.kubectl(
                    "apply", *spec_apply, "-f", "-", input="\n---\n".join(json.dumps(p) for p in bumped)
                )
                report = _Reporter(operator, "the Prompt change")
                guard = StallGuard(agents)

                def propagated_to_all() -> bool:
                    reached = sum(h != hashes[k] for k, h in config_hashes().items())
                    if reached < len(hashes) and guard.moved(reached):
                        reached = sum(h != hashes[k] for k, h in config_hashes().items())
                    report(f"{reached} of {len(hashes)} dependents have the new config hash")
                    return reached == len(hashes)

                wait_for(
                    "every dependent's new config hash", propagated_to_all, timeout=timeout, interval=0.1
                )
                propagated = time.perf_counter() - changed_at
            _progress(f"operator: the Prompt change reached every dependent after {propagated:.1f} s")
            cpu_propagated = _cpu_seconds(operator.process.pid) - cpu_before_change
            peak_mib = max(peak_mib, _peak_rss_mib(operator.process.pid))
        finally:
            agents.close()
            if deployments is not None:
                deployments.close()
            stopping = time.perf_counter()
            operator.stop()  # SIGTERM, and SIGKILL after 30 s
            code = operator.process.returncode
            _progress(f"operator: exit code {code}, {time.perf_counter() - stopping:.1f} s after SIGTERM")
            if keep_log is not None:
                keep_log.write_bytes(operator.log.read_bytes())
    return OperatorFigures(
        applied, converged, writes, own, kopf, events, idle, idle_wait, propagated, len(hashes), start_mib,
        peak_mib, idle_mib, cpu_converged, cpu_propagated, held, collections, milestones, machine_cpu,
    )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--only", choices=("operator", "limit"), default=None, help="run only one side")
    parser.add_argument("--rates", choices=tuple(RATES), default="large", help="control-plane client rates")
    parser.add_argument(
        "--parallel",
        type=int,
        default=API_CONCURRENCY,
        help="kubectl processes applying at once: as many as the operator's requests in flight "
        "(`AGENTPLANE_OPERATOR_API_CONCURRENCY`), by default",
    )
    parser.add_argument("--resync", type=float, default=60.0, help="the operator's resync interval, s")
    parser.add_argument("--timeout", type=float, default=900.0, help="longest wait for convergence, s")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy the operator while it converges (and into FILE.prompt.EXT while a Prompt change propagates)",
    )
    parser.add_argument("--operator-log", type=Path, default=None, help="keep the operator's log there")
    parser.add_argument(
        "--heap",
        type=Path,
        default=None,
        help="trace the operator's heap (slow: memory, not time) and snapshot it into FILE once every Agent "
        "is Ready",
    )
    parser.add_argument(
        "--timeline",
        action="store_true",
        help="when the operator sent its last Deployment, when every Deployment was seen and Available, and "
        "when it wrote its last Ready (one more kubectl watch running beside the operator)",
    )
    parser.add_argument(
        "--spec-apply",
        choices=tuple(SPEC_APPLY),
        default="server-side",
        help="how the specs are applied: server-side, as Flux's kustomize-controller applies a Git "
        "repository's; or client-side, `kubectl apply`'s default (a GET before each, and the whole spec "
        "again in an annotation)",
    )
    parser.add_argument(
        "--no-idle-check",
        action="store_true",
        help="skip the idle resync's count (it waits past the resync interval): for a run comparing "
        "convergence and the Prompt change only",
    )
    parser.add_argument(
        "--api-server-profile",
        type=Path,
        default=None,
        help="profile the API server (Go's pprof) while each side converges, into DIR; needs the Go "
        "toolchain `make k8s-binaries` uses",
    )
    args = parser.parse_args()
    layout = Layout(args.tenants, args.agents)
    rates = RATES[args.rates]

    with tempfile.TemporaryDirectory(prefix="agentplane-bench-op-") as tmp:
        work = Path(tmp)
        postgres, redis = start_postgres(work / "pg"), start_redis(work / "redis")
        env = operator_environment(
            redis_url=redis.url, database_url=postgres.url, qdrant_path=work / "qdrant",
            metrics_port=0, resync_seconds=args.resync,
        )  # fmt: skip
        try:
            limit = (
                run_limit(layout, work, env, rates, args.parallel, args.timeout, args.api_server_profile)
                if args.only != "operator"
                else None
            )
            figures = (
                run_operator(
                    layout,
                    work,
                    (redis.url, postgres.url),
                    rates,
                    args.parallel,
                    args.timeout,
                    args.resync,
                    args.profile,
                    args.operator_log,
                    args.heap,
                    args.timeline,
                    args.api_server_profile,
                    SPEC_APPLY[args.spec_apply],
                    not args.no_idle_check,
                )
                if args.only != "limit"
                else None
            )
        finally:
            postgres.stop()
            redis.stop()

    n = layout.total
    where = (
        f"--kube-api-qps={rates.qps:g} --kube-api-burst={rates.burst}" if rates else "client-go default 20/30"
    )
    print(
        f"{layout.tenants} tenants x {layout.agents} agents = {n} agents; controller-manager/scheduler {where}"
    )
    if limit is not None:
        print(
            f"  limit: every Deployment Available after   {limit.converged:6.1f} s  (kubectl apply --server-side)"
        )
        for what, at in limit.timeline.items():
            print(f"  limit: {what} after {at:6.1f} s")
        print(f"  limit: the machine until then: {limit.cpu}")
        print(f"  limit: a Prompt change's ConfigMaps and Deployments applied {limit.changed:6.1f} s")
    if figures is not None:
        f = figures
        print(f"  operator: all objects applied after      {f.applied:6.1f} s")
        print(
            f"  operator: every Agent Ready after        {f.converged:6.1f} s  ({f.cpu_converged:.1f} s of CPU)"
        )
        for what, at in f.timeline.items():
            print(f"  operator: {what} after {at:6.1f} s")
        print(f"  operator: the machine until then: {f.cpu}")
        print(f"  operator garbage collections until then  {f.gc}")
        if limit is not None:
            print(f"  operator / limit                         {f.converged / limit.converged:6.2f}")
        kinds = ", ".join(f"{k} {int(v)}" for k, v in f.writes.items())
        print(
            f"  operator writes per Agent      {f.own / n:6.2f}  ({kinds}; minus {layout.tenants} Prompt maps)"
        )
        print(f"  kopf bookkeeping per Agent     {f.kopf / n:6.2f}  (PATCH of the Agent object)")
        print(
            f"  Events about Agents per Agent  {f.events / n:6.2f}  (POST of an Event: Ready, or a failure)"
        )
        print(f"  total writes per Agent         {(f.own + f.kopf + f.events) / n:6.2f}")
        idle = ", ".join(f"{k} {int(v)}" for k, v in f.idle_writes.items())
        print(f"  requests in {f.idle_wait:.0f} s idle (resync {args.resync:.0f} s): {idle}")
        traced = " (tracemalloc's own records included)" if f.heap else ""
        print(
            f"  operator memory (RSS)          {f.peak_mib:6.0f} MiB at its peak; {f.idle_mib:.0f} MiB once idle, "
            f"{f.start_mib:.0f} MiB at its start{traced}"
        )
        for line in f.heap:
            print(f"  {line}")
        print(
            f"  {layout.tenants} Prompt change(s) -> all {f.dependents} dependents' new config hash: "
            f"{f.propagated:.1f} s ({f.cpu_propagated:.1f} s of CPU)"
        )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
