"""One real Kubernetes node for the test cluster: pods actually run, on this machine.

The node is containerd (Debian's, with runc and the CNI plugins in /usr/lib/cni), kubelet,
kube-proxy (iptables mode) and kube-router (firewall only: NetworkPolicy), all built by
``tests/cluster/build.sh`` except containerd. It lives in a network namespace of its own
(``apn-<id>``) joined to the root namespace by a veth pair; the addresses are in
``support.netplan``. :func:`support.cluster.start_cluster` with ``real_node=True`` (or
``python tests/support/cluster.py up --real-node``) runs everything in order; this module has the
pieces:

- :func:`start_network` starts the *watchdog* (``_node_supervisor.py watch``): it takes the
  machine-wide real-node lock, removes leftovers of a crashed run, creates the namespace, veth and
  routes -- before the API server starts, since it binds :data:`netplan.HOST_ADDRESS` -- and owns
  the cleanup. It dies with the calling thread (PR_SET_PDEATHSIG=SIGTERM) unless detached, and
  cleans up first.
- :func:`start_node` starts the node inside that namespace under one supervisor, PID 1 of its
  own PID namespace with private mounts (``_node_supervisor.py init``); stopping it kills every
  shim and container with it, and the node's mounts vanish with its mount namespace.
- :class:`RealNode`: :attr:`~RealNode.name`, :meth:`~RealNode.load_image`,
  :meth:`~RealNode.exec_in_node`, :meth:`~RealNode.add_host_address`, :meth:`~RealNode.stop`.
- :func:`snapshot_host` / :func:`host_leftovers`: what the node could leave behind in the root
  namespaces (iptables rules, links, routes, network namespaces, mounts, processes, cgroups,
  root sysctls, well-known host paths), before versus after.

Scheduling: the node registers with the taint ``agentplane.io/real-node=true:NoSchedule`` and
the label ``agentplane.io/real-node=true``; ordinary pods keep going to the kwok nodes, a pod
runs here only with both :data:`TOLERATION` and :data:`NODE_SELECTOR` (:func:`on_real_node`).
Images are never pulled: :data:`PAUSE_IMAGE` and :data:`AGNHOST_IMAGE` are loaded at start; load
others with :meth:`RealNode.load_image` (``support.oci`` writes them) and use
``imagePullPolicy: Never``. Pods get a resolv.conf that fails DNS at once (there is no cluster
DNS); in-cluster clients reach the API server through ``KUBERNETES_SERVICE_HOST``
(:data:`netplan.KUBERNETES_SERVICE_IP`).

Needs root and the Debian packages ``tools/install-system-deps.sh`` installs;
:func:`missing_requirements` says what is missing.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support import _node_supervisor, netplan, oci

NODE_NAME = "real-node"
"""The real node's name (its kubelet's ``--hostname-override``)."""
REAL_NODE_LABEL = "agentplane.io/real-node"
NODE_SELECTOR: Mapping[str, str] = {REAL_NODE_LABEL: "true"}
"""``nodeSelector`` for pods that must run on the real node."""
TOLERATION: Mapping[str, str] = {
    "key": REAL_NODE_LABEL,
    "operator": "Equal",
    "value": "true",
    "effect": "NoSchedule",
}
"""The toleration of the real node's taint ``agentplane.io/real-node=true:NoSchedule``."""

PAUSE_IMAGE = "agentplane.local/pause:v1"
"""The pods' sandbox image (``tests/cluster/build/pause``), loaded at start."""
AGNHOST_IMAGE = "agentplane.local/agnhost:v1.36.3"
"""Kubernetes' test image (``netexec``, ``connect``, ...), loaded at start."""

PREFIX = "apn-"
"""Names of everything the node makes on the host: netns, host veth and cgroup ``apn-<id>``."""
RUN_DIR = "/run/apn"
"""The node's socket directory, on its private /run (visible through :meth:`RealNode.exec_in_node`)."""
CONTAINERD_SOCKET = f"{RUN_DIR}/containerd.sock"
CNI_BIN_DIR = Path("/usr/lib/cni")
KUBELET_PORT = 10250

# kubelet sets these machine-wide unless they already hold its values; the node sees files with
# those values bind-mounted over them in its own mount namespace instead.
_KUBELET_TUNABLES = {
    "vm/overcommit_memory": 1,
    "vm/panic_on_oom": 0,
    "kernel/panic": 10,
    "kernel/panic_on_oops": 1,
    "kernel/keys/root_maxkeys": 1000000,
    "kernel/keys/root_maxbytes": 25000000,
}
# Inside the node's network namespace only.
_NETNS_SYSCTLS = {"net/ipv4/ip_forward": 1, "net/bridge/bridge-nf-call-iptables": 1}
_SHADOWED = (Path("/run"), Path("/var/lib"), Path("/var/log"))
_REQUIRED_COMMANDS = (
    "ip",
    "nsenter",
    "unshare",
    "mount",
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
    "runc",
    "iptables",
    "iptables-save",
    "iptables-restore",
    "ipset",
    "conntrack",
)
_REQUIRED_CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
_NODE_BINARIES = ("kubelet", "kube-proxy", "kube-router", "pause", "agnhost", "kubectl")
_PR_SET_PDEATHSIG = 1


class NodeError(RuntimeError):
    """The real node (or its network) failed to start, or a command in it failed."""


def on_real_node(pod_spec: Mapping[str, Any]) -> dict[str, Any]:
    """``pod_spec`` plus the toleration and nodeSelector that put a pod on the real node."""
    spec = dict(pod_spec)
    spec["tolerations"] = [*spec.get("tolerations", []), dict(TOLERATION)]
    spec["nodeSelector"] = {**spec.get("nodeSelector", {}), **NODE_SELECTOR}
    return spec


def missing_requirements(bin_dir: Path | None = None) -> list[str]:
    """What this machine lacks to run the real node (empty when it can)."""
    missing: list[str] = []
    if os.geteuid() != 0:
        missing.append("root (the node needs network namespaces, mounts and cgroups)")
    search = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
    missing += [f"command {c}" for c in _REQUIRED_COMMANDS if shutil.which(c, path=search) is None]
    missing += [
        f"CNI plugin {CNI_BIN_DIR / p}" for p in _REQUIRED_CNI_PLUGINS if not (CNI_BIN_DIR / p).is_file()
    ]
    if bin_dir is not None:
        missing += [f"{bin_dir / b}" for b in _NODE_BINARIES if not os.access(bin_dir / b, os.X_OK)]
    return missing


def requirements_hint(missing: Sequence[str]) -> str:
    """``missing ...`` plus where to get it, for error and skip messages."""
    return f"missing {', '.join(missing)} (tools/install-system-deps.sh installs the packages, as root)"


def lock_path() -> Path:
    """The machine-wide real-node lock (one node owns the 198.18.255.0/24 link at a time)."""
    cache = os.environ.get("AGENTPLANE_CACHE") or str(Path.home() / ".cache" / "agentplane")
    return Path(cache) / "real-node.lock"


# --------------------------------------------------------------------------
# Configuration builders (pure)


@dataclass(frozen=True)
class NodeCredentials:
    """What the cluster's PKI issued for the node: PEM files and self-contained kubeconfigs."""

    ca_cert: Path
    kubelet_kubeconfig: Path
    """``system:node:<name>`` in ``system:nodes``."""
    kubelet_serving_cert: Path
    kubelet_serving_key: Path
    kube_proxy_kubeconfig: Path
    """``system:kube-proxy`` (bound to ``system:node-proxier`` by default)."""
    kube_router_kubeconfig: Path


@dataclass(frozen=True)
class _Layout:
    """Where the node keeps its files, under one work directory."""

    root: Path

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def config(self) -> Path:
        return self.root / "config"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def containerd(self) -> Path:
        return self.root / "containerd"

    @property
    def kubelet(self) -> Path:
        return self.root / "kubelet"

    @property
    def cni_conf(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def ipam(self) -> Path:
        return self.root / "cni" / "ipam"

    @property
    def pod_logs(self) -> Path:
        return self.root / "pod-logs"

    @property
    def watch_status(self) -> Path:
        return self.root / "watch-status.json"

    @property
    def init_status(self) -> Path:
        return self.root / "init-status.json"

    @property
    def state(self) -> Path:
        return self.root / "node.json"


def containerd_config(layout: _Layout) -> str:
    """containerd's config (v2): CRI with our pause image and CNI dirs, runc with cgroupfs."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""\
version = 2
root = "{layout.containerd}"
state = "/run/containerd"
oom_score = 0
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "{CONTAINERD_SOCKET}"

[ttrpc]
  address = "{RUN_DIR}/containerd.ttrpc.sock"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{layout.containerd / "opt"}"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # The machine refuses negative oom_score_adj values; runc then fails with
  # "can't get final child's PID".
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{layout.cni_conf}"
  max_conf_num = 1
"""


def cni_config(layout: _Layout) -> dict[str, Any]:
    """The pod network: a bridge in the node's namespace, host-local IPAM over :data:`netplan.POD_CIDR`."""
    return {
        "cniVersion": "1.0.0",
        "name": "agentplane",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(layout.ipam),
                    "ranges": [[{"subnet": netplan.POD_CIDR, "gateway": netplan.POD_GATEWAY}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(layout: _Layout, credentials: NodeCredentials, *, cgroup: str) -> dict[str, Any]:
    """KubeletConfiguration for this machine: cgroup v1 with cgroupfs, no QoS cgroups, all pods under ``/<cgroup>``."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": True,
        # The parent of kubelet's QoS cgroups and so of every pod and container: one directory
        # per hierarchy (the supervisor creates it) that teardown removes bottom-up.
        "cgroupRoot": f"/{cgroup}",
        "enforceNodeAllocatable": [],
        "failSwapOn": False,
        "protectKernelDefaults": False,
        "oomScoreAdj": 0,
        "address": netplan.NODE_ADDRESS,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "tlsCertFile": str(credentials.kubelet_serving_cert),
        "tlsPrivateKeyFile": str(credentials.kubelet_serving_key),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(credentials.ca_cert)},
        },
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCKET}",
        "resolvConf": str(layout.config / "resolv.conf"),
        "clusterDomain": "cluster.local",
        "podLogsDir": str(layout.pod_logs),
        "volumePluginDir": str(layout.kubelet / "volume-plugins"),
        "registerWithTaints": [{"key": TOLERATION["key"], "value": "true", "effect": "NoSchedule"}],
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        # Loaded images are never pulled again: never collect them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "shutdownGracePeriod": "0s",
        "rotateCertificates": False,
    }


def kube_proxy_config(credentials: NodeCredentials) -> dict[str, Any]:
    """KubeProxyConfiguration: iptables mode in the node's namespace, no machine-wide conntrack sysctls."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(credentials.kube_proxy_kubeconfig)},
        "hostnameOverride": NODE_NAME,
        "bindAddress": netplan.NODE_ADDRESS,
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "mode": "iptables",
        "clusterCIDR": netplan.POD_CIDR,
        "detectLocalMode": "ClusterCIDR",
        "nodePortAddresses": ["primary"],
        "oomScoreAdj": 0,
        "iptables": {"localhostNodePorts": False, "masqueradeAll": False, "minSyncPeriod": "0s"},
        # 0 = leave nf_conntrack_max, the hash size and the timeouts alone.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }


def _kubelet_argv(bin_dir: Path, layout: _Layout, credentials: NodeCredentials) -> list[str]:
    return [
        str(bin_dir / "kubelet"),
        f"--config={layout.config / 'kubelet.json'}",
        f"--kubeconfig={credentials.kubelet_kubeconfig}",
        f"--hostname-override={NODE_NAME}",
        f"--node-ip={netplan.NODE_ADDRESS}",
        f"--node-labels={REAL_NODE_LABEL}=true",
        f"--root-dir={layout.kubelet}",
        f"--cert-dir={layout.kubelet / 'pki'}",
        "--v=1",
    ]


def _kube_router_argv(bin_dir: Path, credentials: NodeCredentials) -> list[str]:
    return [
        str(bin_dir / "kube-router"),
        "--run-firewall=true",
        "--run-router=false",
        "--run-service-proxy=false",
        f"--kubeconfig={credentials.kube_router_kubeconfig}",
        f"--hostname-override={NODE_NAME}",
        f"--service-cluster-ip-range={netplan.SERVICE_CIDR}",
        "--enable-ipv4=true",
        "--enable-ipv6=false",
        "--metrics-port=0",
        "--health-port=0",
        "--v=1",
    ]


# --------------------------------------------------------------------------
# Processes


def _die_with_parent(sig: signal.Signals) -> Callable[[], None]:
    """A preexec_fn: the child gets ``sig`` when the spawning thread dies."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)

    return hook


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _is_watchdog(pid: int) -> bool:
    cmd = _cmdline(pid)
    return any(part.endswith("_node_supervisor.py") for part in cmd) and "watch" in cmd


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


@dataclass
class NodeNetwork:
    """The node's network namespace and veth, owned by the watchdog process."""

    workdir: Path
    id: str
    watchdog_pid: int
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def netns(self) -> str:
        """Name of the node's network namespace (``ip netns exec <netns> ...`` works)."""
        return f"{PREFIX}{self.id}"

    @property
    def veth(self) -> str:
        """Host side of the veth pair, in the root namespace; carries :data:`netplan.HOST_ADDRESS`."""
        return f"{PREFIX}{self.id}"

    @property
    def log(self) -> Path:
        return _Layout(self.workdir).logs / "watchdog.log"

    def status(self) -> dict[str, Any]:
        return _read_json(_Layout(self.workdir).watch_status)

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return _pid_alive(self.watchdog_pid) and _is_watchdog(self.watchdog_pid)

    def add_host_address(self, address: str) -> None:
        """Give the host side one more address in :data:`netplan.LINK_CIDR` (see :func:`netplan.host_address`).

        Test servers bound there are reachable from pods as distinct "external" hosts. The
        address goes away with the veth at teardown.
        """
        _ip("addr", "replace", f"{address}/{netplan.LINK_PREFIX}", "dev", self.veth)

    def remove_host_address(self, address: str) -> None:
        _ip("addr", "del", f"{address}/{netplan.LINK_PREFIX}", "dev", self.veth, check=False)

    def stop_node(self, *, wait: bool = True, timeout: float = 30.0) -> None:
        """Kill the node's processes but keep the network (SIGUSR2 to the watchdog).

        Lets the API server, which listens on the link, shut down cleanly: it waits for its
        watch clients -- kubelet, kube-proxy, kube-router -- to go away.
        """
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.watchdog_pid, signal.SIGUSR2)
        deadline = time.monotonic() + timeout
        while wait and self.alive() and time.monotonic() < deadline:
            if self.status().get("node_stopped"):
                return
            time.sleep(0.05)

    def stop(self, *, timeout: float = 60.0) -> None:
        """Stop the node (if any) and remove the network, cgroups and the node's state; idempotent."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.watchdog_pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.watchdog_pid, signal.SIGKILL)
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=10)
        if self.status().get("phase") not in ("stopped", "failed"):
            cleanup_leftovers()  # the watchdog was killed before it could clean up


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise NodeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def start_network(
    workdir: Path, *, detach: bool = False, lock_timeout: float = 0.0, timeout: float = 30.0
) -> NodeNetwork:
    """Start the watchdog and wait until the node's network namespace, veth and routes exist.

    ``workdir`` holds the node's configuration, logs and state (its ``containerd`` and ``kubelet``
    directories are removed at teardown); it must not be under /run, /var/lib or /var/log, which
    the node shadows. With ``detach=False`` the watchdog cleans up when the calling thread dies.
    While another real node runs, waits up to ``lock_timeout`` seconds for it to stop, then fails.
    """
    workdir = workdir.resolve()
    for shadowed in _SHADOWED:
        if workdir.is_relative_to(shadowed):
            raise NodeError(f"node workdir {workdir} is under {shadowed}, which the node shadows")
    missing = missing_requirements()
    if missing:
        raise NodeError(f"cannot run the real node: {requirements_hint(missing)}")
    layout = _Layout(workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    for directory in (layout.logs, layout.config, layout.images):
        directory.mkdir(parents=True, exist_ok=True)
    node_id = secrets.token_hex(3)
    name = f"{PREFIX}{node_id}"
    watch_config = {
        "workdir": str(workdir),
        "prefix": PREFIX,
        "netns": name,
        "veth": name,
        "cgroup": name,
        "lock": str(lock_path()),
        "lock_timeout": lock_timeout,
        "status": str(layout.watch_status),
        "host_address": f"{netplan.HOST_ADDRESS}/{netplan.LINK_PREFIX}",
        "node_address": f"{netplan.NODE_ADDRESS}/{netplan.LINK_PREFIX}",
        "gateway": netplan.NODE_ADDRESS,
        "routes": list(netplan.ROUTED_VIA_NODE),
        "init_config": str(layout.config / "init.json"),
        "init_log": str(layout.logs / "init.log"),
        "remove_on_exit": [str(layout.containerd), str(layout.kubelet), str(layout.images), str(layout.ipam)],
    }
    config_path = layout.config / "watch.json"
    config_path.write_text(json.dumps(watch_config, indent=2) + "\n")
    log_path = layout.logs / "watchdog.log"
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            [sys.executable, "-I", _node_supervisor.__file__, "watch", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=None if detach else _die_with_parent(signal.SIGTERM),
        )
    network = NodeNetwork(workdir=workdir, id=node_id, watchdog_pid=popen.pid, popen=popen)
    deadline = time.monotonic() + lock_timeout + timeout
    while True:
        phase = network.status().get("phase")
        if phase == "network":
            return network
        if phase == "failed" or popen.poll() is not None:
            network.stop()
            message = network.status().get("message", "")
            raise NodeError(f"the node's network did not come up: {message}\n{_log_tail(log_path)}")
        if time.monotonic() > deadline:
            network.stop()
            raise NodeError(f"timed out after {timeout:.0f}s creating the node's network (log {log_path})")
        time.sleep(0.05)


@dataclass
class RealNode:
    """A running real node: containerd, kubelet, kube-proxy and kube-router in their own namespaces."""

    name: str
    network: NodeNetwork
    init_pid: int
    """PID (in the root namespace) of the node's supervisor, PID 1 of the node's PID namespace."""
    bin_dir: Path
    workdir: Path

    @property
    def logs(self) -> Path:
        """containerd.log, kubelet.log, kube-proxy.log, kube-router.log, init.log, watchdog.log."""
        return _Layout(self.workdir).logs

    @property
    def containerd_socket(self) -> str:
        """containerd's socket, a path inside the node's mount namespace."""
        return CONTAINERD_SOCKET

    def alive(self) -> bool:
        return self.network.alive() and _pid_alive(self.init_pid)

    def exec_in_node(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        timeout: float = 60.0,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the node: its network, mount and PID namespaces.

        So ``iptables-save`` shows the node's rules, ``ctr --address`` :attr:`containerd_socket`
        reaches its containerd, and the process dies with the node. Paths under /run, /var/lib and
        /var/log are the node's own, not the host's. Raises :class:`NodeError` on a non-zero exit
        when ``check`` is true.
        """
        if not _pid_alive(self.init_pid):
            raise NodeError(f"the real node is not running (see {self.logs})")
        cmd = ["nsenter", f"--target={self.init_pid}", "--mount", "--net", "--pid", "--", *argv]
        result = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise NodeError(
                f"{' '.join(argv)} in the node exited with {result.returncode}:\n"
                f"{result.stderr.strip() or result.stdout.strip()}"
            )
        return result

    def load_image(self, tar_path: Path) -> None:
        """Import an image tarball (docker-archive or OCI, e.g. from :func:`oci.write_image`) into
        the node's containerd, namespace ``k8s.io``, where kubelet finds it without pulling."""
        path = tar_path.resolve()
        for shadowed in _SHADOWED:
            if path.is_relative_to(shadowed):
                raise NodeError(f"{path} is under {shadowed}, which the node does not see")
        self.exec_in_node(
            ["ctr", f"--address={CONTAINERD_SOCKET}", "--namespace=k8s.io", "images", "import", str(path)],
            timeout=300,
        )

    def add_host_address(self, address: str) -> None:
        """See :meth:`NodeNetwork.add_host_address`."""
        self.network.add_host_address(address)

    def remove_host_address(self, address: str) -> None:
        self.network.remove_host_address(address)

    def processes(self) -> dict[int, str]:
        """The node's processes (root-namespace PID -> command name), supervisor included."""
        try:
            pid_ns = os.readlink(f"/proc/{self.init_pid}/ns/pid")
        except OSError:
            return {}
        found: dict[int, str] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if os.readlink(entry / "ns" / "pid") == pid_ns or int(entry.name) == self.init_pid:
                    found[int(entry.name)] = (entry / "comm").read_text().strip()
        return found

    def rss_bytes(self) -> dict[str, int]:
        """Resident memory by command name, summed over the node's processes (containers included)."""
        totals: dict[str, int] = {}
        for pid, comm in self.processes().items():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        totals[comm] = totals.get(comm, 0) + int(line.split()[1]) * 1024
        return totals

    def stop(self) -> None:
        """Stop the node and remove its network, cgroups and state (see :meth:`NodeNetwork.stop`)."""
        self.network.stop()


def write_images(bin_dir: Path, directory: Path) -> list[Path]:
    """Write the pause and agnhost images from ``bin_dir`` into ``directory``; return the tarballs."""
    pause = directory / "pause.tar"
    oci.write_image(
        pause, PAUSE_IMAGE, files={"/pause": bin_dir / "pause"}, entrypoint=["/pause"], user="65535:65535"
    )
    agnhost = directory / "agnhost.tar"
    oci.write_image(
        agnhost,
        AGNHOST_IMAGE,
        files={"/agnhost": bin_dir / "agnhost"},
        directories={"/tmp": 0o1777},
        entrypoint=["/agnhost"],
        env={"HOME": "/tmp"},
    )
    return [pause, agnhost]


def start_node(
    network: NodeNetwork,
    *,
    bin_dir: Path,
    credentials: NodeCredentials,
    admin_kubeconfig: Path,
    timeout: float = 120.0,
) -> RealNode:
    """Start the node in ``network`` and wait until it is Ready and all its components run.

    On failure the whole network is stopped and :class:`NodeError` carries the failing
    component's log tail.
    """
    layout = _Layout(network.workdir)
    for directory in (layout.containerd, layout.kubelet, layout.cni_conf, layout.ipam, layout.pod_logs):
        directory.mkdir(parents=True, exist_ok=True)
    images = write_images(bin_dir, layout.images)
    (layout.config / "containerd.toml").write_text(containerd_config(layout))
    (layout.cni_conf / "10-agentplane.conflist").write_text(json.dumps(cni_config(layout), indent=2) + "\n")
    cgroup = network.netns
    (layout.config / "kubelet.json").write_text(
        json.dumps(kubelet_config(layout, credentials, cgroup=cgroup), indent=2) + "\n"
    )
    (layout.config / "kube-proxy.json").write_text(
        json.dumps(kube_proxy_config(credentials), indent=2) + "\n"
    )
    # No cluster DNS: a nameserver that refuses at once, so nothing in a pod waits on a lookup.
    (layout.config / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")

    def component(name: str, argv: Sequence[str], **extra: Any) -> dict[str, Any]:
        return {"name": name, "argv": list(argv), "log": str(layout.logs / f"{name}.log"), **extra}

    ctr = ["ctr", f"--address={CONTAINERD_SOCKET}", "--namespace=k8s.io", "images", "import"]
    node_exists = [
        str(bin_dir / "kubectl"),
        f"--kubeconfig={credentials.kube_router_kubeconfig}",
        "get",
        "node",
        NODE_NAME,
    ]
    components = [
        component("containerd", ["containerd", f"--config={layout.config / 'containerd.toml'}"]),
        *(
            component(
                f"import-{image.stem}", [*ctr, str(image)], oneshot=True, wait={"socket": CONTAINERD_SOCKET}
            )
            for image in images
        ),
        component("kubelet", _kubelet_argv(bin_dir, layout, credentials)),
        component(
            "kube-proxy",
            [str(bin_dir / "kube-proxy"), f"--config={layout.config / 'kube-proxy.json'}", "--v=1"],
        ),
        # kube-router's firewall needs the Node object kubelet registers.
        component("kube-router", _kube_router_argv(bin_dir, credentials), wait={"command": node_exists}),
    ]
    init_config = {
        "status": str(layout.init_status),
        "run_dir": RUN_DIR,
        "home": str(network.workdir),
        "cgroup": cgroup,
        "tunables": _KUBELET_TUNABLES,
        "netns_sysctls": _NETNS_SYSCTLS,
        "wait_timeout": timeout,
        "components": components,
    }
    (layout.config / "init.json").write_text(json.dumps(init_config, indent=2) + "\n")
    layout.init_status.unlink(missing_ok=True)
    os.kill(network.watchdog_pid, signal.SIGUSR1)

    started = time.monotonic()
    deadline = started + timeout
    init_pid: int | None = None
    node: RealNode | None = None
    kubectl = [str(bin_dir / "kubectl"), f"--kubeconfig={admin_kubeconfig}"]
    try:
        while True:
            watch = network.status()
            init = _read_json(layout.init_status)
            if watch.get("phase") == "failed" or init.get("state") == "failed" or not network.alive():
                raise NodeError(_failure_report(layout, watch, init))
            if init_pid is None and watch.get("phase") == "node":
                init_pid = int(watch["init_pid"])
                node = RealNode(
                    name=NODE_NAME,
                    network=network,
                    init_pid=init_pid,
                    bin_dir=bin_dir,
                    workdir=network.workdir,
                )
            if node is not None and init.get("state") == "running" and _node_ready(kubectl):
                layout.state.write_text(
                    json.dumps(
                        {
                            "name": node.name,
                            "id": network.id,
                            "watchdog_pid": network.watchdog_pid,
                            "init_pid": node.init_pid,
                            "bin_dir": str(bin_dir),
                        },
                        indent=2,
                    )
                    + "\n"
                )
                print(
                    f"node: {NODE_NAME} Ready in {time.monotonic() - started:.1f}s (logs in {layout.logs})",
                    file=sys.stderr,
                )
                return node
            if time.monotonic() > deadline:
                raise NodeError(
                    f"timed out after {timeout:.0f}s waiting for node {NODE_NAME} to be Ready "
                    f"(starting: {init.get('component', '?')})\n" + _failure_report(layout, watch, init)
                )
            time.sleep(0.2)
    except BaseException:
        network.stop()
        raise


def _node_ready(kubectl: Sequence[str]) -> bool:
    result = subprocess.run(
        [
            *kubectl,
            "get",
            "node",
            NODE_NAME,
            "-o",
            'jsonpath={.status.conditions[?(@.type=="Ready")].status}',
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.returncode == 0 and result.stdout.strip() == "True"


def _failure_report(layout: _Layout, watch: Mapping[str, Any], init: Mapping[str, Any]) -> str:
    component = str(init.get("component") or "")
    lines = ["the real node failed to start:"]
    for what, status in (("watchdog", watch), ("supervisor", init)):
        if status.get("message"):
            lines.append(f"  {what}: {status['message']}")
    logs = [layout.logs / f"{component}.log"] if component else []
    logs += [layout.logs / "init.log", layout.logs / "watchdog.log"]
    for log in logs:
        if log.is_file():
            lines.append(f"--- {log} (tail)\n{_log_tail(log)}")
    return "\n".join(lines)


def load_node(workdir: Path) -> RealNode | None:
    """The running node recorded in ``workdir`` (by a detached start), or None."""
    layout = _Layout(workdir.resolve())
    state = _read_json(layout.state)
    if not state:
        return None
    network = NodeNetwork(workdir=layout.root, id=str(state["id"]), watchdog_pid=int(state["watchdog_pid"]))
    node = RealNode(
        name=str(state["name"]),
        network=network,
        init_pid=int(state["init_pid"]),
        bin_dir=Path(str(state["bin_dir"])),
        workdir=layout.root,
    )
    return node if node.alive() else None


def stop_node_dir(workdir: Path) -> None:
    """Stop the node recorded in ``workdir`` (from a detached start), if any; remove leftovers."""
    layout = _Layout(workdir.resolve())
    status = _read_json(layout.watch_status)
    pid = status.get("pid")
    if isinstance(pid, int) and _is_watchdog(pid):
        NodeNetwork(
            workdir=layout.root, id=str(status.get("netns", "")).removeprefix(PREFIX), watchdog_pid=pid
        ).stop()
    else:
        cleanup_leftovers()
    layout.state.unlink(missing_ok=True)


def cleanup_leftovers() -> list[str]:
    """Remove what a crashed real node left (``apn-*`` netns, links, cgroups) unless one is running.

    Returns what was removed. A running node holds the lock; then nothing is touched.
    """
    path = lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return []
        return _node_supervisor.remove_stale(PREFIX)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# Leftover checks


_WATCHED_PATHS = (
    "/run/containerd",
    "/run/apn",
    "/var/lib/cni",
    "/var/lib/kubelet",
    "/var/lib/containerd",
    "/var/lib/kube-router",
    "/var/log/containers",
    "/var/log/pods",
    "/etc/cni",
    "/opt/cni",
    "/opt/containerd",
    "/usr/libexec/kubernetes",
    "/etc/kubernetes",
)
_ROOT_SYSCTLS = (
    *_KUBELET_TUNABLES,
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/ipv4/conf/all/rp_filter",
    "net/bridge/bridge-nf-call-iptables",
    "net/netfilter/nf_conntrack_max",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
    "net/netfilter/nf_conntrack_tcp_be_liberal",
)
_NODE_PROGRAMS = frozenset(
    {
        "containerd",
        "containerd-shim",
        "containerd-shim-runc-v2",
        "kubelet",
        "kube-proxy",
        "kube-router",
        "pause",
        "agnhost",
    }
)
_OUR_ADDRESSES = re.compile(r"\b198\.1[89]\.")
_OUR_NAME = re.compile(rf"\b{PREFIX}[0-9a-f]{{6}}\b")  # apn-<id>: netns, veth, cgroup
_OUR_MOUNT = re.compile(
    r"^/(run/containerd|run/apn|var/lib/(cni|kubelet|containerd)|var/log/(pods|containers)|proc/sys)(/|$)"
)


@dataclass(frozen=True)
class HostSnapshot:
    """What a real node could leave behind in the root namespaces, as comparable sets.

    Limited to what could be ours -- rules and routes in 198.18.0.0/15 or naming ``KUBE-``,
    ``cni0`` or ``apn-``; ``apn-*`` links, namespaces and cgroups; the node's programs; mounts
    named ``apn-`` or on paths the node uses -- so other work on the machine (image builds, other
    clusters) does not show up as a difference.
    """

    items: frozenset[str]


def _lines(*argv: str) -> list[str]:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [f"! {' '.join(argv)}: {exc}"]
    return result.stdout.splitlines()


def snapshot_host(workdir: Path | None = None) -> HostSnapshot:
    """Take a :class:`HostSnapshot`; ``workdir`` (the node's) also counts as "ours" in mounts and processes."""
    items: set[str] = set()
    ours = str(workdir.resolve()) if workdir is not None else None
    for tool in ("iptables-save", "ip6tables-save"):
        for line in _lines(tool):
            if line.startswith("#"):
                continue
            rule = re.sub(r"\[\d+:\d+\]", "", line).strip()
            if "KUBE-" in rule or "cni0" in rule or _OUR_NAME.search(rule) or _OUR_ADDRESSES.search(rule):
                items.add(f"{tool}: {rule}")
    for line in _lines("ip", "-o", "link", "show"):
        name = line.split(":", 2)[1].strip().split("@", 1)[0] if ":" in line else ""
        if name.startswith(PREFIX) or name == "cni0":
            items.add(f"link {name}")
    for line in _lines("ip", "-o", "-4", "addr", "show"):
        if _OUR_ADDRESSES.search(line):
            items.add("address " + " ".join(line.split()[1:4]))
    for line in _lines("ip", "route", "show", "table", "all"):
        if _OUR_ADDRESSES.search(line) or _OUR_NAME.search(line):
            items.add(f"route {line.strip()}")
    for line in _lines("ip", "netns", "list"):
        if line.startswith(PREFIX):
            items.add(f"netns {line.split()[0]}")
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        mountpoint = fields[4]
        fstype = fields[fields.index("-") + 1]
        if (
            _OUR_MOUNT.match(mountpoint)
            or _OUR_NAME.search(mountpoint)
            or (ours is not None and mountpoint.startswith(ours))
        ):
            items.add(f"mount {mountpoint} ({fstype})")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            comm = (entry / "comm").read_text().strip()
            cmd = " ".join(_cmdline(int(entry.name)))
            if (
                comm in _NODE_PROGRAMS
                or "_node_supervisor" in cmd
                or _OUR_NAME.search(cmd)
                or (ours is not None and ours in cmd)
            ):
                items.add(f"process {entry.name} {cmd or comm}")
    cgroup_root = Path("/sys/fs/cgroup")
    for base in (
        [cgroup_root, *(p for p in cgroup_root.iterdir() if p.is_dir())] if cgroup_root.is_dir() else []
    ):
        items.update(f"cgroup {p}" for p in base.glob(f"{PREFIX}*") if p.is_dir())
    for key in _ROOT_SYSCTLS:
        with contextlib.suppress(OSError):
            items.add(f"sysctl {key.replace('/', '.')} = {Path('/proc/sys', key).read_text().strip()}")
    with contextlib.suppress(OSError):
        hashsize = Path("/sys/module/nf_conntrack/parameters/hashsize").read_text().strip()
        items.add(f"nf_conntrack hashsize = {hashsize}")
    items.update(f"path {p}" for p in _WATCHED_PATHS if os.path.lexists(p))
    return HostSnapshot(frozenset(items))


def host_leftovers(before: HostSnapshot, after: HostSnapshot | None = None) -> list[str]:
    """What differs between ``before`` and ``after`` (default: now): ``+`` appeared, ``-`` vanished."""
    now = after if after is not None else snapshot_host()
    added = sorted(now.items - before.items)
    removed = sorted(before.items - now.items)
    return [f"+ {item}" for item in added] + [f"- {item}" for item in removed]
