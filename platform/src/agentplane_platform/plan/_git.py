"""The base of a plan from Git: which commit, and its spec tree in a temporary directory.

Only `git rev-parse`, `merge-base`, `ls-tree` and `archive` are used: no worktree, no checkout,
nothing in the repository is written.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path

from ._model import Base


class GitError(Exception):
    """Git could not answer (not a repository, an unknown ref, ...): the message says which."""


def _git(repo: Path, *args: str) -> bytes:
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=False)
    except FileNotFoundError:
        raise GitError("git is not installed (agentplane plan reads the base commit with git)") from None
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip() or f"git {' '.join(args)} failed"
        raise GitError(message)
    return done.stdout


def _verify(repo: Path, ref: str) -> str | None:
    try:
        return _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").decode().strip()
    except GitError:
        return None


def repository_root(where: Path) -> Path:
    """The top of the Git working tree that holds `where`."""
    start = where if where.is_dir() else where.parent
    try:
        return Path(_git(start, "rev-parse", "--show-toplevel").decode().strip())
    except GitError as exc:
        raise GitError(f"{where}: not in a Git repository ({exc})") from None


def resolve_base(repo: Path, ref: str | None) -> Base:
    """`--base REF` as given, else the merge base of HEAD with the default branch: `origin/HEAD`
    when it exists, else `main`, else `master`."""
    if ref is not None:
        commit = _verify(repo, ref)
        if commit is None:
            raise GitError(f"--base {ref}: no such commit")
        return Base(ref, commit, f"--base {ref}")
    if _verify(repo, "HEAD") is None:
        raise GitError("HEAD has no commit yet: there is nothing to compare with (commit a base first)")
    for branch in ("origin/HEAD", "main", "master"):
        if _verify(repo, branch) is not None:
            commit = _git(repo, "merge-base", "HEAD", branch).decode().strip()
            return Base(branch, commit, f"merge base of HEAD and {branch}")
    raise GitError("no default branch (origin/HEAD, main or master): name the base with --base REF")


def extract(repo: Path, commit: str, paths: Sequence[Path], into: Path) -> list[Path]:
    """Write the base commit's version of `paths` (relative to the repository) under `into`; the
    paths as they are there (a path the commit does not have is left out, its tree being empty)."""
    present = [
        p for p in paths if _git(repo, "ls-tree", "--name-only", commit, "--", p.as_posix() or ".").strip()
    ]
    if present:
        data = _git(repo, "archive", "--format=tar", commit, "--", *(p.as_posix() for p in present))
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            archive.extractall(into, filter="data")
    return [into / p for p in paths]


def relative_to_repository(repo: Path, paths: Sequence[Path]) -> list[Path]:
    """The paths relative to the repository root (they must be inside it)."""
    relative = []
    for path in paths:
        absolute = path.resolve()
        try:
            relative.append(absolute.relative_to(repo.resolve()))
        except ValueError:
            raise GitError(f"{path}: outside the repository at {repo}") from None
    return relative
