"""What ships to hosts: the agent as a zipapp, and the job library. Standard library only there.

Both are built from this package's own files, so a host always runs exactly
the code the daemon was installed with. Their names carry a hash of all of
it, so changed code lands beside the old under a new name and a host that
already has this version is never written to again.
"""

from __future__ import annotations

import functools
import hashlib
import io
import zipfile
from importlib import resources

ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest a zip can hold: the same bytes on every build
PROTOCOL = "sheetrunner/remote/protocol.py"
GPU_CLAIMS = "sheetrunner/remote/gpu_claims.py"  # the agent's GPU claims (docs/shared-gpus.md)
CODESTORE = "sheetrunner/remote/codestore.py"
SLURM_AGENT = "sheetrunner/remote/slurm_agent.py"


def _read(package: str, name: str) -> bytes:
    return resources.files(package).joinpath(name).read_bytes()


def agent_source() -> bytes:
    """The agent script's bytes: the zipapp's __main__.py."""
    return _read(__name__, "agent.py")


def protocol_source() -> bytes:
    return _read(__name__, "protocol.py")


def job_library_source() -> bytes:
    """sheetrunner.job, standard library only: shipped to hosts that lack sheetrunner."""
    return _read("sheetrunner", "job.py")


def _packages() -> dict[str, bytes]:
    """Empty package markers, so the protocol imports as sheetrunner.remote.protocol on the host
    exactly as it does here."""
    return {"sheetrunner/__init__.py": b"", "sheetrunner/remote/__init__.py": b""}


def agent_files() -> dict[str, bytes]:
    """The zipapp's members by name."""
    return {
        "__main__.py": agent_source(),
        **_packages(),
        PROTOCOL: protocol_source(),
        GPU_CLAIMS: _read(__name__, "gpu_claims.py"),
        CODESTORE: _read(__name__, "codestore.py"),
        SLURM_AGENT: _read(__name__, "slurm_agent.py"),
    }


def job_library_files() -> dict[str, bytes]:
    """The job library's files, relative to <root>/lib/<version>/ (put on PYTHONPATH)."""
    return {**_packages(), "sheetrunner/job.py": job_library_source(), PROTOCOL: protocol_source()}


@functools.cache
def agent_zipapp() -> bytes:
    """The agent as a zipapp built in memory: fixed timestamps and order, uncompressed, so the
    same sources give the same bytes on every daemon."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in sorted(agent_files().items()):
            info = zipfile.ZipInfo(name, ZIP_TIME)
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return buffer.getvalue()


@functools.cache
def version() -> str:
    """A hash of everything shipped to hosts (agent, protocol, job library): changed code lands
    under new names."""
    digest = hashlib.sha256()
    for group in (agent_files(), job_library_files()):
        for name, data in sorted(group.items()):
            digest.update(b"%s\0%d\0" % (name.encode(), len(data)) + data)
    return digest.hexdigest()[:12]


def agent_name() -> str:
    """File name on the host, versioned by content: a changed agent is uploaded again."""
    return f"agent-{version()}.pyz"
