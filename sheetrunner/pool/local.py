"""The local transport: the daemon's own machine, reached through subprocesses.

It obeys the same interface as the SSH transport, so the embedded default
(a workbook and this machine) runs exactly the code path a real pool runs,
minus the network.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from ..atomic import write_atomic
from ..errors import CommandTimeout, HostUnreachable, TransportError
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

    def open_stream(self, argv: Sequence[str], *, timeout_s: float = 30.0) -> LocalStream:
        """A long-lived process spoken to through its stdin and stdout (the resident agent)."""
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C in the daemon's terminal must not end it
            )
        except OSError as exc:
            raise HostUnreachable(f"{self.host}: could not run {argv[0]}: {exc}") from None
        return LocalStream(self.host, proc)

    def close(self) -> None:
        """Nothing to release."""


class LocalStream:
    """The local side of a resident agent: see SshStream."""

    def __init__(self, host: str, proc: subprocess.Popen) -> None:
        self.host = host
        self.ack_timeout_s: float | None = None
        self._proc = proc
        self._buffer = bytearray()

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    def write(self, data: bytes, deadline: float) -> None:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(data)
            self._proc.stdin.flush()
        except OSError as exc:
            self.close()
            raise HostUnreachable(f"{self.host}: the resident agent is gone: {exc}") from None

    def read_line(self, deadline: float, limit: int = 16 << 20) -> bytes:
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if len(self._buffer) > limit or left <= 0:
                self.close()
                if left <= 0:
                    raise CommandTimeout(f"{self.host}: the resident agent did not answer in time")
                raise TransportError(f"{self.host}: a resident answer over {limit} bytes")
            if not select.select([fd], [], [], left)[0]:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                self.close()
                raise HostUnreachable(f"{self.host}: the resident agent ended")
            self._buffer += chunk
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        return line

    def close(self) -> None:
        if self._proc.poll() is None:
            with contextlib.suppress(OSError):
                self._proc.kill()
        with contextlib.suppress(OSError):
            for pipe in (self._proc.stdin, self._proc.stdout):
                if pipe is not None:
                    pipe.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=5)
