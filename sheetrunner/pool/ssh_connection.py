"""Opening the SSH connection to one host: through every hop, under one deadline.

`Dialer.connect` logs in to each hop of a route (jump hosts first) over the
socket or tunnel to it, checks host keys, and turns every way this can fail
into a HostUnreachable or HostKeyError that says what to fix. The result is
a `Connection`: everything opened for the host (SSH clients, sockets,
tunnels), closed together, once, with the reason kept so a command that
loses the connection because another command timed out can say so.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from dataclasses import dataclass

import paramiko

from sheetrunner.errors import HostKeyError, HostUnreachable, TransportError
from sheetrunner.pool.ssh_deadline import WATCHDOG, remaining
from sheetrunner.pool.ssh_hostkeys import apply_host_key_policy, changed_key_message
from sheetrunner.pool.ssh_target import Hop, open_jump_channel, open_socket

log = logging.getLogger(__name__)


class Connection:
    """The live connection to one host: its SSH clients (jump hosts first) and sockets.

    Closing is idempotent and records why, so a command that loses its
    connection because another command timed out can say so.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closables: list[object] = []
        self.transport: paramiko.Transport | None = None
        self.closed_reason: str | None = None

    def add(self, closable: object) -> None:
        with self._lock:
            if self.closed_reason is None:
                self._closables.append(closable)
                return
        _close_quietly(closable)
        raise OSError(errno.ECONNABORTED, f"connection closed: {self.closed_reason}")

    def alive(self) -> bool:
        transport = self.transport
        return self.closed_reason is None and transport is not None and transport.is_active()

    def close(self, reason: str) -> None:
        with self._lock:
            if self.closed_reason is not None:
                return
            self.closed_reason = reason
            closables, self._closables = self._closables, []
        for closable in reversed(closables):
            _close_quietly(closable)


def _close_quietly(closable: object) -> None:
    with contextlib.suppress(Exception):
        closable.close()  # type: ignore[attr-defined]


def describe(exc: BaseException) -> str:
    """The exception as a user reads it: its class name, then its message."""
    text = str(exc) or exc.__class__.__name__
    return text if text.startswith(exc.__class__.__name__) else f"{exc.__class__.__name__}: {text}"


@dataclass(frozen=True)
class Dialer:
    """How to connect to one host: which host keys to trust, how long to wait, keepalive."""

    host: str
    known_hosts: str
    host_key_policy: str
    connect_timeout_s: float
    keepalive_s: float

    def connect(self, route: list[Hop]) -> Connection:
        """Open the connection through every hop under one connect deadline."""
        started = time.monotonic()
        deadline = started + self.connect_timeout_s
        conn = Connection()
        alarm = WATCHDOG.arm(deadline, lambda: conn.close("connect timed out"))
        hop = route[0]
        try:
            sock: object = open_socket(hop, deadline, conn.add)
            for index, hop in enumerate(route):
                client = self._login(hop, sock, deadline, conn)
                transport = client.get_transport()
                assert transport is not None
                if self.keepalive_s > 0:
                    transport.set_keepalive(max(1, round(self.keepalive_s)))
                conn.transport = transport
                if index + 1 < len(route):
                    sock = open_jump_channel(transport, route[index + 1], deadline)
                    conn.add(sock)
        except HostKeyError:
            conn.close("host key refused")
            raise
        except Exception as exc:
            conn.close("connect failed")
            if alarm.fired or time.monotonic() >= deadline:
                raise HostUnreachable(
                    f"host {self.host}: connecting to {hop.label} did not finish within "
                    f"connect_timeout_s = {self.connect_timeout_s:g} s"
                ) from exc
            raise self._connect_error(hop, route, exc) from exc
        finally:
            alarm.cancel()
        log.info(
            "host %s: connected to %s in %.2f s",
            self.host,
            " -> ".join(h.label for h in route),
            time.monotonic() - started,
        )
        return conn

    def _login(
        self, hop: Hop, sock: object, deadline: float, conn: Connection
    ) -> paramiko.SSHClient:
        """SSH handshake, host key check and login on an already open socket."""
        client = paramiko.SSHClient()
        conn.add(client)
        apply_host_key_policy(client, self.host, hop, self.known_hosts, self.host_key_policy)
        for key_file in hop.key_files:
            if not os.path.exists(key_file):
                raise HostUnreachable(
                    f"host {self.host}: the SSH identity file {key_file} does not exist; "
                    "fix `identity` in the [ssh] section or the host's [[hosts]] entry"
                )
        timeout = remaining(deadline)
        try:
            client.connect(
                hop.address,
                hop.port,
                username=hop.user,
                key_filename=list(hop.key_files) or None,
                allow_agent=hop.allow_agent,
                look_for_keys=hop.look_for_keys,
                sock=sock,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                channel_timeout=self.connect_timeout_s,
            )
        except paramiko.BadHostKeyException as exc:
            raise HostKeyError(
                changed_key_message(self.host, hop, self.known_hosts, exc.expected_key, exc.key)
            ) from exc
        return client

    def _connect_error(self, hop: Hop, route: list[Hop], exc: BaseException) -> TransportError:
        if isinstance(exc, TransportError):
            return exc
        where = hop.label if hop is route[-1] else f"jump host {hop.label}"
        if isinstance(exc, paramiko.AuthenticationException):
            how = ", ".join(hop.key_files) or "ssh-agent / ~/.ssh/id_*"
            return HostUnreachable(
                f"host {self.host}: SSH login to {where} failed ({exc}); tried {how}. Check "
                f"`user` and `identity`, and that the public key is in ~/.ssh/authorized_keys "
                f"of {hop.user} on the host (a passphrase-protected key must be in ssh-agent)"
            )
        if isinstance(exc, paramiko.ChannelException):
            return HostUnreachable(
                f"host {self.host}: {where} refused to forward the connection ({exc}); "
                "it needs AllowTcpForwarding yes"
            )
        return HostUnreachable(f"host {self.host}: cannot connect to {where}: {describe(exc)}")
