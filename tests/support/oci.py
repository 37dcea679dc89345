"""Container images from local files, written in pure Python (no Docker, no registry).

:func:`write_image` writes a single-layer image as a ``docker save`` archive, the format
``ctr -n k8s.io images import`` (and ``docker load``, ``podman load``, ``skopeo``) reads::

    ref = write_image(
        tmp / "agnhost.tar",
        "agentplane.local/agnhost:v1",
        files={"/agnhost": bin_dir / "agnhost"},
        entrypoint=["/agnhost"],
    )
    node.load_image(tmp / "agnhost.tar")   # support.node; pods then use image=ref, never pulled

Meant for static binaries: the layer holds exactly the files given (plus their parent
directories and the directories asked for), owned by root, with fixed timestamps, so the same
inputs give the same image digest.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

DEFAULT_USER = "65532:65532"
"""Numeric uid:gid the image runs as unless told otherwise (no /etc/passwd needed)."""


def write_image(
    path: Path,
    ref: str,
    *,
    files: Mapping[str, Path | bytes],
    entrypoint: Sequence[str],
    cmd: Sequence[str] = (),
    user: str = DEFAULT_USER,
    env: Mapping[str, str] | None = None,
    working_dir: str = "/",
    directories: Mapping[str, int] | None = None,
    architecture: str = "amd64",
) -> str:
    """Write a one-layer image to ``path`` (a docker-archive tarball) and return ``ref``.

    ``files`` maps absolute paths in the image to a local file (copied with its mode bits, so
    keep binaries executable) or to literal bytes (mode 0644). ``directories`` maps extra
    absolute directory paths to their mode (e.g. ``{"/tmp": 0o1777}``). ``ref`` is the name the
    image is imported under (``registry/name:tag``); ``entrypoint``, ``cmd``, ``user``, ``env``
    and ``working_dir`` become the image config (``PATH`` is added to ``env`` unless given).
    """
    if ":" not in ref.rsplit("/", 1)[-1]:
        raise ValueError(f"image reference {ref!r}: expected name:tag")
    layer = _layer(files, directories or {})
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    environment = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", **(env or {})}
    config = {
        "architecture": architecture,
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Entrypoint": list(entrypoint),
            "Cmd": list(cmd) or None,
            "User": user,
            "Env": [f"{k}={v}" for k, v in environment.items()],
            "WorkingDir": working_dir,
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "tests/support/oci.py"}],
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    layer_name = diff_id.removeprefix("sha256:") + "/layer.tar"
    manifest = [{"Config": config_name, "RepoTags": [ref], "Layers": [layer_name]}]

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as archive:
        _add_bytes(archive, config_name, config_bytes)
        _add_bytes(archive, layer_name, layer)
        _add_bytes(archive, "manifest.json", json.dumps(manifest).encode())
        _add_bytes(archive, "repositories", json.dumps(_repositories(ref, diff_id)).encode())
    tmp.replace(path)
    return ref


def _layer(files: Mapping[str, Path | bytes], directories: Mapping[str, int]) -> bytes:
    """An uncompressed layer tarball holding ``files`` and ``directories`` (sorted, reproducible)."""
    dirs: dict[PurePosixPath, int] = {}
    entries: dict[PurePosixPath, Path | bytes] = {}
    for name, source in files.items():
        target = _absolute(name)
        entries[target] = source
        for parent in target.parents:
            if parent != PurePosixPath("/"):
                dirs.setdefault(parent, 0o755)
    for name, mode in directories.items():
        dirs[_absolute(name)] = mode
    clash = set(dirs) & set(entries)
    if clash:
        raise ValueError(f"both a file and a directory: {sorted(map(str, clash))}")

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in sorted(dirs):
            info = _info(str(directory)[1:], dirs[directory])
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for target in sorted(entries):
            source = entries[target]
            if isinstance(source, bytes):
                info = _info(str(target)[1:], 0o644)
                info.size = len(source)
                tar.addfile(info, io.BytesIO(source))
            else:
                info = _info(str(target)[1:], source.stat().st_mode & 0o7777)
                info.size = source.stat().st_size
                with source.open("rb") as handle:
                    tar.addfile(info, handle)
    return buffer.getvalue()


def _absolute(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if not path.is_absolute() or ".." in path.parts or path == PurePosixPath("/"):
        raise ValueError(f"image path {name!r}: expected an absolute path below /, without '..'")
    return path


def _info(name: str, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = _info(name, 0o644)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def _repositories(ref: str, diff_id: str) -> dict[str, dict[str, str]]:
    """The legacy ``repositories`` file (repo -> tag -> top layer id) older readers expect."""
    repo, tag = ref.rsplit(":", 1)
    return {repo: {tag: diff_id.removeprefix("sha256:")}}
