"""SSH transport: one persistent paramiko connection per host, every wait bounded.

paramiko is used with the precautions measured in docs/pool.md and the SSH notes:

* one Transport (TCP connection) per host, shared by all threads; at most
  `MAX_CHANNELS_PER_HOST` channels at once (sshd refuses the 11th by default);
* our own socket with TCP keepalive and TCP_USER_TIMEOUT, because paramiko's
  keepalive only sends traffic and never notices a dead peer by itself;
* a shared watchdog that closes the connection when a call passes its
  deadline, because several paramiko waits (exec_command, recv_exit_status,
  a blocked write) have no timeout at all; a connection that timed out is
  never reused (a late channel confirmation would leak a server session);
* output is read from stdout and stderr together until EOF, never until the
  exit status (which can arrive before the last bytes);
* after a failed connect the host is left alone for a growing backoff window,
  so a dead host costs one quick exception per call, not a TCP timeout.

This module holds `SshTransport`: the connection's lifecycle (reuse,
reconnect, backoff, close), channel slots, and the one boundary where every
paramiko and socket error becomes a sheetrunner error. The parts it builds
on live beside it: `ssh_target` (the route from the config and ~/.ssh/config,
and the tuned socket), `ssh_connection` (login through every hop),
`ssh_hostkeys` (which host keys to trust), `ssh_deadline` (the watchdog) and
`ssh_channel` (command I/O and SFTP upload on one channel).

Commands are argv lists joined with `shlex.join`, so the remote login shell
must be POSIX-compatible (sh, bash, dash, zsh, ksh).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import paramiko

from sheetrunner.errors import CommandTimeout, ConfigError, HostUnreachable, TransportError
from sheetrunner.pool.ssh_channel import (
    Refused,
    command_line,
    drain,
    exit_status,
    feed_stdin,
    sftp_write,
)
from sheetrunner.pool.ssh_connection import Connection, Dialer, describe
from sheetrunner.pool.ssh_deadline import WATCHDOG, DeadlinePassed, remaining
from sheetrunner.pool.ssh_hostkeys import HOST_KEY_POLICIES
from sheetrunner.pool.ssh_target import Target, load_ssh_config
from sheetrunner.pool.ssh_target import tune_socket as _tune_socket  # noqa: F401  (tests import it from here)
from sheetrunner.pool.transport import CommandResult

log = logging.getLogger(__name__)

MAX_CHANNELS_PER_HOST = 8  # sshd's MaxSessions default is 10; keep headroom for humans
MAX_OUTPUT_BYTES = 16 * 2**20

_PUT_BASE_TIMEOUT_S = 30.0
_PUT_MIN_BYTES_PER_S = 2**20

T = TypeVar("T")


class _StaleConnection(Exception):
    """A cached connection turned out dead before anything was sent on it."""


class _ConnectionLost(Exception):
    """The connection died while a command was running."""


class SshTransport:
    """Runs commands on one host over a persistent, self-healing SSH connection.

    Thread-safe: any number of threads may call `run`/`put_file`; at most
    MAX_CHANNELS_PER_HOST of them talk to the host at once, the others wait
    (within their own timeout) for a free slot.

    Deadlines: connecting (TCP, handshake, login, through jump hosts) and
    opening a channel are bounded by `connect_timeout_s`; `timeout_s` of `run`
    bounds the wait for a channel slot and, separately, the command itself. When a command times out its
    connection is closed, so other commands running on it at that moment fail
    with HostUnreachable and the next call reconnects.
    """

    def __init__(
        self,
        host: str,
        address: str | None,
        port: int | None,
        user: str | None,
        identity: str | None,
        known_hosts: str = "~/.ssh/known_hosts",
        host_key_policy: str = "reject",
        connect_timeout_s: float = 10,
        keepalive_s: float = 15,
        ssh_config: str | None = "~/.ssh/config",
        *,
        max_output_bytes: int = MAX_OUTPUT_BYTES,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
    ) -> None:
        if host_key_policy not in HOST_KEY_POLICIES:
            raise ConfigError(
                f"host {host}: host_key_policy = {host_key_policy!r} is not valid; "
                'use "reject" (default) or "accept-new"'
            )
        if port is not None and not 0 < port < 65536:
            raise ConfigError(f"host {host}: port = {port} is not valid; use e.g. port = 22")
        self.host = host
        self._target = Target(
            host, address, port, user, identity, load_ssh_config(host, ssh_config)
        )
        self._dialer = Dialer(
            host, os.path.expanduser(known_hosts), host_key_policy, connect_timeout_s, keepalive_s
        )
        self._connect_timeout_s = connect_timeout_s
        self._max_output = max_output_bytes
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s

        self._lock = threading.Lock()  # guards _conn and the backoff state; held while connecting
        self._slots = threading.BoundedSemaphore(MAX_CHANNELS_PER_HOST)
        self._conn: Connection | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._last_error: TransportError | None = None

    def __repr__(self) -> str:
        target = self._target
        return f"SshTransport(host={self.host!r}, address={target.address!r}, port={target.port!r})"

    # ------------------------------------------------------------------ public API

    def run(
        self, argv: Sequence[str], *, stdin: bytes = b"", timeout_s: float = 30.0
    ) -> CommandResult:
        """Run argv on the host; see Transport.run.

        Exit code -1 means the command ended without an exit status (killed by a
        signal). Output beyond max_output_bytes is a TransportError, not a
        truncated result: a caller parsing a truncated JSON would be worse off.
        """
        command = command_line(argv)

        def body(conn: Connection, deadline: float) -> CommandResult:
            return self._exec(conn, command, stdin, deadline)

        return self._call(f"command {_short(command)}", timeout_s, body)

    def put_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write a file over SFTP: temp name in the same directory, then posix-rename.

        The mode is set on the temp file before any data is written, so a
        secret never sits on disk with wider permissions.
        """
        if not path or path.endswith("/") or (path.startswith("~") and not path.startswith("~/")):
            raise ValueError(
                f"put_file needs a file path (absolute, relative or ~/...), got {path!r}"
            )
        timeout_s = _PUT_BASE_TIMEOUT_S + len(data) / _PUT_MIN_BYTES_PER_S

        def body(conn: Connection, deadline: float) -> None:
            self._upload(conn, path, data, mode, deadline)

        self._call(f"upload of {path}", timeout_s, body)

    def open_stream(self, argv: Sequence[str], *, timeout_s: float = 30.0) -> SshStream:
        """Start argv on its own channel and keep it: a long-lived process spoken to through
        its stdin and stdout (the resident agent). The channel holds one of the host's
        channel slots until the stream is closed."""
        command = command_line(argv)
        if not self._slots.acquire(timeout=timeout_s):
            raise CommandTimeout(
                f"host {self.host}: no free SSH channel for a resident agent within {timeout_s:g} s"
            )

        def body(conn: Connection, deadline: float) -> tuple[Connection, paramiko.Channel]:
            chan = self._open_channel(conn, deadline)
            chan.exec_command(command)
            return conn, chan

        try:
            conn, chan = self._call_in_slot(f"command {_short(command)}", timeout_s, body)
        except BaseException:
            self._slots.release()
            raise
        stream = SshStream(self.host, conn, chan, self._slots.release)
        stream.ack_timeout_s = self._connect_timeout_s
        return stream

    def close(self) -> None:
        """Drop the connection and forget past failures; the next call reconnects at once."""
        with self._lock:
            conn, self._conn = self._conn, None
            self._failures, self._retry_at, self._last_error = 0, 0.0, None
        if conn is not None:
            conn.close("closed by sheetrunner")

    # ------------------------------------------------------------------ call plumbing

    def _call(self, what: str, timeout_s: float, body: Callable[[Connection, float], T]) -> T:
        """Run body on a live connection, in a channel slot, under the watchdog.

        A cached connection found dead before anything was sent is replaced
        once; after a command was sent nothing is retried (it may have run).
        """
        with self._slot(what, timeout_s):
            return self._call_in_slot(what, timeout_s, body)

    def _call_in_slot(
        self, what: str, timeout_s: float, body: Callable[[Connection, float], T]
    ) -> T:
        for attempt in (1, 2):
            conn, fresh = self._connection()
            try:
                return self._guarded(conn, what, time.monotonic() + timeout_s, body)
            except _StaleConnection as exc:
                if fresh or attempt == 2:
                    raise HostUnreachable(
                        f"host {self.host}: the SSH connection closed at once ({exc})"
                    ) from exc
                log.info("host %s: cached SSH connection was dead; reconnecting", self.host)
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def _slot(self, what: str, timeout_s: float) -> Iterator[None]:
        if not self._slots.acquire(timeout=timeout_s):
            raise CommandTimeout(
                f"host {self.host}: {what} waited {timeout_s:g} s for a free SSH channel "
                f"({MAX_CHANNELS_PER_HOST} commands were already running there)"
            )
        try:
            yield
        finally:
            self._slots.release()

    def _guarded(
        self,
        conn: Connection,
        what: str,
        deadline: float,
        body: Callable[[Connection, float], T],
    ) -> T:
        """Translate everything paramiko and the socket layer raise into our error tree."""
        timed_out = f"{what} timed out"
        alarm = WATCHDOG.arm(deadline, lambda: conn.close(timed_out))
        try:
            return body(conn, deadline)
        except Refused as exc:
            raise TransportError(f"host {self.host}: {exc}") from exc
        except _StaleConnection:
            if alarm.fired or time.monotonic() >= deadline:
                raise self._timeout_error(what, deadline) from None
            raise
        except DeadlinePassed:
            conn.close(timed_out)
            raise self._timeout_error(what, deadline) from None
        except (_ConnectionLost, paramiko.SSHException, OSError, EOFError) as exc:
            if alarm.fired or time.monotonic() >= deadline:
                conn.close(timed_out)
                raise self._timeout_error(what, deadline) from exc
            earlier = conn.closed_reason
            conn.close(f"{what} failed")
            why = f" (the connection was closed earlier: {earlier})" if earlier else ""
            raise HostUnreachable(
                f"host {self.host}: the SSH connection failed during {what}: {describe(exc)}{why}"
            ) from exc
        finally:
            alarm.cancel()

    def _timeout_error(self, what: str, deadline: float) -> CommandTimeout:
        return CommandTimeout(
            f"host {self.host}: {what} did not finish before its deadline; "
            "its SSH connection was closed and the next call reconnects"
        )

    # ------------------------------------------------------------------ connecting

    def _connection(self) -> tuple[Connection, bool]:
        """The live connection, connecting if needed; (connection, freshly made)."""
        with self._lock:
            conn = self._conn
            if conn is not None and conn.alive():
                return conn, False
            if conn is not None:
                conn.close("found dead")
                self._conn = None
                log.info("host %s: SSH connection is gone (%s)", self.host, conn.closed_reason)
            self._check_backoff()
            try:
                conn = self._connect()
            except TransportError as exc:
                self._note_failure(exc)
                raise
            self._failures, self._last_error = 0, None
            self._conn = conn
            return conn, True

    def _check_backoff(self) -> None:
        """Fail fast while a recently failed host is in its backoff window."""
        last = self._last_error
        wait = self._retry_at - time.monotonic()
        if last is not None and wait > 0:
            raise type(last)(f"{last} (not retrying for another {wait:.1f} s)")

    def _note_failure(self, exc: TransportError) -> None:
        self._failures += 1
        delay = min(self._backoff_max_s, self._backoff_base_s * 2 ** (self._failures - 1))
        self._retry_at = time.monotonic() + delay
        self._last_error = exc
        log.warning("%s (retry in %.1f s at the earliest)", exc, delay)

    def _connect(self) -> Connection:
        """Plan the route through ~/.ssh/config, then log in through every hop."""
        try:
            route = self._target.route()
        except ValueError as exc:  # e.g. `Port abc` or `ProxyJump host:abc` in ssh_config
            raise HostUnreachable(f"host {self.host}: bad value in the ssh config: {exc}") from exc
        return self._dialer.connect(route)

    # ------------------------------------------------------------------ commands

    def _exec(self, conn: Connection, command: str, stdin: bytes, deadline: float) -> CommandResult:
        chan = self._open_channel(conn, deadline)
        try:
            chan.exec_command(command)  # no timeout inside paramiko: the watchdog covers it
            feed_stdin(chan, stdin)
            stdout, stderr = drain(chan, deadline, self._max_output)
            exit_code = exit_status(chan, deadline)
            if (not chan.eof_received or exit_code == -1) and not conn.alive():
                raise _ConnectionLost("connection closed before the command finished")
            return CommandResult(exit_code, stdout, stderr)
        finally:
            chan.close()

    def _open_channel(self, conn: Connection, deadline: float) -> paramiko.Channel:
        """A session channel; a dead cached connection is reported as stale, not as an error.

        Opening is bounded by connect_timeout_s even for long commands: a host that
        takes longer to open a channel is not answering, whatever the command's budget.
        """
        transport = conn.transport
        assert transport is not None
        try:
            return transport.open_session(timeout=min(remaining(deadline), self._connect_timeout_s))
        except paramiko.ChannelException as exc:
            raise Refused(
                f"the host refused a new SSH channel ({exc}); is sshd's MaxSessions "
                f"below {MAX_CHANNELS_PER_HOST}?"
            ) from exc
        except (paramiko.SSHException, OSError, EOFError) as exc:
            if not transport.is_active():
                raise _StaleConnection(describe(exc)) from exc
            raise

    # ------------------------------------------------------------------ files

    def _upload(self, conn: Connection, path: str, data: bytes, mode: int, deadline: float) -> None:
        chan = self._open_channel(conn, deadline)
        chan.settimeout(remaining(deadline))
        try:
            chan.invoke_subsystem("sftp")
            sftp = paramiko.SFTPClient(chan)
        except BaseException:
            chan.close()
            raise
        try:
            sftp_write(sftp, path, data, mode)
        except TimeoutError as exc:
            raise DeadlinePassed() from exc
        except OSError as exc:
            if conn.alive():
                raise Refused(f"cannot write {path}: {describe(exc)}") from exc
            raise
        finally:
            sftp.close()


class SshStream:
    """A long-lived command on one channel: lines written to its stdin, lines read from its
    stdout, each read bounded by a deadline. Any failure closes the stream (the caller
    starts another); its channel slot is given back once. A request past its deadline
    closes the whole connection, as a command past its deadline does: a host that stopped
    answering on one channel is not asked again on the same connection."""

    def __init__(
        self, host: str, conn: Connection, chan: paramiko.Channel, release: Callable[[], None]
    ) -> None:
        self.host = host
        self.ack_timeout_s: float | None = None
        self._conn = conn
        self._chan = chan
        self._release: Callable[[], None] | None = release
        self._buffer = bytearray()

    @property
    def alive(self) -> bool:
        return self._release is not None and not self._chan.closed and not self._chan.eof_received

    def write(self, data: bytes, deadline: float) -> None:
        try:
            self._chan.settimeout(remaining(deadline))
            self._chan.sendall(data)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            self.close()
            raise HostUnreachable(
                f"host {self.host}: resident channel failed: {describe(exc)}"
            ) from exc

    def read_line(self, deadline: float, limit: int = MAX_OUTPUT_BYTES) -> bytes:
        """The next line (without its newline); CommandTimeout past the deadline,
        HostUnreachable when the channel ended."""
        while b"\n" not in self._buffer:
            if len(self._buffer) > limit:
                self.close()
                raise TransportError(f"host {self.host}: a resident answer over {limit} bytes")
            left = deadline - time.monotonic()
            if left <= 0:
                self.close()
                self._conn.close("a resident agent request timed out")
                raise CommandTimeout(
                    f"host {self.host}: the resident agent did not answer in time; its SSH "
                    "connection was closed and the next call reconnects"
                )
            try:
                self._chan.settimeout(left)
                chunk = self._chan.recv(1 << 16)
            except TimeoutError:
                continue
            except (OSError, paramiko.SSHException, EOFError) as exc:
                self.close()
                raise HostUnreachable(
                    f"host {self.host}: resident channel failed: {describe(exc)}"
                ) from exc
            if not chunk:
                self.close()
                raise HostUnreachable(f"host {self.host}: the resident agent ended")
            self._buffer += chunk
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        return line

    def close(self) -> None:
        release, self._release = self._release, None
        with contextlib.suppress(Exception):
            self._chan.close()
        if release is not None:
            release()


def _short(command: str, limit: int = 60) -> str:
    return command if len(command) <= limit else command[: limit - 3] + "..."
