"""The runtime and operator images, built offline from the real Dockerfiles (support.images), and run
the way their pods run them: as uid 10001, no capabilities, a read-only root filesystem with a tmpfs
/tmp, and no network.

Building needs root, buildah and mmdebstrap (installed by tools/install-image-deps.sh when missing),
PyPI and Debian's mirror; running needs runc. Without them the tests are skipped, and fail in CI.
"""

from __future__ import annotations

import datetime
import os
import shutil
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.images import (
    OPERATOR,
    REPO_ROOT,
    RUNTIME,
    ImageArchive,
    ImageBuildError,
    ImageConfig,
    ImageToolsMissing,
    RunResult,
    build_image,
    ensure_tools,
    operator_image,
    read_config,
    run_in_rootfs,
    runtime_image,
    unpack,
)
from support.service_fixtures import unavailable

POD_UID = 10001
"""The pods' securityContext.runAsUser (operator builders and deploy manifests)."""


@dataclass(frozen=True)
class Image:
    name: str
    archive: ImageArchive
    config: ImageConfig
    tags: list[str]
    rootfs: Path
    workdir: Path

    def run(self, *args: str, entrypoint: bool = True) -> RunResult:
        """Run the entrypoint with `args` (or `args` alone) in the image, as the pod would."""
        argv = [*self.config.entrypoint, *args] if entrypoint else list(args)
        return run_in_rootfs(self.rootfs, self.config, argv, workdir=self.workdir, name=self.name)


def _image(name: str, tmp: pytest.TempPathFactory) -> Iterator[Image]:
    if os.geteuid() != 0:
        unavailable("image builds", "need root (buildah, mmdebstrap and runc run as root here)")
    try:
        ensure_tools("buildah", "mmdebstrap", "runc")
    except ImageToolsMissing as exc:
        unavailable("image builds", str(exc))
    try:
        archive = runtime_image() if name == "runtime" else operator_image()
    except ImageBuildError as exc:
        pytest.fail(f"building the {name} image: {exc}", pytrace=False)
    config, tags = read_config(archive.path)
    workdir = tmp.mktemp(f"image-{name}")
    rootfs = workdir / "rootfs"
    unpack(archive.path, rootfs)
    try:
        yield Image(name, archive, config, tags, rootfs, workdir)
    finally:
        shutil.rmtree(rootfs)  # several hundred MB; pytest keeps its last temporary folders


@pytest.fixture(scope="session")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    yield from _image("runtime", tmp_path_factory)


@pytest.fixture(scope="session")
def operator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    yield from _image("operator", tmp_path_factory)


@pytest.fixture(params=["runtime", "operator"])
def image(request: pytest.FixtureRequest) -> Image:
    built: Image = request.getfixturevalue(request.param)
    return built


def _version(member: str) -> str:
    with (REPO_ROOT / member / "pyproject.toml").open("rb") as f:
        version: str = tomllib.load(f)["project"]["version"]
    return version


def test_config_is_what_the_pods_expect(image: Image, record_property: Callable[[str, object], None]) -> None:
    record_property(f"{image.name}_image_bytes", image.archive.size)  # reported, not asserted
    config = image.config
    assert config.user == f"{POD_UID}:{POD_UID}"
    assert image.tags == [image.archive.ref]
    env = dict(item.split("=", 1) for item in config.env)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["HOME"] == "/tmp"
    assert env["PATH"].startswith("/opt/venv/bin:")
    if image.name == "runtime":
        assert config.entrypoint == ["agentplane-runtime"]
        assert config.cmd == []  # the operator's Deployment passes `--config ...` as args
        assert config.exposed_ports == ["8080/tcp", "9090/tcp"]
        assert env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
        assert env["HF_HUB_OFFLINE"] == "1"
    else:
        assert config.entrypoint == ["agentplane-operator"]
        assert config.cmd == ["run"]
        assert config.exposed_ports == ["8080/tcp"]


def test_oci_labels(image: Image) -> None:
    labels = image.config.labels
    prefix = "org.opencontainers.image."
    assert labels[prefix + "title"] == f"agentplane-{image.name}"
    assert labels[prefix + "description"]
    assert labels[prefix + "version"] == _version(image.name)
    assert labels[prefix + "source"].startswith("https://")
    assert labels[prefix + "licenses"]
    revision = labels[prefix + "revision"]
    assert len(revision.removesuffix("-dirty")) == 40, revision
    created = datetime.datetime.fromisoformat(labels[prefix + "created"])
    assert created.tzinfo is not None
    assert created.year >= 2025


def test_only_the_virtualenv_is_added(image: Image) -> None:
    root = image.rootfs
    for absent in ("src", "opt/uv", "root/.cache/uv", "root/.cache/pip"):
        assert not (root / absent).exists(), f"/{absent} is in the final image"
    site = root / "opt/venv/lib/python3.11/site-packages"
    package = site / f"agentplane_{image.name}"
    assert (package / "__init__.py").is_file()
    assert not (package / "tests").exists()
    # installed as wheels, not editable links back to a source tree that is not there
    assert not list(site.glob("*.pth")) or all("/src" not in p.read_text() for p in site.glob("*.pth"))
    # compiled at build time: nothing needs writing at run time
    assert list((package / "__pycache__").glob("__init__.cpython-311*.pyc"))
    # the venv's interpreter is the base's python3, present in the final stage too
    python = root / "opt/venv/bin/python"
    assert python.is_symlink()
    target = os.readlink(python)
    assert target.startswith("/")
    assert (root / target.lstrip("/")).resolve().is_relative_to(root.resolve())
    assert (root / target.lstrip("/")).exists()
    # the user the pod runs as has a name (for libraries that look it up)
    assert f":{POD_UID}:{POD_UID}:" in (root / "etc/passwd").read_text()


def test_help_runs_as_the_pod_does(image: Image) -> None:
    result = image.run("--help")
    assert result.returncode == 0, result.stderr
    assert f"usage: agentplane-{image.name}" in result.stdout


def test_runtime_imports_offline_on_a_read_only_root(runtime: Image) -> None:
    # The whole app and litellm (which fetches its model cost map unless told not to) import with no
    # network and nothing writable but /tmp; and the process is who the pod's securityContext says.
    script = (
        "import os, sys, agentplane_runtime.app, litellm; "
        "assert sys.flags.dont_write_bytecode; "
        "print(os.getuid(), os.getgid(), sys.prefix)"
    )
    result = runtime.run("python", "-c", script, entrypoint=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(POD_UID), str(POD_UID), "/opt/venv"]


def test_root_filesystem_is_read_only_and_tmp_writable(runtime: Image) -> None:
    script = (
        "import pathlib\n"
        "pathlib.Path('/tmp/x').write_text('ok')\n"
        "try:\n"
        "    pathlib.Path('/opt/venv/x').write_text('no')\n"
        "except OSError as exc:\n"
        "    print(exc.errno)\n"
    )
    result = runtime.run("python", "-c", script, entrypoint=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "30"  # EROFS


def test_operator_imports_offline_on_a_read_only_root(operator: Image) -> None:
    result = operator.run(
        "python", "-c", "import kopf, agentplane_operator.handlers, agentplane_operator.cli", entrypoint=False
    )
    assert result.returncode == 0, result.stderr


def test_a_second_build_is_a_no_op(runtime: Image, operator: Image) -> None:
    for spec, built in ((RUNTIME, runtime), (OPERATOR, operator)):
        mtime = built.archive.path.stat().st_mtime_ns
        again = build_image(spec)
        assert again == built.archive
        assert not again.built
        assert again.path.stat().st_mtime_ns == mtime
