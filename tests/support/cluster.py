"""A throwaway Kubernetes control plane for tests.

Runs real etcd, kube-apiserver, kube-controller-manager and kube-scheduler,
plus kwok simulating nodes and pod lifecycles (pods are scheduled onto fake
nodes and become Ready; nothing actually runs). Binaries are compiled from the
Go module proxy by ``tests/cluster/build.sh`` and cached.

With ``real_node=True`` (``--real-node``) the cluster also gets one real node
(``support.node``: containerd, kubelet, kube-proxy, kube-router in a network
namespace of its own) on which pods that opt in actually run; the API server
then listens on ``netplan.HOST_ADDRESS`` instead of loopback and the
``kubernetes`` Service has real endpoints. Addresses: ``support.netplan``.

Library use::

    with running_cluster(workdir) as cluster:
        cluster.kubectl("get", "nodes")

Command line::

    python tests/support/cluster.py up [--dir DIR] [--crd-dir DIR] [--real-node {no,auto,yes}]
                                       [--policies DIR --policy-environment ENV]
    python tests/support/cluster.py down [--dir DIR]
    python tests/support/cluster.py build      # just build/locate the binaries

``up`` leaves the cluster running detached and prints ``export KUBECONFIG=...``.

Only the standard library, ``cryptography`` and subprocesses are used.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import datetime
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agentplane_platform.policies import policy_environments

try:
    from support import netplan, node
except ModuleNotFoundError:  # run as a script: python tests/support/cluster.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from support import netplan, node
from support.ports import free_port
from support.waiting import WaitTimeout, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "tests" / "cluster" / "build.sh"
KWOK_STAGES = REPO_ROOT / "tests" / "cluster" / "kwok-stages.yaml"
DEFAULT_DIR = REPO_ROOT / ".agentplane" / "cluster"

#: Set to a directory holding all six binaries to skip build.sh entirely.
BIN_DIR_ENV = "AGENTPLANE_K8S_BIN_DIR"

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok")
SERVICE_CIDR = netplan.SERVICE_CIDR
KUBERNETES_SERVICE_IP = netplan.KUBERNETES_SERVICE_IP
#: kwok's --cidr: the first fake pod address and the prefix length.
KWOK_POD_CIDR = f"{netplan.first_address(netplan.FAKE_POD_CIDR)}/{netplan.FAKE_POD_CIDR.split('/')[1]}"
FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
FAKE_NODE_NAMES = ("kwok-node-0", "kwok-node-1", "kwok-node-2")
NODE_CAPACITY = {"cpu": "64", "memory": "256Gi", "pods": "1000", "ephemeral-storage": "1Ti"}
USER_NAME = "alice"
STATE_FILE = "cluster.json"
START_ORDER = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ClientRates:
    """The API client rate limit of kube-controller-manager and kube-scheduler (`--kube-api-qps`,
    `--kube-api-burst`). Unset, both run at client-go's default, 20 requests/s with bursts of 30,
    which paces how fast the Deployment and ReplicaSet controllers create ReplicaSets and pods."""

    qps: float
    burst: int

    def flags(self) -> list[str]:
        return [f"--kube-api-qps={self.qps:g}", f"--kube-api-burst={self.burst}"]


LARGE_CLUSTER_RATES = ClientRates(qps=600, burst=800)
"""The rates AKS Engine recommends for both components of large clusters (its
`examples/largeclusters/README.md`, "configure for more apiserver requests"). AKS does not document
the flags of the control plane it manages; AKS Engine is the open-source cluster builder it grew from."""


class ClusterError(RuntimeError):
    """The control plane failed to build, start or become ready."""


class KubectlError(subprocess.CalledProcessError):
    """A kubectl invocation failed; ``str()`` includes its stderr."""

    def __str__(self) -> str:
        stderr = self.stderr.strip() if isinstance(self.stderr, str) else ""
        return f"{super().__str__()}\n{stderr}" if stderr else super().__str__()


@dataclass
class Cluster:
    """A running control plane and how to talk to it."""

    kubeconfig: Path
    """Admin kubeconfig (``system:masters``)."""
    user_kubeconfig: Path
    """Kubeconfig of the non-admin user ``alice`` (client cert, no RBAC bindings)."""
    server: str
    bin_dir: Path
    workdir: Path
    processes: list[ManagedProcess] = field(default_factory=list, repr=False)
    real_node: node.RealNode | None = None
    """The real node (``start_cluster(real_node=True)``), else None."""

    @property
    def kubectl_path(self) -> Path:
        return self.bin_dir / "kubectl"

    def env(self, *, user: bool = False) -> dict[str, str]:
        """Environment for running tools (kubectl, helm, ...) against this cluster."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.user_kubeconfig if user else self.kubeconfig)
        env["KUBECACHEDIR"] = str(self.workdir / "kube-cache")
        return env

    def kubectl(
        self,
        *args: str,
        user: bool = False,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl as admin (or as ``alice`` with ``user=True``).

        Raises :class:`KubectlError` (a ``CalledProcessError`` whose message
        includes stderr) on a non-zero exit when ``check`` is true.
        """
        kubeconfig = self.user_kubeconfig if user else self.kubeconfig
        cmd = [str(self.kubectl_path), f"--kubeconfig={kubeconfig}", *args]
        result = subprocess.run(
            cmd,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(user=user),
            check=False,
        )
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, cmd, result.stdout, result.stderr)
        return result

    def kubectl_json(self, *args: str, user: bool = False) -> dict[str, Any]:
        """Run ``kubectl ... -o json`` and parse the output."""
        out = self.kubectl(*args, "-o", "json", user=user).stdout
        parsed: dict[str, Any] = json.loads(out)
        return parsed


@dataclass
class ManagedProcess:
    """A control plane process, leader of its own process group."""

    name: str
    pid: int
    log: Path
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def alive(self) -> bool:
        """Whether the process group still has members (reaps our own child)."""
        if self.popen is not None:
            self.popen.poll()
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return self.popen is not None or not _is_zombie(self.pid)

    def exited(self) -> bool:
        """Whether the main process itself is gone (children may linger)."""
        if self.popen is not None:
            return self.popen.poll() is not None
        return not Path(f"/proc/{self.pid}").exists() or _is_zombie(self.pid)

    def signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


# --------------------------------------------------------------------------
# Binaries


def ensure_binaries() -> Path:
    """Build (or reuse cached) binaries via ``tests/cluster/build.sh``; return the bin dir.

    A cold build compiles Kubernetes and takes several minutes; a warm one
    is a stamp check. ``$AGENTPLANE_K8S_BIN_DIR`` short-circuits the build.
    """
    override = os.environ.get(BIN_DIR_ENV)
    if override:
        bin_dir = Path(override)
    else:
        result = subprocess.run(
            ["bash", str(BUILD_SCRIPT)],
            stdout=subprocess.PIPE,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise ClusterError(f"{BUILD_SCRIPT} failed with exit code {result.returncode}")
        lines = result.stdout.strip().splitlines()
        if not lines:
            raise ClusterError(f"{BUILD_SCRIPT} printed no bin dir")
        bin_dir = Path(lines[-1])
    missing = [b for b in BINARIES if not os.access(bin_dir / b, os.X_OK)]
    if missing:
        raise ClusterError(f"missing binaries in {bin_dir}: {', '.join(missing)}")
    return bin_dir


# --------------------------------------------------------------------------
# PKI


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """Signing only; a CA also signs certificates and CRLs."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


class Pki:
    """Throwaway CA plus serving, client and service-account keys."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        self._not_before = now - datetime.timedelta(hours=1)
        self._not_after = now + datetime.timedelta(days=30)
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agentplane-test-ca")])
        self._ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(self._ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._not_before)
            .not_valid_after(self._not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                _key_usage(ca=True),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._ca_key.public_key()), critical=False
            )
            .sign(self._ca_key, hashes.SHA256())
        )
        self.ca = CertPair(directory / "ca.crt", directory / "ca.key")
        self.ca.cert.write_bytes(self._ca_cert.public_bytes(serialization.Encoding.PEM))
        _write_key(self.ca.key, self._ca_key)

        # Service-account token signing key (RSA: RS256 is what everything expects).
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.sa_key = directory / "sa.key"
        self.sa_pub = directory / "sa.pub"
        _write_key(self.sa_key, sa_key)
        self.sa_pub.write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def issue(
        self,
        name: str,
        common_name: str,
        *,
        organizations: Sequence[str] = (),
        server: bool = False,
        dns_names: Sequence[str] = (),
        ips: Sequence[str] = (),
    ) -> CertPair:
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs))
            .issuer_name(self._ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._not_before)
            .not_valid_after(self._not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                _key_usage(ca=False),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca_key.public_key()),
                critical=False,
            )
        )
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._ca_key, hashes.SHA256())
        pair = CertPair(self.dir / f"{name}.crt", self.dir / f"{name}.key")
        pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(pair.key, key)
        return pair


def _write_kubeconfig(path: Path, *, server: str, ca: Path, client: CertPair, user: str) -> None:
    """Write a self-contained kubeconfig (JSON is valid kubeconfig YAML)."""

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode("ascii")

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "agentplane-test",
                "cluster": {"server": server, "certificate-authority-data": b64(ca)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(client.cert),
                    "client-key-data": b64(client.key),
                },
            }
        ],
        "contexts": [{"name": user, "context": {"cluster": "agentplane-test", "user": user}}],
        "current-context": user,
        "preferences": {},
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)


# --------------------------------------------------------------------------
# Processes


def _die_with_parent_hook() -> Callable[[], None]:
    """A preexec_fn that makes the child get SIGKILL when the spawning thread dies.

    libc is resolved here, before fork; the child only makes the prctl call.
    """
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)

    return hook


def _spawn(name: str, argv: Sequence[str], workdir: Path, *, detach: bool) -> ManagedProcess:
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "ETCDCTL_API")}
    with open(log_path, "ab") as log:
        log.write(f"+ {' '.join(argv)}\n".encode())
        log.flush()
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=env,
            start_new_session=True,
            preexec_fn=None if detach else _die_with_parent_hook(),
        )
    proc = ManagedProcess(name=name, pid=popen.pid, log=log_path, popen=popen)
    pids = workdir / "pids"
    pids.mkdir(exist_ok=True)
    (pids / f"{name}.pid").write_text(f"{popen.pid}\n")
    return proc


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _wait_while_running(
    what: str,
    predicate: Callable[[], bool],
    *,
    timeout: float,
    processes: Sequence[ManagedProcess],
    interval: float = 0.2,
) -> None:
    """`wait_for`, failing early with a `ClusterError` and its log when one of `processes` exits."""

    def probe() -> bool:
        for proc in processes:
            if proc.exited():
                raise ClusterError(
                    f"{proc.name} exited while waiting for {what}; log {proc.log}:\n" + _log_tail(proc.log)
                )
        return predicate()

    try:
        wait_for(what, probe, timeout, interval)
    except WaitTimeout as exc:
        logs = sorted({str(p.log.parent) for p in processes})
        raise ClusterError(f"{exc} (logs in {', '.join(logs)})") from None


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as resp:
            return bool(resp.status == 200)
    except urllib.error.HTTPError as err:
        err.close()
        return False
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


def _stop_processes(processes: Sequence[ManagedProcess], *, grace: float = 5.0) -> None:
    """Stop process groups: everything but etcd first, then etcd.

    Each phase sends SIGTERM, then SIGKILL to whatever is left after ``grace``
    seconds. (Stopping etcd last lets the apiserver and etcd shut down fast.)
    """
    clients = [p for p in processes if p.name != "etcd"]
    storage = [p for p in processes if p.name == "etcd"]
    for phase in (clients, storage):
        for proc in phase:
            proc.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(p.alive() for p in phase) and time.monotonic() < deadline:
            time.sleep(0.05)
        for proc in phase:
            if proc.alive():
                proc.signal(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(p.alive() for p in phase) and time.monotonic() < deadline:
            time.sleep(0.05)
    for proc in processes:
        if proc.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=1)
        (proc.log.parent.parent / "pids" / f"{proc.name}.pid").unlink(missing_ok=True)


# --------------------------------------------------------------------------
# Cluster lifecycle


def _node_manifest(name: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {FAKE_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/role": "agent",
                "node-role.kubernetes.io/agent": "",
            },
        },
        "spec": {},
        "status": {"allocatable": dict(NODE_CAPACITY), "capacity": dict(NODE_CAPACITY)},
    }


def add_fake_nodes(cluster: Cluster, count: int, *, timeout: float = 120.0) -> list[str]:
    """`count` more kwok nodes (each of `NODE_CAPACITY`), Ready: room for more pods than the three
    a cluster starts with hold (a benchmark's thousands)."""
    names = [f"kwok-node-extra-{i}" for i in range(count)]
    nodes = {"apiVersion": "v1", "kind": "List", "items": [_node_manifest(n) for n in names]}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(nodes))

    wait_for(
        f"{count} more fake nodes Ready",
        lambda: _ready_nodes(cluster) >= set(names),
        timeout=timeout,
        interval=0.5,
    )
    return names


def _ready_nodes(cluster: Cluster) -> set[str]:
    out = cluster.kubectl(
        "get", "nodes", "-o",
        "jsonpath={range .items[*]}{.metadata.name}="
        '{.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}',
        check=False,
    ).stdout  # fmt: skip
    return {line.split("=")[0] for line in out.splitlines() if line.endswith("=True")}


def start_cluster(
    workdir: Path,
    crd_dir: Path | None = None,
    *,
    bin_dir: Path | None = None,
    detach: bool = False,
    timeout: float = 120.0,
    real_node: bool = False,
    client_rates: ClientRates | None = None,
    profiling: bool = False,
) -> Cluster:
    """Start a fresh control plane with state, kubeconfigs and logs under ``workdir``.

    With ``detach=False`` (library/pytest use) the processes are killed if the
    calling thread dies; call :func:`stop_cluster` (or use
    :func:`running_cluster`) to stop them. On any startup failure everything
    started so far is stopped before the exception propagates.

    ``real_node=True`` first creates the real node's network (the API server
    binds ``netplan.HOST_ADDRESS``), then starts the node (``support.node``,
    state in ``workdir/node``) once the control plane is up; needs root and
    the packages ``tools/install-system-deps.sh`` installs.

    ``client_rates``: the API client rate limit of kube-controller-manager and kube-scheduler
    (default: client-go's, 20/s with bursts of 30); :data:`LARGE_CLUSTER_RATES` for a production-like one.

    ``profiling=True``: the API server serves its Go profiles at ``/debug/pprof/`` (to cluster
    admins), as it does by default; the tests turn them off.
    """
    workdir = workdir.resolve()
    rate_flags = client_rates.flags() if client_rates is not None else []
    workdir.mkdir(parents=True, exist_ok=True)
    if bin_dir is None:
        bin_dir = ensure_binaries()
    if not KWOK_STAGES.is_file():
        raise ClusterError(f"kwok stages file missing: {KWOK_STAGES}")
    for sub in ("etcd-data", "pki", "pids", "kube-cache"):
        shutil.rmtree(workdir / sub, ignore_errors=True)
    (workdir / "logs").mkdir(exist_ok=True)
    for old in (workdir / "logs").glob("*.log"):
        old.unlink()

    started = time.monotonic()
    if real_node:
        missing = node.missing_requirements(bin_dir)
        if missing:
            raise ClusterError(f"cannot start the real node: {node.requirements_hint(missing)}")
    # Tests queue for the one real node a machine can run; a detached `up` says so at once.
    network = (
        node.start_network(workdir / "node", detach=detach, lock_timeout=0 if detach else 600)
        if real_node
        else None
    )
    address = netplan.HOST_ADDRESS if real_node else netplan.LOOPBACK
    etcd_port, etcd_peer_port, api_port = free_port(), free_port(), free_port(address)
    server = f"https://{address}:{api_port}"

    pki = Pki(workdir / "pki")
    serving = pki.issue(
        "apiserver",
        "kube-apiserver",
        server=True,
        dns_names=(
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
        ips=(netplan.LOOPBACK, netplan.HOST_ADDRESS, KUBERNETES_SERVICE_IP),
    )
    front_proxy = pki.issue("front-proxy-client", "front-proxy-client")
    # How the API server authenticates to kubelets (kubectl logs/exec/port-forward).
    kubelet_client = pki.issue(
        "apiserver-kubelet-client", "kube-apiserver-kubelet-client", organizations=("system:masters",)
    )
    identities = {
        "admin": ("agentplane-admin", ("system:masters",)),
        USER_NAME: (USER_NAME, ()),
        "kube-controller-manager": ("system:kube-controller-manager", ()),
        "kube-scheduler": ("system:kube-scheduler", ()),
        "kwok": ("kwok-controller", ("system:masters",)),
    }
    if real_node:
        identities["kubelet"] = (f"system:node:{node.NODE_NAME}", ("system:nodes",))
        identities["kube-proxy"] = ("system:kube-proxy", ())
        # Test-only NetworkPolicy enforcer confined to the node's namespace; it reads pods,
        # namespaces and policies cluster-wide.
        identities["kube-router"] = ("kube-router", ("system:masters",))
    kubeconfigs: dict[str, Path] = {}
    clients: dict[str, CertPair] = {}
    for name, (cn, orgs) in identities.items():
        clients[name] = pki.issue(f"client-{name}", cn, organizations=orgs)
        kubeconfigs[name] = workdir / f"{name}.kubeconfig"
        _write_kubeconfig(kubeconfigs[name], server=server, ca=pki.ca.cert, client=clients[name], user=cn)

    cluster = Cluster(
        kubeconfig=kubeconfigs["admin"],
        user_kubeconfig=kubeconfigs[USER_NAME],
        server=server,
        bin_dir=bin_dir,
        workdir=workdir,
    )
    procs = cluster.processes

    def spawn(name: str, argv: Sequence[str]) -> None:
        procs.append(_spawn(name, [str(bin_dir / name), *argv], workdir, detach=detach))

    try:
        spawn(
            "etcd",
            [
                "--name=default",
                f"--data-dir={workdir / 'etcd-data'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer_port}",
                f"--initial-cluster=default=http://127.0.0.1:{etcd_peer_port}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync=true",
                "--quota-backend-bytes=2147483648",
                "--log-level=warn",
            ],
        )
        _wait_while_running(
            "etcd /health",
            lambda: _http_ok(f"http://127.0.0.1:{etcd_port}/health"),
            timeout=timeout,
            processes=procs,
        )

        spawn(
            "kube-apiserver",
            [
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                f"--bind-address={address}",
                f"--advertise-address={address}",
                f"--secure-port={api_port}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                f"--client-ca-file={pki.ca.cert}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                # Default admission plugins (incl. ValidatingAdmissionPolicy, GA since 1.30).
                "--allow-privileged=true",
                f"--profiling={str(profiling).lower()}",
                # Without a real node the only address is loopback, which Endpoints
                # reject, and nothing runs in-cluster: the kubernetes Service needs no
                # endpoints. With one, pods reach the API server through it.
                f"--endpoint-reconciler-type={'lease' if real_node else 'none'}",
                f"--kubelet-client-certificate={kubelet_client.cert}",
                f"--kubelet-client-key={kubelet_client.key}",
                "--kubelet-preferred-address-types=InternalIP",
                # Front-proxy (aggregation layer) settings; without them every
                # component logs errors about a missing requestheader CA.
                f"--requestheader-client-ca-file={pki.ca.cert}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={front_proxy.cert}",
                f"--proxy-client-key-file={front_proxy.key}",
                "--v=1",
            ],
        )
        ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
        ctx.load_cert_chain(str(clients["admin"].cert), str(clients["admin"].key))
        _wait_while_running(
            "kube-apiserver /readyz",
            lambda: _http_ok(f"{server}/readyz", ctx),
            timeout=timeout,
            processes=procs,
        )

        spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={kubeconfigs['kube-controller-manager']}",
                f"--authentication-kubeconfig={kubeconfigs['kube-controller-manager']}",
                f"--authorization-kubeconfig={kubeconfigs['kube-controller-manager']}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--controllers=*",
                f"--root-ca-file={pki.ca.cert}",
                f"--service-account-private-key-file={pki.sa_key}",
                "--use-service-account-credentials=true",
                # Default is under /usr/libexec, which it would create on the host.
                f"--flex-volume-plugin-dir={workdir / 'flexvolume'}",
                f"--cluster-signing-cert-file={pki.ca.cert}",
                f"--cluster-signing-key-file={pki.ca.key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--leader-elect=false",
                "--profiling=false",
                "--v=1",
                *rate_flags,
            ],
        )
        spawn(
            "kube-scheduler",
            [
                f"--kubeconfig={kubeconfigs['kube-scheduler']}",
                f"--authentication-kubeconfig={kubeconfigs['kube-scheduler']}",
                f"--authorization-kubeconfig={kubeconfigs['kube-scheduler']}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
                "--profiling=false",
                "--v=1",
                *rate_flags,
            ],
        )
        spawn(
            "kwok",
            [
                f"--kubeconfig={kubeconfigs['kwok']}",
                f"--config={KWOK_STAGES}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={FAKE_NODE_ANNOTATION}=fake",
                "--node-lease-duration-seconds=40",
                f"--cidr={KWOK_POD_CIDR}",
                "--node-ip=127.0.0.1",
            ],
        )

        nodes = {"apiVersion": "v1", "kind": "List", "items": [_node_manifest(n) for n in FAKE_NODE_NAMES]}
        cluster.kubectl("apply", "-f", "-", input=json.dumps(nodes))

        _wait_while_running(
            "fake nodes Ready", lambda: _ready_nodes(cluster) >= set(FAKE_NODE_NAMES), timeout=timeout,
            processes=procs, interval=0.5,
        )  # fmt: skip

        def default_service_account() -> bool:
            r = cluster.kubectl("get", "serviceaccount", "default", "-n", "default", check=False)
            return r.returncode == 0

        # Pods are rejected until the serviceaccount controller created "default".
        _wait_while_running(
            "default ServiceAccount",
            default_service_account,
            timeout=timeout,
            processes=procs,
            interval=0.5,
        )

        if crd_dir is not None:
            apply_crds(cluster, crd_dir, timeout=timeout)

        if network is not None:
            serving = pki.issue(
                "kubelet-serving",
                node.NODE_NAME,
                server=True,
                dns_names=(node.NODE_NAME,),
                ips=(netplan.NODE_ADDRESS,),
            )
            credentials = node.NodeCredentials(
                ca_cert=pki.ca.cert,
                kubelet_kubeconfig=kubeconfigs["kubelet"],
                kubelet_serving_cert=serving.cert,
                kubelet_serving_key=serving.key,
                kube_proxy_kubeconfig=kubeconfigs["kube-proxy"],
                kube_router_kubeconfig=kubeconfigs["kube-router"],
            )
            cluster.real_node = node.start_node(
                network,
                bin_dir=bin_dir,
                credentials=credentials,
                admin_kubeconfig=kubeconfigs["admin"],
                timeout=timeout,
            )

        _write_state(cluster)
        print(
            f"cluster: control plane up at {server} in {time.monotonic() - started:.1f}s "
            f"(logs in {workdir / 'logs'})",
            file=sys.stderr,
        )
        return cluster
    except BaseException:
        _stop_processes(procs)
        if network is not None:
            network.stop()
        raise


def apply_crds(cluster: Cluster, crd_dir: Path, *, timeout: float = 60.0) -> list[str]:
    """Apply CRD manifests (a file or directory) server-side; wait until Established."""
    out = cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", str(crd_dir), "-o", "name"
    ).stdout
    names = [n for n in out.split() if n.startswith("customresourcedefinition")]
    if names:
        cluster.kubectl("wait", "--for=condition=Established", f"--timeout={int(timeout)}s", *names)
    return names


VAP = "validatingadmissionpolicy.admissionregistration.k8s.io"


@dataclass(frozen=True)
class PolicyFiles:
    """What :func:`apply_policies` installs from a policies directory (``policies/``)."""

    policies: list[Path]
    """``<dir>/*.yaml``: ValidatingAdmissionPolicies and their bindings."""
    params: list[Path]
    """``<dir>/params/<environment>/*.yaml``: the parameter objects of one environment."""


def policy_files(policies_dir: Path, environment: str) -> PolicyFiles:
    """The files of a policies directory for one environment; :class:`ClusterError` for an unknown one."""
    params_root = policies_dir / "params"
    environments = policy_environments(policies_dir)
    if environment not in environments:
        raise ClusterError(
            f"{params_root / environment}: no such policy environment "
            f"(environments in {params_root}: {', '.join(environments) or 'none'})"
        )

    def yaml_files(directory: Path) -> list[Path]:
        return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml"))

    return PolicyFiles(yaml_files(policies_dir), yaml_files(params_root / environment))


def _file_args(paths: Sequence[Path]) -> list[str]:
    return [arg for path in paths for arg in ("-f", str(path))]


def apply_policies(
    cluster: Cluster, policies_dir: Path, environment: str, *, timeout: float = 60.0
) -> dict[str, list[str]]:
    """Install a policies directory: one environment's parameters, then every policy and binding.

    Parameters go first: a binding whose parameter is missing would deny (or skip) what it
    matches meanwhile. Their CRDs (``TierLimits``) must be installed already. Waits until the API
    server has type-checked every policy (``status.observedGeneration``) and returns, per policy,
    the warnings of that check (``status.typeChecking.expressionWarnings``): none when every
    expression type-checks against the kinds it matches. The API server starts enforcing shortly
    after, asynchronously; only a request it denies shows that it does.
    """
    files = policy_files(policies_dir, environment)
    if files.params:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", *_file_args(files.params))
    if not files.policies:
        return {}
    out = cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", *_file_args(files.policies), "-o", "name"
    ).stdout
    names = [n.split("/", 1)[1] for n in out.split() if n.startswith(f"{VAP}/")]
    return policy_warnings(cluster, names, timeout=timeout)


def policy_warnings(cluster: Cluster, names: Sequence[str], *, timeout: float = 60.0) -> dict[str, list[str]]:
    """Wait until the API server has type-checked each named ValidatingAdmissionPolicy; its warnings."""
    checked: dict[str, list[str]] = {}

    def all_checked() -> bool:
        for name in names:
            policy = cluster.kubectl_json("get", VAP, name)
            status = policy.get("status") or {}
            if status.get("observedGeneration") != policy["metadata"]["generation"]:
                return False
            warnings = (status.get("typeChecking") or {}).get("expressionWarnings") or []
            checked[name] = [f"{w['fieldRef']}: {w['warning']}" for w in warnings]
        return True

    _wait_while_running("policies type-checked", all_checked, timeout=timeout, processes=cluster.processes)
    return checked


def delete_policies(cluster: Cluster, policies_dir: Path, environment: str) -> None:
    """Remove what :func:`apply_policies` installed (policies and bindings first, then parameters)."""
    files = policy_files(policies_dir, environment)
    for paths in (files.policies, files.params):
        if paths:
            cluster.kubectl("delete", "--ignore-not-found", "--wait=true", *_file_args(paths))


def stop_cluster(cluster: Cluster | Path, *, grace: float = 5.0) -> None:
    """Stop a cluster: a :class:`Cluster` from this process, or a state directory.

    Kills each process group (SIGTERM, then SIGKILL after ``grace`` seconds)
    and the real node's processes at the same time, then removes the node's
    network, cgroups and state. (The API server waits for its watch clients to
    go away, and shuts down through its own address on the node's link.)
    """
    if isinstance(cluster, Cluster):
        workdir = cluster.workdir
        processes = cluster.processes or _processes_from_pidfiles(workdir, cluster.bin_dir)
        network = cluster.real_node.network if cluster.real_node is not None else None
    else:
        workdir = cluster.resolve()
        state = _read_state(workdir)
        processes = _processes_from_pidfiles(workdir, Path(str(state["bin_dir"])) if state else None)
        loaded = node.load_node(workdir / "node")
        network = loaded.network if loaded is not None else None
    if network is not None:
        network.stop_node(wait=False)
    _stop_processes(processes, grace=grace)
    if network is not None:
        network.stop()
    if (workdir / "node").is_dir():  # its records, and what a node that died unasked left
        node.stop_node_dir(workdir / "node")


@contextlib.contextmanager
def running_cluster(
    workdir: Path,
    crd_dir: Path | None = None,
    *,
    bin_dir: Path | None = None,
    real_node: bool = False,
    client_rates: ClientRates | None = None,
    profiling: bool = False,
) -> Iterator[Cluster]:
    """Context manager: start a cluster (with a real node if asked), yield it, always stop it."""
    cluster = start_cluster(
        workdir, crd_dir, bin_dir=bin_dir, real_node=real_node, client_rates=client_rates, profiling=profiling
    )
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


# --------------------------------------------------------------------------
# State for the detached CLI


def _write_state(cluster: Cluster) -> None:
    state = {
        "server": cluster.server,
        "kubeconfig": str(cluster.kubeconfig),
        "user_kubeconfig": str(cluster.user_kubeconfig),
        "bin_dir": str(cluster.bin_dir),
        "pids": {p.name: p.pid for p in cluster.processes},
        "real_node": cluster.real_node is not None,
    }
    (cluster.workdir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")


def _read_state(workdir: Path) -> dict[str, object] | None:
    try:
        state: dict[str, object] = json.loads((workdir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state


def _processes_from_pidfiles(workdir: Path, bin_dir: Path | None) -> list[ManagedProcess]:
    """Processes recorded in ``workdir/pids`` that are still ours (cmdline check)."""
    result: list[ManagedProcess] = []
    for name in START_ORDER:
        pidfile = workdir / "pids" / f"{name}.pid"
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            continue
        try:
            exe = (Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]).decode()
        except OSError:
            exe = ""
        # Guard against pid reuse: only signal a process running our binary.
        if exe and Path(exe).name == name and (bin_dir is None or Path(exe).parent == bin_dir):
            result.append(ManagedProcess(name=name, pid=pid, log=workdir / "logs" / f"{name}.log"))
        else:
            pidfile.unlink(missing_ok=True)
    return result


def load_cluster(workdir: Path) -> Cluster | None:
    """The running cluster recorded in ``workdir`` (from ``up``), or None."""
    workdir = workdir.resolve()
    state = _read_state(workdir)
    if state is None:
        return None
    bin_dir = Path(str(state["bin_dir"]))
    procs = _processes_from_pidfiles(workdir, bin_dir)
    if {p.name for p in procs} != set(START_ORDER) or not all(p.alive() for p in procs):
        return None
    real_node = node.load_node(workdir / "node") if state.get("real_node") else None
    if state.get("real_node") and real_node is None:
        return None
    return Cluster(
        kubeconfig=Path(str(state["kubeconfig"])),
        user_kubeconfig=Path(str(state["user_kubeconfig"])),
        server=str(state["server"]),
        bin_dir=bin_dir,
        workdir=workdir,
        processes=procs,
        real_node=real_node,
    )


def _print_exports(cluster: Cluster) -> None:
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    print(f"export PATH={cluster.bin_dir}:$PATH")
    print(f"# non-admin user: KUBECONFIG={cluster.user_kubeconfig}", file=sys.stderr)
    if cluster.real_node is not None:
        print(
            f"# real node {cluster.real_node.name}: pods need nodeSelector {dict(node.NODE_SELECTOR)} "
            f"and a toleration of {node.TOLERATION['key']}=true:NoSchedule; "
            f"ip netns exec {cluster.real_node.network.netns} ... runs in its network namespace",
            file=sys.stderr,
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a detached cluster and print export lines")
    up.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"state dir (default {DEFAULT_DIR})")
    up.add_argument("--crd-dir", type=Path, default=None, help="CRD manifests to apply")
    up.add_argument(
        "--real-node",
        choices=("no", "auto", "yes"),
        default="no",
        help="also start a real node (auto: when root and its packages are installed)",
    )
    up.add_argument(
        "--policies",
        type=Path,
        default=None,
        help="policies directory to install after the CRDs (its *.yaml and params/<environment>/)",
    )
    up.add_argument(
        "--policy-environment", default=None, help="which params/<environment>/ of --policies to install"
    )
    down = sub.add_parser("down", help="stop the cluster started by 'up'")
    down.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    sub.add_parser("build", help="build/locate the binaries and print the bin dir")
    args = parser.parse_args(argv)

    if args.command == "build":
        print(ensure_binaries())
        return 0
    workdir: Path = args.dir.resolve()
    if args.command == "up":
        if (args.policies is None) != (args.policy_environment is None):
            parser.error("--policies and --policy-environment go together")
        if args.policies is not None:
            try:
                policy_files(args.policies, args.policy_environment)
            except ClusterError as exc:
                print(f"cluster: {exc}", file=sys.stderr)
                return 1
        existing = load_cluster(workdir)
        if existing is not None:
            print(f"cluster: already running in {workdir}", file=sys.stderr)
            _print_exports(existing)
            return 0
        stop_cluster(workdir)  # leftovers of a half-dead cluster
        real_node = args.real_node == "yes"
        if args.real_node == "auto":
            missing = node.missing_requirements()
            real_node = not missing
            if missing:
                print(f"cluster: no real node: {node.requirements_hint(missing)}", file=sys.stderr)
        try:
            cluster = start_cluster(workdir, args.crd_dir, detach=True, real_node=real_node)
        except (ClusterError, node.NodeError) as exc:
            print(f"cluster: {exc}", file=sys.stderr)
            return 1
        if args.policies is not None:
            try:
                warnings = apply_policies(cluster, args.policies, args.policy_environment)
            except (ClusterError, KubectlError) as exc:
                print(f"cluster: installing the policies failed, stopping: {exc}", file=sys.stderr)
                stop_cluster(cluster)
                return 1
            print(
                f"cluster: {len(warnings)} policies of {args.policies} installed with the "
                f"{args.policy_environment} parameters",
                file=sys.stderr,
            )
            for name, problems in warnings.items():
                for problem in problems:
                    print(f"cluster: policy {name}: type-check warning: {problem}", file=sys.stderr)
        _print_exports(cluster)
        print(
            f"# stop with: python {Path(__file__).relative_to(REPO_ROOT)} down --dir {workdir}",
            file=sys.stderr,
        )
        return 0
    stop_cluster(workdir)
    (workdir / STATE_FILE).unlink(missing_ok=True)
    print(f"cluster: stopped ({workdir})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
