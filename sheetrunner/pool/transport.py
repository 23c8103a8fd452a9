"""The interface every transport implements: run a command on a host, put a file there.

A transport does IO only. Commands are argv lists, never shell strings built
from user input: the SSH transport quotes each item with `shlex.join`, the
local one runs the list directly. Nothing a sheet cell holds is ever passed
here: row values travel to the host inside a JSON document on stdin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class CommandResult:
    exit_code: int
    stdout: bytes
    stderr: bytes


class Transport(Protocol):
    """How sheetrunner reaches one host."""

    host: str  # the host's name from the config

    def run(
        self, argv: Sequence[str], *, stdin: bytes = b"", timeout_s: float = 30.0
    ) -> CommandResult:
        """Run argv on the host, feed it stdin, wait for it to end.

        Raises HostUnreachable when the host cannot be reached (or the
        connection died), CommandTimeout when the deadline passes. A command
        that ran and failed is a CommandResult with a non-zero exit_code.
        """
        ...

    def put_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write a file atomically (temp file, rename); a leading `~/` is the remote home."""
        ...

    def close(self) -> None:
        """Release the connection; the next call reconnects."""
        ...
