"""Scripts shipped to hosts. They need only python3's standard library there."""

from __future__ import annotations

import hashlib
from importlib import resources


def agent_source() -> bytes:
    """The agent script's bytes, as uploaded to every host."""
    return resources.files(__name__).joinpath("agent.py").read_bytes()


def version() -> str:
    """A hash of everything shipped to hosts: changed code lands under new names."""
    return hashlib.sha256(agent_source() + job_library_source()).hexdigest()[:12]


def agent_name() -> str:
    """File name on the host, versioned by content: a changed agent is uploaded again."""
    return f"agent-{version()}.py"


def job_library_source() -> bytes:
    """sheetrunner.job, standard library only: shipped to hosts that lack sheetrunner."""
    return resources.files("sheetrunner").joinpath("job.py").read_bytes()
