"""Third-party Kubernetes add-ons for the tests, built from the Go module proxy and cached.

``tests/cluster/build-addons.sh`` builds each once into
``${AGENTPLANE_CACHE:-~/.cache/agentplane}/addons/``:

- **kstatus**: a CLI on ``sigs.k8s.io/cli-utils``' ``pkg/kstatus/status``, the verdict Flux's
  health checks compute (``Current``, ``InProgress``, ``Failed``, ...). :func:`kstatus`.
- **crds**: upstream CRD manifests — Gateway API (standard channel), prometheus-operator's
  PodMonitor/ServiceMonitor/PrometheusRule, the Secrets Store CSI driver's SecretProviderClass,
  Flux's GitRepository. :func:`crd_files`, :func:`install_crds`.
- **traefik**: Traefik v3 with its Kubernetes Gateway API provider, a static binary
  (:func:`traefik_binary`), run against a test cluster as a host process by
  :func:`running_traefik`; :data:`TRAEFIK_GATEWAY_RULES` is the RBAC it needs.

Library use::

    install_crds(cluster, "gateway-api")
    with running_traefik(cluster, workdir) as traefik:
        ...  # a Gateway whose HTTP listener port is traefik.web_port

From a shell: ``tests/cluster/build-addons.sh [kstatus|traefik|crds|all]`` prints the
directories it built.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from support.cluster import Cluster, apply_crds
from support.ports import free_port
from support.waiting import WaitTimeout, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "tests" / "cluster" / "build-addons.sh"

Component = Literal["kstatus", "traefik", "crds"]
CrdSet = Literal["gateway-api", "prometheus-operator", "secrets-store-csi-driver", "flux-source"]
CRD_SETS: tuple[CrdSet, ...] = get_args(CrdSet)
KStatusValue = Literal["Current", "InProgress", "Failed", "Terminating", "NotFound", "Unknown"]

#: Exit code of build-addons.sh when Go is not installed.
_NO_GO_EXIT = 3

#: The GatewayClass ``spec.controllerName`` Traefik's Gateway API provider claims.
TRAEFIK_CONTROLLER_NAME = "traefik.io/gateway-controller"

#: ClusterRole rules Traefik's Gateway API provider needs: it reads only through informers
#: (list, watch; never get) and writes only statuses (update). Standard channel: no
#: ``tcproutes``, watched only with ``experimentalChannel``; no OTel, which would add ``pods``
#: get. Secrets are watched in every namespace it watches (TLS listener certificates); to
#: narrow that, ``--providers.kubernetesgateway.namespaces`` narrows every informer. The
#: traefik test runs Traefik with exactly these and fails on any "forbidden" in its log.
TRAEFIK_GATEWAY_RULES: tuple[dict[str, list[str]], ...] = (
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    {
        "apiGroups": [""],
        "resources": ["services", "secrets", "configmaps"],
        "verbs": ["list", "watch"],
    },
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
    {
        "apiGroups": ["gateway.networking.k8s.io"],
        "resources": [
            "gatewayclasses",
            "gateways",
            "httproutes",
            "grpcroutes",
            "tlsroutes",
            "referencegrants",
            "backendtlspolicies",
        ],
        "verbs": ["list", "watch"],
    },
    {
        "apiGroups": ["gateway.networking.k8s.io"],
        "resources": [
            "gatewayclasses/status",
            "gateways/status",
            "httproutes/status",
            "grpcroutes/status",
            "tlsroutes/status",
            "backendtlspolicies/status",
        ],
        "verbs": ["update"],
    },
)

_PR_SET_PDEATHSIG = 1


class AddonError(RuntimeError):
    """An add-on failed to build or run; the message says which and why."""


class AddonUnavailable(AddonError):
    """An add-on cannot be built on this machine (Go is missing)."""


# --------------------------------------------------------------------------
# Building


def build_addon(component: Component) -> Path:
    """Build (or find cached) one add-on with ``build-addons.sh``; return its output directory.

    A warm call is a stamp check (tens of milliseconds). Raises :class:`AddonUnavailable`
    when Go is missing and :class:`AddonError` (with the script's last output) on a failure.
    """
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT), component],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode == _NO_GO_EXIT:
        raise AddonUnavailable(result.stderr.strip().splitlines()[-1])
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        tail = "\n".join(result.stderr.strip().splitlines()[-30:])
        raise AddonError(f"{BUILD_SCRIPT.name} {component} failed (exit {result.returncode}):\n{tail}")
    return Path(lines[-1])


def kstatus_binary() -> Path:
    """The kstatus CLI (built on first use)."""
    return build_addon("kstatus") / "kstatus"


def traefik_binary() -> Path:
    """The static Traefik binary (built on first use: several minutes cold). Copy it into an
    image as is: it needs no libc and no other file."""
    return build_addon("traefik") / "traefik"


# --------------------------------------------------------------------------
# kstatus


@dataclass(frozen=True)
class KStatus:
    """kstatus' verdict on one object, as Flux's health checks see it."""

    status: KStatusValue
    message: str


def kstatus_many(objects: Iterable[Mapping[str, object]], *, binary: Path | None = None) -> list[KStatus]:
    """kstatus' verdict on each object (one CLI run for all); a List (``kubectl get -o json``
    of several objects) counts as its items."""
    items = [item for obj in objects for item in _items(obj)]
    if not items:
        return []
    cli = binary or kstatus_binary()
    result = subprocess.run(
        [str(cli)], input=json.dumps(items), capture_output=True, text=True, check=False, timeout=60
    )
    if result.returncode != 0:
        raise AddonError(f"kstatus failed (exit {result.returncode}): {result.stderr.strip()}")
    verdicts = [KStatus(**json.loads(line)) for line in result.stdout.splitlines()]
    if len(verdicts) != len(items):
        raise AddonError(f"kstatus printed {len(verdicts)} verdicts for {len(items)} objects")
    return verdicts


def _items(obj: Mapping[str, object]) -> list[Mapping[str, object]]:
    kind, items = obj.get("kind"), obj.get("items")
    if isinstance(kind, str) and kind.endswith("List") and isinstance(items, list):
        return [item for item in items if isinstance(item, Mapping)]
    return [obj]


def kstatus(obj: Mapping[str, object], *, binary: Path | None = None) -> KStatus:
    """kstatus' verdict on one object (for example ``kubectl get -o json`` output)."""
    return kstatus_many([obj], binary=binary)[0]


# --------------------------------------------------------------------------
# CRDs


def _as_sets(which: CrdSet | Iterable[CrdSet] | None) -> tuple[CrdSet, ...]:
    if which is None:
        return CRD_SETS
    sets: tuple[CrdSet, ...] = (which,) if isinstance(which, str) else tuple(which)
    unknown = [s for s in sets if s not in CRD_SETS]
    if unknown:
        raise ValueError(f"unknown CRD set(s) {unknown}; known: {', '.join(CRD_SETS)}")
    return sets


def crd_dir(which: CrdSet) -> Path:
    """The directory holding one set's CRD manifests (a file each)."""
    return build_addon("crds") / _as_sets(which)[0]


def crd_files(which: CrdSet | Iterable[CrdSet] | None = None) -> dict[str, Path]:
    """CRD name (``httproutes.gateway.networking.k8s.io``) -> manifest, for the given sets
    (default: all of them)."""
    root = build_addon("crds")
    files: dict[str, Path] = {}
    for crd_set in _as_sets(which):
        for path in sorted((root / crd_set).glob("*.yaml")):
            # controller-gen names its files <group>_<plural>.yaml.
            group, _, plural = path.stem.partition("_")
            files[f"{plural}.{group}"] = path
    return files


def install_crds(cluster: Cluster, which: CrdSet | Iterable[CrdSet] | None = None) -> list[str]:
    """Apply the given CRD sets (default: all) server-side and wait until they are Established;
    return the ``customresourcedefinition.apiextensions.k8s.io/<name>`` names applied."""
    root = build_addon("crds")
    names: list[str] = []
    for crd_set in _as_sets(which):
        names += apply_crds(cluster, root / crd_set)
    return names


# --------------------------------------------------------------------------
# Traefik


def traefik_args(
    *,
    web_address: str = ":8000",
    ping_address: str = ":8080",
    status_ip: str | None = None,
    log_level: str = "INFO",
) -> list[str]:
    """Traefik's command line for the Gateway API provider: an HTTP entryPoint ``web`` (a
    Gateway's HTTP listener must use this address's port), ``/ping`` on its own entryPoint,
    no calls home. ``status_ip`` is the address Traefik writes into Gateway statuses.

    Traefik finds the API server from in-cluster config when ``KUBERNETES_SERVICE_HOST`` is
    set, else from ``$KUBECONFIG``, else from ``--providers.kubernetesgateway.endpoint``/
    ``.token``/``.certAuthFilePath``."""
    args = [
        "--global.checkNewVersion=false",
        "--global.sendAnonymousUsage=false",
        f"--entryPoints.web.address={web_address}",
        f"--entryPoints.traefik.address={ping_address}",
        "--ping=true",
        "--ping.entryPoint=traefik",
        # Requests whose header names alias a managed one (X_Forwarded_For) lose those headers.
        "--entryPoints.web.http.aliasHeadersStrategy=delete",
        "--entryPoints.traefik.http.aliasHeadersStrategy=delete",
        "--providers.kubernetesgateway=true",
        f"--log.level={log_level}",
        "--log.noColor=true",
    ]
    if status_ip is not None:
        args.append(f"--providers.kubernetesgateway.statusAddress.ip={status_ip}")
    return args


def traefik_cluster_role(name: str = "traefik-gateway") -> dict[str, object]:
    """A ClusterRole with :data:`TRAEFIK_GATEWAY_RULES`."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": [dict(rule) for rule in TRAEFIK_GATEWAY_RULES],
    }


def install_traefik_rbac(
    cluster: Cluster, *, namespace: str = "traefik", service_account: str = "traefik"
) -> None:
    """A ServiceAccount bound to :func:`traefik_cluster_role` (named after it)."""
    role_name = f"{namespace}-{service_account}-gateway"
    objects: list[dict[str, object]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": service_account, "namespace": namespace},
        },
        traefik_cluster_role(role_name),
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": role_name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
            "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}],
        },
    ]
    cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    )


def service_account_kubeconfig(cluster: Cluster, *, namespace: str, name: str, path: Path) -> Path:
    """Write a kubeconfig that authenticates as a ServiceAccount (a bearer token) to ``path``."""
    token = cluster.kubectl("create", "token", name, "-n", namespace, "--duration=24h").stdout.strip()
    admin = json.loads(cluster.kubeconfig.read_text())
    user = f"system:serviceaccount:{namespace}:{name}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": admin["clusters"][0]["name"], "user": user}}],
        "current-context": user,
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)
    return path


@dataclass
class Traefik:
    """A Traefik process on the host, serving Gateway API routes of a test cluster."""

    process: subprocess.Popen[bytes]
    web_port: int
    """Port of the HTTP entryPoint ``web`` on 127.0.0.1: a Gateway's HTTP listener port."""
    ping_port: int
    log: Path
    args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Base URL of the ``web`` entryPoint."""
        return f"http://127.0.0.1:{self.web_port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        """Stop Traefik (SIGTERM, then SIGKILL) and wait for it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL the child when the thread that started it dies."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def start_traefik(
    cluster: Cluster,
    workdir: Path,
    *,
    kubeconfig: Path | None = None,
    binary: Path | None = None,
    extra_args: Sequence[str] = (),
    timeout: float = 60.0,
) -> Traefik:
    """Start Traefik against ``cluster`` (as ``kubeconfig``'s user; default admin) on loopback
    ports, its log in ``workdir/traefik.log``; return once ``/ping`` answers."""
    binary = binary or traefik_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    web_port, ping_port = free_port(), free_port()
    args = traefik_args(
        web_address=f"127.0.0.1:{web_port}", ping_address=f"127.0.0.1:{ping_port}", status_ip="127.0.0.1"
    )
    args += extra_args
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE_")}
    env["KUBECONFIG"] = str(kubeconfig or cluster.kubeconfig)
    log = workdir / "traefik.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [str(binary), *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=env,
            preexec_fn=_die_with_parent,
        )
    traefik = Traefik(process=process, web_port=web_port, ping_port=ping_port, log=log, args=args)

    def pinged() -> bool:
        if process.poll() is not None:
            raise AddonError(f"traefik exited with {process.returncode}:\n{traefik.log_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ping_port}/ping", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    try:
        wait_for("traefik /ping", pinged, timeout)
    except WaitTimeout as exc:
        traefik.stop()
        raise AddonError(f"{exc}:\n{traefik.log_text()[-3000:]}") from None
    return traefik


@contextlib.contextmanager
def running_traefik(
    cluster: Cluster,
    workdir: Path,
    *,
    kubeconfig: Path | None = None,
    binary: Path | None = None,
    extra_args: Sequence[str] = (),
) -> Iterator[Traefik]:
    """Context manager around :func:`start_traefik`; always stops Traefik."""
    traefik = start_traefik(cluster, workdir, kubeconfig=kubeconfig, binary=binary, extra_args=extra_args)
    try:
        yield traefik
    finally:
        traefik.stop()
