"""The runtime and operator container images, built from their real Dockerfiles, cached.

No Docker daemon and no image registry are needed: ``buildah`` builds ``runtime/Dockerfile`` and
``operator/Dockerfile`` (RUN steps reach PyPI through the host's network), on a base image that
``mmdebstrap`` makes from Debian's packages (bookworm's python3 3.11, like ``python:3.11-slim``);
only the ``BASE_IMAGE`` build argument differs from a registry build. Each image is saved as a
``docker-archive`` tar, which ``ctr -n k8s.io images import`` loads into a node's containerd.

Results are cached under ``${AGENTPLANE_CACHE:-~/.cache/agentplane}/images``, keyed on every input
(the Dockerfile, .dockerignore, uv.lock, each member's pyproject.toml, the sources the image
contains, build arguments, the base image's key): a warm call only hashes those files. Builds are
serialised by a lock on that folder, so concurrent sessions and pytest workers build once. A new
build of an image replaces the old one's tar and its images in buildah's storage (its own and its
builder stage's, tagged `<name>-builder`); the dependency layers stay, so that a source change does
not reinstall them. The labels `created` and `revision` are those of the build that first made that
content (buildah caches the LABEL step). Disk: the base tar ~125 MiB, per image its tar (runtime
~600 MiB, operator ~300 MiB) and about twice that in /var/lib/containers; uv's and pip's caches
of the RUN steps in /var/tmp/buildah-cache. A build that is killed leaves buildah's working
containers behind (`buildah rm --all`); `buildah rmi --prune` drops untagged layers.

Library use (tests)::

    archive = runtime_image()      # ImageArchive(path=<tar>, ref="localhost/agentplane/runtime:...")
    operator_image()

Command line (``make images``)::

    python tests/support/images.py build [runtime] [operator] [--base debian|python]
        [--extras dense] [--engine buildah|docker] [--rebuild]

prints one line per image: the tar path, its ref and size. ``--base python`` (the Dockerfiles'
default, ``python:3.11-slim-bookworm``) needs a registry; ``--base debian`` works offline.

Only the standard library and subprocesses are used.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL_DEPS = REPO_ROOT / "tools" / "install-image-deps.sh"
MEMBERS = ("platform", "operator", "runtime", "infra")
"""Workspace members: the Dockerfiles copy every member's pyproject.toml (uv needs the workspace)."""

DEBIAN_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
"""What the Dockerfiles need of a base beyond Debian's required packages: a python3 (3.11, like
python:3.11-slim's), its venv module (the builder stage puts uv in a venv), CA certificates."""
BASE_REV = 1
"""Bump to rebuild the base image after a change that its key does not capture."""
IMAGE_REV = 1
"""Bump to rebuild the images after a change that their key does not capture."""
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
"""Where the Dockerfiles' builder stage reads CA certificates from (pip and uv are pointed at it)."""

Engine = Literal["buildah", "docker"]
Base = Literal["debian", "python"]


class ImageBuildError(RuntimeError):
    """An image could not be built; the message says which step and why."""


class ImageToolsMissing(ImageBuildError):
    """The tools to build or run images are missing and cannot be installed here."""


def cache_root() -> Path:
    """Where images and the base image's root filesystem are kept (as tests/cluster/build.sh)."""
    root = os.environ.get("AGENTPLANE_CACHE") or str(Path.home() / ".cache" / "agentplane")
    return Path(root) / "images"


@dataclass(frozen=True)
class ImageArchive:
    """One image, saved as a docker-archive tar."""

    path: Path
    ref: str
    """The image's name inside the tar (what `ctr images import` registers), e.g.
    `localhost/agentplane/runtime:0.1.0-3f2a...`."""
    built: bool = field(default=False, compare=False)
    """Whether this call built it (False: it came from the cache)."""

    @property
    def size(self) -> int:
        """Bytes of the tar: the image's uncompressed layers and config."""
        return self.path.stat().st_size


@dataclass(frozen=True)
class ImageSpec:
    """What goes into one image."""

    name: str
    """`runtime` or `operator`: the member whose Dockerfile is built."""
    extras: tuple[str, ...] = ()
    """Extras of the member (only the runtime's Dockerfile takes them: `dense`)."""

    @property
    def dockerfile(self) -> Path:
        return REPO_ROOT / self.name / "Dockerfile"

    @property
    def source_dirs(self) -> tuple[str, ...]:
        """The sources the Dockerfile copies: the platform's and the member's own."""
        return ("platform/src", f"{self.name}/src")

    @property
    def repository(self) -> str:
        return f"localhost/agentplane/{self.name}"


RUNTIME = ImageSpec("runtime")
OPERATOR = ImageSpec("operator")


# --- helpers ----------------------------------------------------------------------------------


def _log(message: str) -> None:
    print(f"images: {message}", file=sys.stderr, flush=True)


def _run(args: Sequence[str | Path], *, what: str, log: Path | None = None) -> str:
    """Run a command; its stdout is returned, and its output goes to `log` (if given)."""
    argv = [str(a) for a in args]
    if log is None:
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ImageBuildError(
                f"{what} failed ({' '.join(argv[:3])} ...): {result.stderr.strip()[-2000:]}"
            )
        return result.stdout
    with log.open("w") as out:
        result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise ImageBuildError(f"{what} failed (exit {result.returncode}); last lines of {log}:\n{tail}")
    return ""


@contextlib.contextmanager
def _locked(directory: Path, name: str) -> Iterator[None]:
    """Hold an exclusive lock on `directory/.<name>.lock` (one per thing built: holding the images'
    lock, a build takes the base's)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / f".{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _sha256(parts: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def _files_under(dirs: Sequence[str]) -> list[str]:
    """Files under `dirs` (relative to the repo) that a build context holds: tracked or untracked,
    not ignored by git; every file but bytecode when this is not a git checkout."""
    try:
        out = subprocess.run(
            [
                "git",
                "-C",
                str(REPO_ROOT),
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
                "--",
                *dirs,
            ],
            capture_output=True,
            check=True,
        ).stdout
        return sorted({name for name in out.decode().split("\0") if name})
    except (OSError, subprocess.CalledProcessError):
        found: list[str] = []
        for top in dirs:
            for path in (REPO_ROOT / top).rglob("*"):
                if path.is_file() and "__pycache__" not in path.parts and path.suffix not in {".pyc", ".pyo"}:
                    found.append(path.relative_to(REPO_ROOT).as_posix())
        return sorted(found)


def _hash_files(names: Iterable[str]) -> Iterator[bytes]:
    for name in names:
        try:
            content = (REPO_ROOT / name).read_bytes()
        except FileNotFoundError:  # tracked but deleted in the work tree: not in the context either
            continue
        yield name.encode()
        yield content


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise ImageToolsMissing(f"`{name}` not found")
    return path


def ensure_tools(*tools: str) -> None:
    """Install the missing ones (tools/install-image-deps.sh: apt-get, as root); else raise."""
    if all(shutil.which(t) or shutil.which(t, path="/usr/sbin:/sbin") for t in tools):
        return
    result = subprocess.run(["bash", str(INSTALL_DEPS)], capture_output=True, text=True, check=False)
    missing = [t for t in tools if not (shutil.which(t) or shutil.which(t, path="/usr/sbin:/sbin"))]
    if missing:
        raise ImageToolsMissing(f"missing {', '.join(missing)}: {result.stderr.strip() or 'install failed'}")


def _git_revision(paths: Sequence[str]) -> str:
    """The commit the sources come from, `-dirty` when they differ from it."""
    try:
        head = _run(["git", "-C", REPO_ROOT, "rev-parse", "HEAD"], what="git rev-parse").strip()
    except (ImageBuildError, OSError):
        return "unknown"
    dirty = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "diff", "--quiet", "HEAD", "--", *paths], check=False
    )
    return head + ("-dirty" if dirty.returncode != 0 else "")


def _member_version(name: str) -> str:
    with (REPO_ROOT / name / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)["project"]
    version = project["version"]
    assert isinstance(version, str)
    return version


def _buildah_has_image(ref: str) -> bool:
    result = subprocess.run(
        [_tool("buildah"), "inspect", "--type", "image", "--format", "{{.FromImageID}}", ref],
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


def docker_works() -> bool:
    """Whether a Docker engine answers (then `--engine docker` can build from the registry base)."""
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        return subprocess.run([docker, "info"], capture_output=True, timeout=10, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


# --- the base image ---------------------------------------------------------------------------


def _host_sources() -> Path | None:
    """The host's Debian sources (deb822), when they are bookworm's: the mirror apt uses here."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.is_file() and DEBIAN_SUITE in sources.read_text():
        return sources
    return None


def _mmdebstrap_args() -> list[str]:
    return [
        "--variant=minbase",
        f"--include={','.join(BASE_PACKAGES)}",
        # merged /usr as Debian's own images have it, without the usrmerge package (and its perl)
        "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
        # as debian:bookworm-slim: no manuals, documentation (but copyrights) or translations
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--dpkgopt=path-exclude=/usr/share/info/*",
        "--aptopt=Acquire::Languages none",
    ]


def base_key() -> str:
    """The Debian base image's key: what it is made of (not the mirror's state on the day)."""
    parts = (f"base-rev={BASE_REV}", DEBIAN_SUITE, os.uname().machine, *_mmdebstrap_args())
    return _sha256(part.encode() for part in parts)


def base_ref() -> str:
    return f"localhost/agentplane/python-debian:3.11-{DEBIAN_SUITE}-{base_key()[:12]}"


def debian_base() -> str:
    """The offline base image in buildah's storage (made and imported when missing); its ref.

    Its root filesystem (a tar, kept in the cache) comes from `mmdebstrap` with Debian's python3;
    like python:3.11-slim it has python3 on PATH, CA certificates and LANG=C.UTF-8.
    """
    ensure_tools("buildah", "mmdebstrap")
    ref = base_ref()
    if _buildah_has_image(ref):
        return ref
    cache = cache_root()
    with _locked(cache, "base"):
        if _buildah_has_image(ref):
            return ref
        rootfs = cache / f"debian-base-{base_key()[:16]}.tar"
        if not rootfs.exists():
            start = time.monotonic()
            _log(f"making the Debian {DEBIAN_SUITE} base with mmdebstrap ({', '.join(BASE_PACKAGES)})")
            partial = rootfs.with_suffix(".partial.tar")
            sources = _host_sources()
            _run(
                [
                    _tool("mmdebstrap"),
                    *_mmdebstrap_args(),
                    DEBIAN_SUITE,
                    partial,
                    *([sources] if sources else []),
                ],
                what="mmdebstrap",
                log=cache / "debian-base.log",
            )
            partial.rename(rootfs)
            for old in cache.glob("debian-base-*.tar"):
                if old != rootfs:
                    old.unlink()
            _log(
                f"base root filesystem made in {time.monotonic() - start:.0f}s ({rootfs.stat().st_size >> 20} MiB)"
            )
        buildah = _tool("buildah")
        container = _run([buildah, "from", "scratch"], what="buildah from scratch").strip()
        try:
            _run([buildah, "add", "--quiet", container, rootfs, "/"], what="buildah add")
            _run(
                [
                    buildah,
                    "config",
                    "--env",
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "--env",
                    "LANG=C.UTF-8",
                    "--cmd",
                    "python3",
                    "--label",
                    f"org.opencontainers.image.description=Debian {DEBIAN_SUITE} with its python3, made by mmdebstrap",
                    container,
                ],
                what="buildah config",
            )
            _run([buildah, "commit", "--quiet", container, ref], what="buildah commit")
        finally:
            subprocess.run([buildah, "rm", container], capture_output=True, check=False)
        _log(f"base image {ref} imported")
    return ref


# --- the images -------------------------------------------------------------------------------


def image_key(spec: ImageSpec, base: Base) -> str:
    """Every input of one image: a warm build only computes this and finds the tar."""
    files = [
        f"{spec.name}/Dockerfile",
        ".dockerignore",
        "uv.lock",
        "pyproject.toml",
        *(f"{m}/pyproject.toml" for m in MEMBERS),
        *_files_under(spec.source_dirs),
    ]
    base_id = base_key() if base == "debian" else "registry:default"
    header = f"image-rev={IMAGE_REV} name={spec.name} extras={','.join(spec.extras)} base={base}:{base_id}"
    return _sha256([header.encode(), *_hash_files(files)])


def _variant(spec: ImageSpec, base: Base) -> str:
    return "-".join((spec.name, *spec.extras, base))


def _archive_path(spec: ImageSpec, base: Base, key: str) -> Path:
    return cache_root() / f"{_variant(spec, base)}-{key[:16]}.tar"


def _tag_prefix(spec: ImageSpec, base: Base) -> str:
    """The tag's middle: extras, and `debian` for the offline base (after the version)."""
    return "".join(f"{part}-" for part in (*spec.extras, *(["debian"] if base == "debian" else [])))


def _ref(spec: ImageSpec, base: Base, key: str) -> str:
    return f"{spec.repository}:{_member_version(spec.name)}-{_tag_prefix(spec, base)}{key[:12]}"


def _builder_ref(ref: str) -> str:
    repository, _, tag = ref.rpartition(":")
    return f"{repository}-builder:{tag}"


def build_image(
    spec: ImageSpec, *, base: Base = "debian", engine: Engine = "buildah", rebuild: bool = False
) -> ImageArchive:
    """The image of `spec` as a docker-archive tar: from the cache, else built (under a lock).

    A build replaces the cache's tar and the engine's image of the same variant (other inputs)."""
    key = image_key(spec, base)
    path = _archive_path(spec, base, key)
    ref = _ref(spec, base, key)
    if path.exists() and not rebuild:
        return ImageArchive(path, ref)
    if base == "debian" and engine != "buildah":
        raise ImageBuildError("the Debian base lives in buildah's storage: build it with --engine buildah")
    with _locked(cache_root(), "images"):
        if path.exists() and not rebuild:
            return ImageArchive(path, ref)
        base_image = debian_base() if base == "debian" else None
        _build(spec, ref=ref, path=path, base_image=base_image, engine=engine)
        _prune(spec, base, key=key, engine=engine)
    return ImageArchive(path, ref, built=True)


def _prune(spec: ImageSpec, base: Base, *, key: str, engine: Engine) -> None:
    """Drop the tars, logs and engine images that earlier inputs of this variant left."""
    variant = _variant(spec, base)
    same_variant = re.compile(rf"{re.escape(variant)}-(?P<key>[0-9a-f]{{16}})(\..+)?")
    for old in cache_root().glob(f"{variant}-*"):
        match = same_variant.fullmatch(old.name)
        if match and match["key"] != key[:16]:
            old.unlink()
    keep = _ref(spec, base, key)
    if engine == "buildah":
        repositories = [spec.repository, _builder_ref(keep).rpartition(":")[0]]
        name_tag = "{{.Name}}:{{.Tag}}"
    else:
        repositories = [spec.repository]
        name_tag = "{{.Repository}}:{{.Tag}}"
    for repository in repositories:
        same_tag = re.compile(
            rf"{re.escape(repository)}:[^-]+-{re.escape(_tag_prefix(spec, base))}[0-9a-f]{{12}}"
        )
        listing = subprocess.run(
            [_tool(engine), "images", "--format", name_tag, "--filter", f"reference={repository}"],
            capture_output=True,
            text=True,
            check=False,
        )
        stale = [
            r
            for r in listing.stdout.split()
            if same_tag.fullmatch(r) and r.partition(":")[2] != keep.partition(":")[2]
        ]
        if stale:
            subprocess.run([_tool(engine), "rmi", *stale], capture_output=True, check=False)


def _build(spec: ImageSpec, *, ref: str, path: Path, base_image: str | None, engine: Engine) -> None:
    ensure_tools(engine)
    start = time.monotonic()
    created = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    build_args = {
        "VERSION": _member_version(spec.name),
        "REVISION": _git_revision(["uv.lock", *(f"{m}/pyproject.toml" for m in MEMBERS), *spec.source_dirs]),
        "CREATED": created,
    }
    if base_image is not None:
        build_args["BASE_IMAGE"] = base_image
    if spec.extras:
        build_args["EXTRAS"] = ",".join(spec.extras)
    arg_flags = [flag for k, v in build_args.items() for flag in ("--build-arg", f"{k}={v}")]
    log = path.with_suffix(".log")
    partial = path.with_suffix(".partial.tar")
    partial.unlink(missing_ok=True)
    _log(f"building {ref} ({engine}, base {base_image or 'from the Dockerfile'}); log: {log}")
    if engine == "buildah":
        buildah = _tool("buildah")
        # The builder's pip and uv verify TLS against the base's CA file: the host's, mounted over it,
        # carries whatever this host trusts (a TLS-inspecting proxy's CA, say). Not in any layer.
        trust = ["--volume", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"] if CA_BUNDLE.is_file() else []
        command: list[str | Path] = [
            buildah,
            "build",
            "--layers",
            "--force-rm",  # no working container left behind by a failed step
            "--network",
            "host",
            *trust,
            *arg_flags,
            "-f",
            spec.dockerfile,
        ]
        _run([*command, "-t", ref, REPO_ROOT], what=f"buildah build of {spec.name}", log=log)
        # The builder stage, named (all of it cached, a second): so it is no dangling image, and
        # the next build can drop it and its source layers while keeping the dependency layers.
        _run(
            [*command, "--target", "builder", "-t", _builder_ref(ref), REPO_ROOT],
            what="buildah build --target",
        )
        _run([buildah, "push", "--quiet", ref, f"docker-archive:{partial}:{ref}"], what="buildah push")
    else:
        docker = _tool("docker")
        _run(
            [docker, "build", *arg_flags, "-f", spec.dockerfile, "-t", ref, REPO_ROOT],
            what="docker build",
            log=log,
        )
        _run([docker, "save", "-o", partial, ref], what="docker save")
    partial.rename(path)
    _log(f"built {ref} in {time.monotonic() - start:.0f}s: {path} ({path.stat().st_size >> 20} MiB)")


@functools.cache
def runtime_image(extras: tuple[str, ...] = ()) -> ImageArchive:
    """The runtime's image on the offline Debian base (built on first use in a process)."""
    return build_image(ImageSpec("runtime", extras))


@functools.cache
def operator_image() -> ImageArchive:
    """The operator's image on the offline Debian base (built on first use in a process)."""
    return build_image(OPERATOR)


# --- reading and running an archive -----------------------------------------------------------


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image's config (OCI/Docker `config`) that the tests look at."""

    user: str
    entrypoint: list[str]
    cmd: list[str]
    env: list[str]
    working_dir: str
    exposed_ports: list[str]
    labels: dict[str, str]


def _manifest(archive: tarfile.TarFile) -> dict[str, object]:
    handle = archive.extractfile("manifest.json")
    assert handle is not None
    manifests = json.load(handle)
    if not isinstance(manifests, list) or len(manifests) != 1 or not isinstance(manifests[0], dict):
        raise ImageBuildError("expected a docker-archive of one image (its manifest.json)")
    manifest: dict[str, object] = manifests[0]
    return manifest


def read_config(path: Path) -> tuple[ImageConfig, list[str]]:
    """An archive's image config and the RepoTags it carries."""
    with tarfile.open(path) as archive:
        manifest = _manifest(archive)
        config_name = manifest["Config"]
        assert isinstance(config_name, str)
        handle = archive.extractfile(config_name)
        assert handle is not None
        config = json.load(handle)["config"]
        tags = manifest.get("RepoTags") or []
    assert isinstance(tags, list)
    return (
        ImageConfig(
            user=config.get("User", ""),
            entrypoint=config.get("Entrypoint") or [],
            cmd=config.get("Cmd") or [],
            env=config.get("Env") or [],
            working_dir=config.get("WorkingDir", ""),
            exposed_ports=sorted(config.get("ExposedPorts") or {}),
            labels=config.get("Labels") or {},
        ),
        [str(t) for t in tags],
    )


def _inside(root: Path, path: Path) -> bool:
    return os.path.realpath(path).startswith(os.path.realpath(root) + os.sep) or path == root


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def unpack(path: Path, root: Path) -> None:
    """Unpack an archive's layers, in order and applying whiteouts, into the rootfs `root`.

    Owners and modes are kept (run as root). Nothing is written through a symlink: an existing entry
    is removed before a layer's own is extracted, and parents must resolve inside `root`.
    """
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path) as archive:
        layers = _manifest(archive)["Layers"]
        assert isinstance(layers, list)
        for name in layers:
            handle = archive.extractfile(str(name))
            assert handle is not None
            with tarfile.open(fileobj=handle) as layer:
                members = layer.getmembers()
                for member in members:  # whiteouts first: they apply to the layers below
                    parent, _, base = member.name.rstrip("/").rpartition("/")
                    if not base.startswith(".wh."):
                        continue
                    directory = root / parent
                    if not _inside(root, directory):
                        raise ImageBuildError(f"{path}: whiteout outside the root: {member.name}")
                    if base == ".wh..wh..opq":
                        for child in directory.iterdir() if directory.is_dir() else ():
                            _remove(child)
                    else:
                        _remove(directory / base.removeprefix(".wh."))
                for member in members:
                    if member.name.rpartition("/")[2].startswith(".wh."):
                        continue
                    target = root / member.name
                    if not _inside(root, target.parent):
                        raise ImageBuildError(f"{path}: entry outside the root: {member.name}")
                    if os.path.lexists(target) and not (
                        member.isdir() and target.is_dir() and not target.is_symlink()
                    ):
                        _remove(target)
                    layer.extract(member, root, numeric_owner=True, filter="fully_trusted")


@dataclass(frozen=True)
class RunResult:
    returncode: int
    stdout: str
    stderr: str


def run_in_rootfs(
    root: Path,
    config: ImageConfig,
    args: Sequence[str] | None = None,
    *,
    workdir: Path,
    name: str,
    timeout: float = 120,
) -> RunResult:
    """Run the image's entrypoint (or `args`) with runc, as the pod does: as the image's user, no
    capabilities, a read-only root filesystem, a tmpfs /tmp, and a network namespace of its own
    with no interface up (network off)."""
    runc = _tool("runc")
    user, _, group = config.user.partition(":")
    if not user.isdigit() or not (group or user).isdigit():
        raise ImageBuildError(f"the image's user must be numeric uid:gid, not {config.user!r}")
    bundle = workdir / f"bundle-{name}"
    bundle.mkdir(parents=True, exist_ok=True)
    spec = _runc_spec(
        root,
        args=list(args) if args is not None else [*config.entrypoint, *config.cmd],
        env=config.env,
        cwd=config.working_dir or "/",
        uid=int(user),
        gid=int(group or user),
    )
    (bundle / "config.json").write_text(json.dumps(spec, indent=2))
    state = workdir / "runc-state"
    container = f"agentplane-image-test-{name}-{os.getpid()}"
    try:
        result = subprocess.run(
            [runc, "--root", str(state), "run", "--bundle", str(bundle), container],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    finally:
        subprocess.run(
            [runc, "--root", str(state), "delete", "--force", container], capture_output=True, check=False
        )
    return RunResult(result.returncode, result.stdout, result.stderr)


def _runc_spec(
    root: Path, *, args: list[str], env: list[str], cwd: str, uid: int, gid: int
) -> dict[str, object]:
    no_caps: list[str] = []
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": gid, "additionalGids": [gid]},
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": dict.fromkeys(
                ("bounding", "effective", "inheritable", "permitted", "ambient"), no_caps
            ),
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096}],
            "noNewPrivileges": True,
        },
        "root": {"path": str(root), "readonly": True},
        "hostname": "agentplane-image-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            },
            # the pod's emptyDir at /tmp
            {
                "destination": "/tmp",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=1777", "size=65536k"],
            },
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }


# --- command line -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="images.py", description="Build the runtime and operator images (cached docker-archive tars)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build (or find in the cache) the images; prints their tars")
    build.add_argument("images", nargs="*", metavar="runtime|operator", help="both when none is named")
    build.add_argument(
        "--base",
        choices=["debian", "python"],
        default="debian",
        help="debian: offline, a base made by mmdebstrap; python: the Dockerfiles' python:3.11-slim (a registry)",
    )
    build.add_argument("--extras", default="", help="the runtime's extras, comma-separated (dense)")
    build.add_argument("--engine", choices=["buildah", "docker", "auto"], default="auto")
    build.add_argument("--rebuild", action="store_true", help="build even when the cache has the image")
    commands.add_parser("base", help="make the offline Debian base image; prints its ref")
    args = parser.parse_args(argv)
    if args.command == "build" and not set(args.images) <= {"runtime", "operator"}:
        parser.error(f"unknown image(s): {' '.join(sorted(set(args.images) - {'runtime', 'operator'}))}")
    try:
        if args.command == "base":
            print(debian_base())
            return 0
        engine: Engine = (
            ("docker" if args.base == "python" and docker_works() else "buildah")
            if args.engine == "auto"
            else args.engine
        )
        extras = tuple(e for e in args.extras.split(",") if e)
        for name in args.images or ["runtime", "operator"]:
            spec = ImageSpec(name, extras if name == "runtime" else ())
            archive = build_image(spec, base=args.base, engine=engine, rebuild=args.rebuild)
            print(f"{archive.path}\t{archive.ref}\t{archive.size / 2**20:.0f} MiB")
    except ImageBuildError as exc:
        print(f"images: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
