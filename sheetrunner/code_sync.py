"""A job's code on the hosts: `[jobs.NAME] sync = "PATH"`.

The local directory is read as a list of files (what git tracks plus untracked files it
does not ignore, in a git work tree; else everything but what `.sheetrunnerignore` names),
each hashed by content; the version's hash is the hash of that list. A host keeps versions
under `<root>/<namespace>/code/<hash>/` (sheetrunner/remote/protocol.py) and file contents
in an object store by their hash, so a new version uploads only the files the host lacks,
over the host's existing connection. A version is built in a temporary directory and renamed
into place by the agent: a run never starts in a half-uploaded tree.

Reading the tree is cheap enough for every cycle: a file's hash is kept while its size and
mtime stay the same, so only edited files are read again.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .errors import TransportError
from .pool.hosts import HostAgent
from .remote.protocol import FILE_MODE, code_dir, code_objects

log = logging.getLogger(__name__)

IGNORE_FILE = ".sheetrunnerignore"
GIT_TIMEOUT_S = 30.0
UPLOAD_BATCH = 500  # blobs asked about per agent call


@dataclass(frozen=True)
class CodeFile:
    path: str  # relative, "/"-separated
    blob: str  # sha256 of the content
    executable: bool


@dataclass(frozen=True)
class CodeVersion:
    """One state of a synced directory: its files, their content hash, and where git says it
    came from (commit, and whether the tree differs from it)."""

    hash: str
    files: tuple[CodeFile, ...]
    commit: str = ""
    dirty: bool = False

    @property
    def label(self) -> str:
        """What the `code` column shows: `a1b2c3d`, `a1b2c3d+dirty`, or the content hash's
        first 12 digits outside git."""
        if not self.commit:
            return self.hash[:12]
        return self.commit[:7] + ("+dirty" if self.dirty else "")

    def spec(self) -> dict[str, object]:
        """What a run records of its code (in its launch spec, on the host)."""
        return {"hash": self.hash, "commit": self.commit, "dirty": self.dirty, "label": self.label}


class BlobSource(Protocol):
    """Where a version's file contents are read from: the local tree (its current version)
    or the state directory's store of every version kept (code_versions.py, a pinned one)."""

    def read(self, blob: str, files: Iterable[CodeFile]) -> bytes: ...


class LocalTree:
    """A synced directory on the daemon's machine; `snapshot()` reads its current version."""

    def __init__(self, root: Path, exclude: Iterable[Path] = ()):
        self.root = Path(root).resolve()
        self.exclude = {Path(p).resolve() for p in exclude}
        self._hashes: dict[str, tuple[int, int, str]] = {}  # path -> (size, mtime_ns, blob)

    def snapshot(self) -> CodeVersion:
        git = _git_info(self.root)
        names = _git_files(self.root) if git is not None else _walk(self.root)
        files = []
        for name in sorted(set(names)):
            found = self._file(name)
            if found is not None:
                files.append(found)
        digest = hashlib.sha256()
        for f in files:
            digest.update(f"{f.path}\0{f.blob}\0{int(f.executable)}\n".encode())
        commit, dirty = git if git is not None else ("", False)
        return CodeVersion(digest.hexdigest(), tuple(files), commit, dirty)

    def read(self, blob: str, files: Iterable[CodeFile]) -> bytes:
        path = next(f.path for f in files if f.blob == blob)
        return (self.root / path).read_bytes()

    def _file(self, name: str) -> CodeFile | None:
        path = self.root / name
        try:
            st = path.stat()
        except OSError:
            return None  # tracked but deleted, or a broken link
        if not path.is_file() or any(_inside(path, e) for e in self.exclude):
            return None
        cached = self._hashes.get(name)
        if cached is not None and cached[:2] == (st.st_size, st.st_mtime_ns):
            blob = cached[2]
        else:
            blob = hashlib.sha256(path.read_bytes()).hexdigest()
            self._hashes[name] = (st.st_size, st.st_mtime_ns, blob)
        return CodeFile(name, blob, bool(st.st_mode & 0o100))


def _inside(path: Path, other: Path) -> bool:
    resolved = path.resolve()
    return resolved == other or other in resolved.parents


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, timeout=GIT_TIMEOUT_S, check=False
    )


def _git_info(root: Path) -> tuple[str, bool] | None:
    """(commit, dirty) when `root` is in a git work tree, else None."""
    try:
        inside = _git(root, "rev-parse", "--is-inside-work-tree")
    except (OSError, subprocess.TimeoutExpired):
        return None
    if inside.returncode != 0 or inside.stdout.strip() != b"true":
        return None
    head = _git(root, "rev-parse", "HEAD")
    commit = head.stdout.decode().strip() if head.returncode == 0 else ""
    status = _git(root, "status", "--porcelain", "--untracked-files=normal", "--", ".")
    return commit, bool(status.stdout.strip())


def _git_files(root: Path) -> list[str]:
    found = _git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    return [n for n in found.stdout.decode("utf-8", "surrogateescape").split("\0") if n]


def _walk(root: Path) -> list[str]:
    """Every file under `root` but those `.sheetrunnerignore` names (glob patterns, one a
    line, matched against the relative path and the name; `dir/` names a directory)."""
    patterns = _ignore_patterns(root / IGNORE_FILE)
    found = []
    for top, dirs, files in os.walk(root):
        rel_top = os.path.relpath(top, root)
        rel_top = "" if rel_top == "." else rel_top + "/"
        dirs[:] = sorted(d for d in dirs if not ignored(rel_top + d, patterns, directory=True))
        found += [rel_top + f for f in files if not ignored(rel_top + f, patterns)]
    return found


def _ignore_patterns(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def ignored(relpath: str, patterns: Iterable[str], directory: bool = False) -> bool:
    """Whether `.sheetrunnerignore` patterns leave a path out (pure; for the walk and tests)."""
    name = relpath.rsplit("/", 1)[-1]
    for pattern in patterns:
        if pattern.endswith("/"):
            if directory and (fnmatch.fnmatch(name, pattern[:-1]) or relpath == pattern[:-1]):
                return True
            continue
        if fnmatch.fnmatch(relpath, pattern.lstrip("/")) or fnmatch.fnmatch(name, pattern):
            return True
    return False


# -- putting a version on a host -------------------------------------------------------------


class CodeUploader:
    """Makes sure hosts hold code versions; remembers which ones each host has (one agent
    call per host and version, then none). `uploaded` counts the files sent, per host."""

    def __init__(self) -> None:
        self.present: set[tuple[str, str]] = set()  # (host, version hash)
        self.uploaded: dict[str, int] = {}

    def where(self, agent: HostAgent, version: CodeVersion) -> str:
        """The version's directory on the host (`~` expanded there)."""
        return code_dir(agent.ns_root(), version.hash)

    def ensure(self, agent: HostAgent, version: CodeVersion, tree: BlobSource) -> str:
        """The version's directory on the host, uploading what it lacks. Raises
        TransportError when the host cannot be reached or refuses."""
        where = self.where(agent, version)
        if (agent.name, version.hash) in self.present:
            return where
        blobs = sorted({f.blob for f in version.files})
        need = agent.command(
            "code-need", {"version": version.hash, "blobs": blobs}, with_host=False
        )
        if not need.get("present"):
            missing = [str(b) for b in need.get("missing") or []]
            objects = code_objects(agent.ns_root())
            for blob in missing:
                if blob not in blobs:
                    raise TransportError(f"{agent.name}: asked for an unknown blob {blob!r}")
                agent.transport.put_file(
                    f"{objects}/{blob}", tree.read(blob, version.files), FILE_MODE
                )
            self.uploaded[agent.name] = self.uploaded.get(agent.name, 0) + len(missing)
            files = [[f.path, f.blob, f.executable] for f in version.files]
            agent.command("code-build", {"version": version.hash, "files": files}, with_host=False)
            log.info(
                "host=%s code %s uploaded (%d of %d files sent)",
                agent.name,
                version.label,
                len(missing),
                len(version.files),
            )
        self.present.add((agent.name, version.hash))
        return where
