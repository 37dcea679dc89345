"""The processes behind ``support.node``'s real test node. Standard library only; run, never imported.

Two roles, one per subcommand:

``watch CONFIG.json`` -- the *watchdog*, in the root namespaces. It holds the machine-wide
real-node lock, removes what an earlier crashed run left behind, creates the node's network
namespace (``apn-<id>``), the veth pair and the root-namespace routes, then waits. On SIGUSR1 it
starts the node (``init`` below) inside that namespace; on SIGUSR2 it kills the node but keeps
the network (so the API server, which listens on the link, can still shut down cleanly); on
SIGTERM or SIGINT -- or when the node dies unasked -- it kills the node and removes everything it
created: veth (with its addresses and routes), network namespace, cgroup directories, the node's
container and kubelet state. Started with PR_SET_PDEATHSIG=SIGTERM, so a killed test process
still gets this cleanup.

``init CONFIG.json`` -- PID 1 of the node's own PID namespace, started by the watchdog as::

    nsenter --net=/run/netns/apn-<id> unshare --pid --fork --kill-child=SIGKILL \\
        --mount-proc --mount --propagation private python -I _node_supervisor.py init ...

It gives the node private mounts (tmpfs on /run, /var/lib and /var/log, so sockets, CNI's netns
files and caches and kubelet's log links never reach the host; a sysfs of the node's network
namespace with the host's cgroup hierarchies moved under it; files bind-mounted over the kernel
tunables kubelet would otherwise rewrite machine-wide), starts the components in order (each
after its ``wait`` condition holds; ``oneshot`` steps must exit 0), and reaps every orphan
(containerd's shims end up here). When any component exits, or on SIGTERM/SIGINT, it exits; the
kernel then kills everything left in the PID namespace -- shims and containers included -- and
the mount namespace, with every mount kubelet and containerd made, goes away with it.

Progress goes to stderr (the spawner's log file) and to a JSON status file named in the config.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1
_CGROUP_ROOT = Path("/sys/fs/cgroup")
_NETNS_DIR = Path("/run/netns")
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_stop_requested = False
_start_requested = False
_node_stop_requested = False


def _log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"{stamp} {message}", file=sys.stderr, flush=True)


def _write_status(path: Path, **status: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(status, indent=2) + "\n")
    tmp.replace(path)


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _on_stop(signum: int, _frame: object) -> None:
    global _stop_requested
    _stop_requested = True


def _on_start(signum: int, _frame: object) -> None:
    global _start_requested
    _start_requested = True


def _on_node_stop(signum: int, _frame: object) -> None:
    global _node_stop_requested
    _node_stop_requested = True


# --------------------------------------------------------------------------
# Leftovers (shared by the watchdog's start and cleanup)


def _kill_cgroup_tree(directory: Path) -> None:
    for procs in directory.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            for pid in procs.read_text().split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)


def remove_cgroups(prefix: str, *, timeout: float = 10.0) -> list[str]:
    """Remove ``/sys/fs/cgroup/<hierarchy>/<prefix>*`` bottom-up; return what could not be removed."""
    deadline = time.monotonic() + timeout
    while True:
        left: list[str] = []
        bases = [_CGROUP_ROOT, *sorted(_CGROUP_ROOT.iterdir())] if _CGROUP_ROOT.is_dir() else []
        for base in bases:  # cgroup v2: /sys/fs/cgroup/<prefix>*; v1: /sys/fs/cgroup/<hierarchy>/<prefix>*
            for top in sorted(base.glob(f"{prefix}*")):
                if not top.is_dir():
                    continue
                _kill_cgroup_tree(top)
                dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
                for directory in [*dirs, top]:
                    try:
                        directory.rmdir()
                    except FileNotFoundError:
                        pass
                    except OSError:
                        left.append(str(directory))
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def _netns_pids(name: str) -> list[int]:
    out = _run("ip", "netns", "pids", name, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def remove_netns(name: str) -> None:
    for pid in _netns_pids(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _run("ip", "netns", "delete", name, check=False)
    with contextlib.suppress(FileNotFoundError):
        (_NETNS_DIR / name).unlink()


def remove_stale(prefix: str) -> list[str]:
    """Remove every netns, root-namespace link and cgroup named ``<prefix>*`` (caller holds the lock)."""
    removed: list[str] = []
    for entry in sorted(_NETNS_DIR.glob(f"{prefix}*")) if _NETNS_DIR.is_dir() else []:
        remove_netns(entry.name)
        removed.append(f"netns {entry.name}")
    for line in _run("ip", "-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":", 2)[1].strip().split("@", 1)[0] if ":" in line else ""
        if name.startswith(prefix):
            _run("ip", "link", "delete", name, check=False)
            removed.append(f"link {name}")
    if removed and _NETNS_DIR.is_dir() and not os.path.ismount(_NETNS_DIR):
        with contextlib.suppress(OSError):  # only if empty: what `ip netns` made for our netns
            _NETNS_DIR.rmdir()
    for base in [_CGROUP_ROOT, *sorted(_CGROUP_ROOT.iterdir())] if _CGROUP_ROOT.is_dir() else []:
        removed += [f"cgroup {p}" for p in sorted(base.glob(f"{prefix}*")) if p.is_dir()]
    remove_cgroups(prefix)
    return removed


# --------------------------------------------------------------------------
# watch


class _Watchdog:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.status_path = Path(config["status"])
        self.netns: str = config["netns"]
        self.veth: str = config["veth"]
        self.created_netns_dir = False
        self.init_launcher: subprocess.Popen[bytes] | None = None
        self.init_pid: int | None = None
        self.state: dict[str, Any] = {"pid": os.getpid(), "netns": self.netns, "veth": self.veth}

    def status(self, phase: str, **extra: Any) -> None:
        self.state.update(extra, phase=phase)
        _write_status(self.status_path, **self.state)

    def lock(self) -> int:
        path = Path(self.config["lock"])
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + float(self.config.get("lock_timeout", 0))
        waiting = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "?"
                if time.monotonic() >= deadline or _stop_requested:
                    os.close(fd)
                    raise RuntimeError(
                        f"another real test node is running on this machine (lock {path} held by {holder}); "
                        "only one can own the 198.18.255.0/24 link at a time: stop it (make cluster-down) first"
                    ) from None
                if not waiting:
                    waiting = True
                    _log(f"waiting for the real-node lock {path}, held by {holder}")
                    self.status("waiting", message=f"waiting for the real-node lock held by {holder}")
                time.sleep(0.5)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} workdir {self.config['workdir']}\n".encode(), 0)
        return fd

    def create_network(self) -> None:
        cfg = self.config
        if not _NETNS_DIR.exists():
            _NETNS_DIR.mkdir(parents=True)
            self.created_netns_dir = True
        target = _NETNS_DIR / self.netns
        target.touch()
        # A persistent namespace bound on /run/netns/<name> (what `ip netns add` makes), without
        # `ip netns add`'s one-time bind mount of /run/netns on itself, which would outlive us.
        _run("unshare", f"--net={target}", "true")
        ns = ("ip", "-n", self.netns)
        _run("ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
        _run(*ns, "link", "set", "lo", "up")
        _run(*ns, "addr", "add", cfg["node_address"], "dev", "eth0")
        _run(*ns, "link", "set", "eth0", "up")
        _run("ip", "addr", "add", cfg["host_address"], "dev", self.veth)
        _run("ip", "link", "set", self.veth, "up")
        for cidr in cfg["routes"]:
            _run("ip", "route", "add", cidr, "via", cfg["gateway"], "dev", self.veth)

    def start_node(self) -> None:
        init_config = self.config["init_config"]
        argv = [
            "nsenter",
            f"--net={_NETNS_DIR / self.netns}",
            "--",
            "unshare",
            "--pid",
            "--fork",
            "--kill-child=SIGKILL",
            "--mount-proc",
            "--mount",
            "--propagation",
            "private",
            sys.executable,
            "-I",
            str(Path(__file__).resolve()),
            "init",
            init_config,
        ]
        log = open(self.config["init_log"], "ab")  # noqa: SIM115 -- handed to the child
        prctl = ctypes.CDLL(None, use_errno=True).prctl

        def die_with_us() -> None:
            prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)

        with log:
            self.init_launcher = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={"PATH": _PATH, "HOME": self.config["workdir"], "LANG": "C.UTF-8"},
                preexec_fn=die_with_us,
            )
        children = Path(f"/proc/{self.init_launcher.pid}/task/{self.init_launcher.pid}/children")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.init_launcher.poll() is None:
            with contextlib.suppress(OSError):
                pids = children.read_text().split()
                if pids:
                    self.init_pid = int(pids[0])
                    break
            time.sleep(0.01)
        if self.init_pid is None:
            raise RuntimeError("the node's PID 1 did not start (see the init log)")
        self.status("node", init_pid=self.init_pid, unshare_pid=self.init_launcher.pid)
        _log(f"node started: PID 1 of its namespace is {self.init_pid} here")

    def stop_node(self) -> int | None:
        """SIGKILL the node's PID 1 (the kernel then kills its whole PID namespace); its exit code."""
        if self.init_launcher is None:
            return None
        if self.init_pid is not None and self.init_launcher.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.init_pid, signal.SIGKILL)
        try:
            return self.init_launcher.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.init_launcher.kill()
            return self.init_launcher.wait()

    def cleanup(self) -> None:
        _run("ip", "link", "delete", self.veth, check=False)  # the peer, addresses and routes go with it
        remove_netns(self.netns)
        if self.created_netns_dir:
            with contextlib.suppress(OSError):
                _NETNS_DIR.rmdir()
        left = remove_cgroups(self.config["cgroup"])
        if left:
            _log(f"could not remove cgroups: {left}")
        for path in self.config.get("remove_on_exit", []):
            shutil.rmtree(path, ignore_errors=True)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, _on_stop)
        signal.signal(signal.SIGINT, _on_stop)
        signal.signal(signal.SIGUSR1, _on_start)
        signal.signal(signal.SIGUSR2, _on_node_stop)
        self.status("starting")
        lock_fd = self.lock()
        code = 0
        try:
            stale = remove_stale(self.config["prefix"])
            if stale:
                _log(f"removed leftovers of an earlier run: {', '.join(stale)}")
            self.create_network()
            self.status("network")
            _log(f"network up: netns {self.netns}, veth {self.veth}")
            while not _stop_requested:
                if _start_requested and self.init_launcher is None and not _node_stop_requested:
                    self.start_node()
                if (
                    _node_stop_requested
                    and self.init_launcher is not None
                    and "node_stopped" not in self.state
                ):
                    self.stop_node()
                    self.status("network", node_stopped=True)
                    _log("node stopped; network kept")
                elif (
                    self.init_launcher is not None
                    and "node_stopped" not in self.state
                    and self.init_launcher.poll() is not None
                ):
                    exit_code = self.init_launcher.returncode
                    message = f"the node's PID 1 exited with {exit_code}"
                    _log(message)
                    self.status("failed", message=message)
                    code = 1
                    break
                time.sleep(0.05)
        except Exception as exc:
            _log(f"error: {exc}")
            self.status("failed", message=str(exc))
            code = 1
        finally:
            self.stop_node()
            self.cleanup()
            os.close(lock_fd)
        if code == 0:
            self.status("stopped")
        _log("stopped and cleaned up")
        return code


def watch(config_path: str) -> int:
    config = json.loads(Path(config_path).read_text())
    try:
        return _Watchdog(config).run()
    except Exception as exc:  # the lock, typically: say so in the status, not in a traceback
        _log(f"error: {exc}")
        _write_status(Path(config["status"]), phase="failed", pid=os.getpid(), message=str(exc))
        return 1


# --------------------------------------------------------------------------
# init


def _mount(*args: str) -> None:
    _run("mount", *args)


def _setup_mounts(config: dict[str, Any]) -> None:
    run_dir = Path(config["run_dir"])
    for private in ("/run", "/var/lib", "/var/log"):
        _mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", private)
    for directory in ("/run/netns", "/run/containerd", str(run_dir), "/var/lib/cni"):
        Path(directory).mkdir(parents=True, exist_ok=True)
    # A sysfs of this network namespace (cni0, veths in /sys/class/net), keeping the cgroups.
    keep = run_dir / "cgroup"
    keep.mkdir()
    _mount("--rbind", "/sys/fs/cgroup", str(keep))
    _mount("-t", "sysfs", "sysfs", "/sys")
    _mount("--move", str(keep), "/sys/fs/cgroup")
    keep.rmdir()
    _make_cgroups(config["cgroup"])
    # kubelet rewrites these machine-wide tunables unless they already hold its values.
    tunables = run_dir / "sysctl"
    tunables.mkdir()
    for key, value in config["tunables"].items():
        source = tunables / key.replace("/", ".")
        source.write_text(f"{value}\n")
        _mount("--bind", str(source), f"/proc/sys/{key}")
    # Per-network-namespace settings of the node itself.
    for key, value in config["netns_sysctls"].items():
        Path(f"/proc/sys/{key}").write_text(f"{value}\n")


def _make_cgroups(name: str) -> None:
    """Create the node's cgroup (kubelet's cgroupRoot) in every hierarchy: every pod lives below it."""
    hierarchies = [_CGROUP_ROOT] if (_CGROUP_ROOT / "cgroup.procs").exists() else []
    hierarchies += [h for h in sorted(_CGROUP_ROOT.iterdir()) if (h / "cgroup.procs").exists()]
    for hierarchy in hierarchies:
        directory = hierarchy / name
        directory.mkdir(exist_ok=True)
        for key in ("cpuset.cpus", "cpuset.mems"):  # empty in a new v1 cpuset cgroup
            if (directory / key).exists() and not (directory / key).read_text().strip():
                (directory / key).write_text((hierarchy / key).read_text())


def _ready(wait: dict[str, Any] | None, env: dict[str, str]) -> bool:
    if wait is None:
        return True
    if "socket" in wait:
        with socket.socket(socket.AF_UNIX) as sock:
            try:
                sock.connect(wait["socket"])
            except OSError:
                return False
            return True
    if "command" in wait:
        try:
            result = subprocess.run(wait["command"], capture_output=True, env=env, timeout=10, check=False)
        except subprocess.TimeoutExpired:
            return False
        return result.returncode == 0
    raise ValueError(f"unknown wait condition {wait}")


def _spawn(component: dict[str, Any], env: dict[str, str]) -> int:
    log = os.open(component["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        os.write(log, f"+ {' '.join(component['argv'])}\n".encode())
        return os.posix_spawnp(
            component["argv"][0],
            component["argv"],
            {**env, **component.get("env", {})},
            file_actions=[
                (os.POSIX_SPAWN_DUP2, devnull, 0),
                (os.POSIX_SPAWN_DUP2, log, 1),
                (os.POSIX_SPAWN_DUP2, log, 2),
            ],
            setsid=True,
        )
    finally:
        os.close(log)
        os.close(devnull)


def init(config_path: str) -> int:
    config = json.loads(Path(config_path).read_text())
    status_path = Path(config["status"])
    signal.signal(signal.SIGTERM, _on_stop)
    signal.signal(signal.SIGINT, _on_stop)
    env = {"PATH": config.get("path", _PATH), "HOME": config["home"], "LANG": "C.UTF-8"}

    def fail(message: str) -> int:
        _log(message)
        _write_status(status_path, state="failed", message=message, component=current)
        return 1

    current = "mounts"
    _write_status(status_path, state="starting", component=current)
    try:
        _setup_mounts(config)
    except Exception as exc:
        return fail(f"setting up the node's mounts failed: {exc}")

    steps: list[dict[str, Any]] = list(config["components"])
    running: dict[int, str] = {}
    oneshot: int | None = None
    waiting_since = time.monotonic()
    reported = False
    while not _stop_requested:
        while True:  # reap everything: our components and the orphans reparented to PID 1
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            name = running.pop(pid, None)
            if name is None:
                continue
            code = os.waitstatus_to_exitcode(wait_status)
            if pid == oneshot and code == 0:
                _log(f"{name} done")
                oneshot = None
                waiting_since = time.monotonic()
                continue
            current = name
            return fail(f"{name} exited with {'signal ' + str(-code) if code < 0 else code}")
        if oneshot is None and steps:
            step = steps[0]
            current = step["name"]
            if _ready(step.get("wait"), env):
                steps.pop(0)
                pid = _spawn(step, env)
                running[pid] = step["name"]
                _log(f"started {step['name']} (pid {pid})")
                _write_status(status_path, state="starting", component=current)
                if step.get("oneshot"):
                    oneshot = pid
                waiting_since = time.monotonic()
            elif time.monotonic() - waiting_since > float(config.get("wait_timeout", 120)):
                return fail(f"timed out waiting for {step['wait']} before starting {step['name']}")
        elif oneshot is None and not reported:
            reported = True
            current = ""
            _write_status(status_path, state="running", components=sorted(running.values()))
            _log("all components started")
        time.sleep(0.05)
    _log("stop requested")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("watch", "init"):
        print(f"usage: {argv[0]} watch|init CONFIG.json", file=sys.stderr)
        return 2
    return watch(argv[2]) if argv[1] == "watch" else init(argv[2])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
