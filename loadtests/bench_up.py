"""How long the README's first command takes a newcomer: `make up` in a fresh clone, from nothing to
the banner, then a second start. "Nothing" means: uv not on PATH (only python3 and the system's
tools), an empty HOME and an empty uv cache, so uv itself and every package are downloaded.

    uv run python loadtests/bench_up.py [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.ports import free_port  # noqa: E402


def start(clone: Path, env: dict[str, str]) -> float:
    """Seconds from `make up` to its banner; then Ctrl-C, and wait for a clean stop."""
    began = time.monotonic()
    process = subprocess.Popen(
        ["make", "up", f"UP_ARGS=--port {free_port()}"],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    seconds = None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "Press Ctrl-C" in line:
            seconds = time.monotonic() - began
            break
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    lines += process.stdout.readlines()
    process.wait(timeout=60)
    if seconds is None or not any("agentplane up: stopped" in line for line in lines):
        sys.exit("make up did not start and stop cleanly:\n" + "".join(lines))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary clone and home")
    args = parser.parse_args()
    python = shutil.which("python3")
    if python is None:
        sys.exit("python3 is not on PATH")
    work = Path(tempfile.mkdtemp(prefix="agentplane-bench-up-"))
    try:
        bin_dir, home, clone = work / "bin", work / "home", work / "clone"
        bin_dir.mkdir()
        home.mkdir()
        (bin_dir / "python3").symlink_to(os.path.realpath(python))
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV", "AGENTPLANE_"))}
        env.update(HOME=str(home), PATH=f"{bin_dir}:/usr/bin:/bin", UV_CACHE_DIR=str(home / "uv-cache"))
        first = start(clone, env)
        second = start(clone, env)
        print(f"make up, fresh clone to banner: {first:.1f} s; second start: {second:.1f} s")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
