"""The local transport: the daemon's own machine, reached through subprocesses.

It obeys the same interface as the SSH transport, so the embedded default
(a workbook and this machine) runs exactly the code path a real pool runs,
minus the network.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from ..atomic import write_atomic
from ..errors import CommandTimeout, HostUnreachable
from .transport import CommandResult


class LocalTransport:
    """Runs commands on this machine."""

    def __init__(self, host: str = "local"):
        self.host = host

    def run(
        self, argv: Sequence[str], *, stdin: bytes = b"", timeout_s: float = 30.0
    ) -> CommandResult:
        try:
            done = subprocess.run(
                list(argv),
                input=stdin,
                capture_output=True,
                timeout=timeout_s,
                check=False,
                # Its own session: a Ctrl-C typed in the daemon's terminal goes to the whole
                # foreground process group, and must not kill a probe in flight (its host
                # would look unreachable and its healthy runs lost) or a launch half-way.
                start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            raise CommandTimeout(
                f"{self.host}: {argv[0]} did not finish within {timeout_s:g}s"
            ) from None
        except OSError as exc:
            raise HostUnreachable(f"{self.host}: could not run {argv[0]}: {exc}") from None
        return CommandResult(done.returncode, done.stdout, done.stderr)

    def put_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        target = Path(os.path.expanduser(path))
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, data, mode)

    def close(self) -> None:
        """Nothing to release."""
