"""Moving bytes over one open SSH channel: a command's stdin and output, an SFTP upload.

These are the loops where paramiko is easiest to misuse, kept apart from the
connection handling around them: argv is quoted for a POSIX login shell and
refused when it cannot survive the trip; stdin is fed from its own thread so
a command that writes before it reads cannot deadlock; stdout and stderr are
read together until EOF, never until the exit status (which can arrive
before the last bytes), and output past a limit is refused, not truncated;
an upload goes to a temp name in the target directory, then a posix-rename.
"""

from __future__ import annotations

import contextlib
import posixpath
import select
import shlex
import threading
import time
import uuid
from collections.abc import Sequence

import paramiko

from sheetrunner.pool.ssh_deadline import DeadlinePassed

_READ_CHUNK = 65536


class Refused(Exception):
    """The host answered but refused the request; the connection is fine."""


def command_line(argv: Sequence[str]) -> str:
    """Quote argv for the remote POSIX shell; refuse anything that cannot survive the trip."""
    if isinstance(argv, (str, bytes)):
        raise TypeError("argv must be a list of strings, not a single string")
    items = list(argv)
    if not items:
        raise ValueError("argv is empty")
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"argv items must be str, got {type(item).__name__}")
        if "\0" in item:
            raise ValueError("argv items cannot contain NUL characters")
    return shlex.join(items)


def feed_stdin(chan: paramiko.Channel, data: bytes) -> None:
    """Send stdin from a helper thread so a command that writes before it reads cannot deadlock."""
    if not data:
        chan.shutdown_write()
        return

    def feed() -> None:
        # A command that exits without reading its stdin closes the channel: not our error.
        with contextlib.suppress(OSError, paramiko.SSHException, EOFError):
            chan.sendall(data)
            chan.shutdown_write()

    threading.Thread(target=feed, name="sheetrunner-ssh-stdin", daemon=True).start()


def drain(chan: paramiko.Channel, deadline: float, limit: int) -> tuple[bytes, bytes]:
    """Read stdout and stderr together until EOF (not until the exit status)."""
    out, err = bytearray(), bytearray()
    fd = chan.fileno()  # becomes readable when either stream has data or the channel ends
    while True:
        finished = chan.eof_received or chan.closed  # read before the buffers: no lost tail
        while chan.recv_ready():
            out += chan.recv(_READ_CHUNK)
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(_READ_CHUNK)
        if len(out) + len(err) > limit:
            raise Refused(
                f"the command wrote more than {limit} bytes of output; redirect its output "
                "to a file on the host and read the tail instead"
            )
        if finished and not chan.recv_ready() and not chan.recv_stderr_ready():
            return bytes(out), bytes(err)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlinePassed()
        select.select([fd], [], [], min(remaining, 1.0))


def exit_status(chan: paramiko.Channel, deadline: float) -> int:
    if not chan.status_event.wait(max(0.0, deadline - time.monotonic())):
        raise DeadlinePassed()
    return chan.exit_status


def sftp_write(sftp: paramiko.SFTPClient, path: str, data: bytes, mode: int) -> None:
    """Write `data` to a temp file in path's directory with `mode`, then rename it over path."""
    target = _sftp_path(sftp, path)
    directory, name = posixpath.split(target)
    _sftp_makedirs(sftp, directory)
    tmp = posixpath.join(directory, f".{name}.sheetrunner-tmp-{uuid.uuid4().hex[:12]}")
    try:
        with sftp.open(tmp, "wb") as f:
            f.chmod(mode)
            f.set_pipelined(True)
            f.write(data)
        sftp.posix_rename(tmp, target)
    except BaseException:
        with contextlib.suppress(Exception):
            sftp.remove(tmp)
        raise


def _sftp_path(sftp: paramiko.SFTPClient, path: str) -> str:
    """Resolve a leading `~/` against the SFTP home (the login directory)."""
    if path.startswith("~/"):
        return posixpath.join(sftp.normalize("."), path[2:])
    return path


def _sftp_makedirs(sftp: paramiko.SFTPClient, directory: str) -> None:
    missing = []
    while directory not in ("", "/", "."):
        try:
            sftp.stat(directory)
            break
        except FileNotFoundError:
            missing.append(directory)
            directory = posixpath.dirname(directory)
    for directory in reversed(missing):
        try:
            sftp.mkdir(directory)
        except OSError:
            sftp.stat(directory)  # created concurrently: fine; anything else raises here
