"""Every code version the daemon synced, kept in its state directory: the `pin` column.

A row's `pin` cell names a version as the `code` column shows it (`a1b2c3d`,
`a1b2c3d+dirty`, or a prefix of at least 7 hex digits of the content hash); its next
attempts run that version instead of the current one. So that any version ever synced can
be put on any host later, even after the local tree changed, each one is kept here the
first time it is read, content-addressed like on the hosts:

    <state_dir>/code/objects/<blob>          file contents, written once, atomically
    <state_dir>/code/versions/<hash>.json    {hash, commit, dirty, label, job, files}

`sheetrunner gc` (and the hourly tidy) drops the versions no run in the store uses and no
job has as its current code, then the blobs no kept version names (`prune`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from .atomic import write_atomic
from .code_sync import BlobSource, CodeFile, CodeVersion
from .model import Experiment

log = logging.getLogger(__name__)

MIN_PREFIX = 7
FRESH_S = 3600.0  # prune leaves younger unnamed blobs: a version may be being kept
_HEX = re.compile(r"[0-9a-f]+")


class PinError(ValueError):
    """A `pin` cell that names no kept version, or more than one: the message says what to
    type instead."""


@dataclass(frozen=True)
class KeptVersion:
    """A kept version's manifest without its file list: what a pin is matched against."""

    hash: str
    label: str
    commit: str = ""
    job: str = ""
    tree: str = ""  # the local directory it was read from ("": not recorded)


def match_pin(pin: str, kept: Iterable[KeptVersion]) -> str:
    """The content hash of the one kept version `pin` names: its label exactly (`a1b2c3d`,
    `a1b2c3d+dirty`), else a prefix of its content hash (at least 7 hex digits). Pure.
    Raises PinError saying what to type when none or several match."""
    text = pin.strip()
    versions = list(kept)
    found = {v.hash for v in versions if v.label == text}
    if not found and len(text) >= MIN_PREFIX and _HEX.fullmatch(text.lower()):
        found = {v.hash for v in versions if v.hash.startswith(text.lower())}
    if len(found) == 1:
        return found.pop()
    if found:
        shown = ", ".join(sorted(h[:12] for h in found))
        raise PinError(
            f"pin {text!r} matches {len(found)} code versions ({shown}); "
            "type more digits of the content hash"
        )
    raise PinError(
        f"pin {text[:40]!r} matches no code version this daemon has run; "
        "copy a value from the code column"
    )


class VersionStore:
    """The versions kept under `<state_dir>/code/`; `read` serves their blobs to the
    uploader like a local tree does."""

    def __init__(self, state_dir: Path):
        self.root = Path(state_dir) / "code"
        self.objects = self.root / "objects"
        self.manifests = self.root / "versions"
        self._parsed: dict[str, KeptVersion] = {}  # manifest file name -> what kept() read

    def keep(self, version: CodeVersion, tree: BlobSource, job: str, where: str = "") -> bool:
        """Keep `version` (read from `tree`, the local directory `where`) unless it already
        is. False when a file changed while it was read: it is kept on a later cycle, from a
        consistent read."""
        if self._path(version.hash).exists():  # a stat a cycle: `gc` by hand may have pruned it
            return True
        self.objects.mkdir(parents=True, exist_ok=True)
        self.manifests.mkdir(parents=True, exist_ok=True)
        for blob in sorted({f.blob for f in version.files}):
            target = self.objects / blob
            if target.exists():
                continue
            data = tree.read(blob, version.files)
            if hashlib.sha256(data).hexdigest() != blob:
                log.info("code %s changed while kept; kept next cycle", version.label)
                return False
            write_atomic(target, data, 0o600)
        manifest = {
            "hash": version.hash,
            "commit": version.commit,
            "dirty": version.dirty,
            "label": version.label,
            "job": job,
            "tree": where,
            "files": [[f.path, f.blob, f.executable] for f in version.files],
        }
        write_atomic(self._path(version.hash), json.dumps(manifest).encode(), 0o600)
        return True

    def kept(self) -> list[KeptVersion]:
        """The kept versions (an unreadable manifest is skipped). A manifest is parsed once:
        pins are looked up every cycle, and a version's manifest never changes."""
        try:
            names = sorted(p.name for p in self.manifests.glob("*.json"))
        except OSError:
            names = []
        self._parsed = {n: v for n, v in self._parsed.items() if n in names}
        for name in names:
            if name not in self._parsed:
                data = self._manifest(self.manifests / name)
                if data is not None:
                    self._parsed[name] = KeptVersion(
                        str(data["hash"]),
                        str(data.get("label") or ""),
                        str(data.get("commit") or ""),
                        str(data.get("job") or ""),
                        str(data.get("tree") or ""),
                    )
        return list(self._parsed.values())

    def find(self, pin: str, tree: str = "") -> CodeVersion:
        """The kept version a `pin` cell names, among those read from the local directory
        `tree` (all when ""): a pin never runs another job's code. Raises PinError (see
        match_pin)."""
        kept = [k for k in self.kept() if not tree or not k.tree or k.tree == tree]
        return self.load(match_pin(pin, kept))

    def load(self, content_hash: str) -> CodeVersion:
        """A kept version, with its file list. Raises PinError when it is not kept (any
        more)."""
        try:
            data = json.loads(self._path(content_hash).read_text())
            files = tuple(CodeFile(str(p), str(b), bool(e)) for p, b, e in data["files"])
            return CodeVersion(
                str(data["hash"]), files, str(data.get("commit") or ""), bool(data.get("dirty"))
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PinError(
                f"code version {content_hash[:12]} is no longer kept ({exc}); "
                "copy a value from the code column"
            ) from exc

    def read(self, blob: str, files: Iterable[CodeFile]) -> bytes:
        return (self.objects / blob).read_bytes()

    def prune(self, keep: Iterable[str]) -> int:
        """Drop the kept versions whose hash is not in `keep`, then the blobs no remaining
        version names. Returns the bytes freed."""
        wanted = set(keep)
        freed = 0
        names: set[str] = set()
        for data in self._manifests():
            path = self._path(str(data["hash"]))
            if data["hash"] in wanted:
                names.update(str(b) for _, b, _ in data.get("files") or [])
                continue
            freed += _unlink(path)
        if self.objects.is_dir():
            recent = time.time() - FRESH_S  # a blob of a version being kept right now
            for blob in self.objects.iterdir():
                if blob.name not in names and _mtime(blob) < recent:
                    freed += _unlink(blob)
        return freed

    def _path(self, content_hash: str) -> Path:
        if not _HEX.fullmatch(content_hash):
            raise PinError(f"not a code version hash: {content_hash[:20]!r}")
        return self.manifests / f"{content_hash}.json"

    def _manifests(self) -> list[dict]:
        if not self.manifests.is_dir():
            return []
        found = [self._manifest(p) for p in sorted(self.manifests.glob("*.json"))]
        return [d for d in found if d is not None]

    @staticmethod
    def _manifest(path: Path) -> dict | None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if isinstance(data, dict) and _HEX.fullmatch(str(data.get("hash"))):
            return data
        return None


def resolve_pins(
    experiments: list[Experiment], synced: Mapping[str, str], store: VersionStore
) -> tuple[list[Experiment], dict[int, CodeVersion | str]]:
    """The rows with a `pin` cell: the version each names, or why none (by sheet row); a row
    whose pin names none is made invalid with the fix (a run that already launched is left
    as it is by the core, and never launched again from the wrong code: see Daemon._launch).
    A pin on a job without `sync` is invalid too. `synced`: job -> its local directory."""
    pins: dict[int, CodeVersion | str] = {}
    found: dict[str, CodeVersion | PinError] = {}
    out = []
    for exp in experiments:
        if exp.pin is None or exp.error or exp.is_sweep:
            out.append(exp)
            continue
        if exp.job not in synced:
            error = f"pin is only for jobs with sync; job {exp.job!r} has none: empty the pin cell"
            pins[exp.row] = error
            out.append(replace(exp, error=error))
            continue
        wish = f"{synced[exp.job]}\0{exp.pin}"
        if wish not in found:
            try:
                found[wish] = store.find(exp.pin, synced[exp.job])
            except PinError as exc:
                found[wish] = exc
        version = found[wish]
        if isinstance(version, PinError):
            pins[exp.row] = str(version)
            out.append(replace(exp, error=str(version)))
            continue
        pins[exp.row] = version
        out.append(exp)
    return out, pins


def code_for_launch(
    current: CodeVersion | None, pin: CodeVersion | str | None
) -> CodeVersion | None:
    """The code an attempt launches from: the version its row pins, else the job's current
    one (None: the job is not synced). Raises PinError when the row's pin names none: a
    run is never launched from code its row did not ask for. Pure."""
    if isinstance(pin, str):
        raise PinError(pin)
    return pin or current


def _unlink(path: Path) -> int:
    try:
        size = path.stat().st_size
        path.unlink()
    except OSError:
        return 0
    return size


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return float("inf")
