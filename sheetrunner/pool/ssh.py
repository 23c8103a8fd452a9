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

Commands are argv lists joined with `shlex.join`, so the remote login shell
must be POSIX-compatible (sh, bash, dash, zsh, ksh).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import getpass
import heapq
import ipaddress
import itertools
import logging
import os
import posixpath
import select
import shlex
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import paramiko

from sheetrunner.atomic import write_atomic
from sheetrunner.errors import (
    CommandTimeout,
    ConfigError,
    HostKeyError,
    HostUnreachable,
    TransportError,
)
from sheetrunner.pool.transport import CommandResult

log = logging.getLogger(__name__)

MAX_CHANNELS_PER_HOST = 8  # sshd's MaxSessions default is 10; keep headroom for humans
MAX_OUTPUT_BYTES = 16 * 2**20
HOST_KEY_POLICIES = ("reject", "accept-new")
MAX_JUMPS = 8

_READ_CHUNK = 65536
_TCP_KEEPIDLE_S = 10
_TCP_KEEPINTVL_S = 5
_TCP_KEEPCNT = 3
_TCP_USER_TIMEOUT_MS = 20_000
_PUT_BASE_TIMEOUT_S = 30.0
_PUT_MIN_BYTES_PER_S = 2**20

T = TypeVar("T")


# --------------------------------------------------------------------------- watchdog


class _Alarm:
    """One deadline registered with the watchdog; fires at most once."""

    def __init__(self, callback: Callable[[], None]) -> None:
        self._callback = callback
        self._lock = threading.Lock()
        self._state = "armed"

    @property
    def fired(self) -> bool:
        return self._state == "fired"

    def cancel(self) -> None:
        with self._lock:
            if self._state == "armed":
                self._state = "cancelled"

    def fire(self) -> None:
        with self._lock:
            if self._state != "armed":
                return
            self._state = "fired"
        # The callback closes sockets and joins paramiko threads: keep it off the
        # watchdog thread so one slow close cannot delay every other deadline.
        threading.Thread(target=self._callback, name="sheetrunner-ssh-expire", daemon=True).start()


class _Watchdog:
    """Fires callbacks at wall-clock deadlines from one shared thread.

    Closing the Transport is the only way to wake paramiko waits that have no
    timeout; one thread for all hosts instead of a Timer thread per call keeps
    a 500-host probe from starting 500 extra threads.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Alarm]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, deadline: float, callback: Callable[[], None]) -> _Alarm:
        """Call `callback` (in its own thread) once time.monotonic() passes `deadline`."""
        alarm = _Alarm(callback)
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._seq), alarm))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="sheetrunner-ssh-watchdog", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        return alarm

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                deadline, _, alarm = self._heap[0]
                delay = deadline - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                heapq.heappop(self._heap)
            alarm.fire()


_WATCHDOG = _Watchdog()


# --------------------------------------------------------------------------- internal signals


class _Deadline(Exception):
    """The call's own loop saw its deadline pass."""


class _StaleConnection(Exception):
    """A cached connection turned out dead before anything was sent on it."""


class _ConnectionLost(Exception):
    """The connection died while a command was running."""


class _Refused(Exception):
    """The host answered but refused the request; the connection is fine."""


# --------------------------------------------------------------------------- connection


@dataclass(frozen=True)
class _Hop:
    """One SSH server on the way to the host, with what is needed to log in."""

    address: str
    port: int
    user: str
    key_files: tuple[str, ...]
    allow_agent: bool
    look_for_keys: bool
    proxy_command: str | None = None

    @property
    def label(self) -> str:
        return f"{self.user}@{self.address}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """The name OpenSSH and paramiko look up in known_hosts for this hop."""
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"


class _Connection:
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


# --------------------------------------------------------------------------- the transport


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
        self._address = address
        self._port = port
        self._user = user
        self._identity = identity
        self._known_hosts = os.path.expanduser(known_hosts)
        self._policy = host_key_policy
        self._connect_timeout_s = connect_timeout_s
        self._keepalive_s = keepalive_s
        self._ssh_config = _load_ssh_config(host, ssh_config)
        self._max_output = max_output_bytes
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s

        self._lock = threading.Lock()  # guards _conn and the backoff state; held while connecting
        self._slots = threading.BoundedSemaphore(MAX_CHANNELS_PER_HOST)
        self._conn: _Connection | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._last_error: TransportError | None = None

    def __repr__(self) -> str:
        return f"SshTransport(host={self.host!r}, address={self._address!r}, port={self._port!r})"

    # ------------------------------------------------------------------ public API

    def run(
        self, argv: Sequence[str], *, stdin: bytes = b"", timeout_s: float = 30.0
    ) -> CommandResult:
        """Run argv on the host; see Transport.run.

        Exit code -1 means the command ended without an exit status (killed by a
        signal). Output beyond max_output_bytes is a TransportError, not a
        truncated result: a caller parsing a truncated JSON would be worse off.
        """
        command = _command_line(argv)

        def body(conn: _Connection, deadline: float) -> CommandResult:
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

        def body(conn: _Connection, deadline: float) -> None:
            self._upload(conn, path, data, mode, deadline)

        self._call(f"upload of {path}", timeout_s, body)

    def close(self) -> None:
        """Drop the connection and forget past failures; the next call reconnects at once."""
        with self._lock:
            conn, self._conn = self._conn, None
            self._failures, self._retry_at, self._last_error = 0, 0.0, None
        if conn is not None:
            conn.close("closed by sheetrunner")

    # ------------------------------------------------------------------ call plumbing

    def _call(self, what: str, timeout_s: float, body: Callable[[_Connection, float], T]) -> T:
        """Run body on a live connection, in a channel slot, under the watchdog.

        A cached connection found dead before anything was sent is replaced
        once; after a command was sent nothing is retried (it may have run).
        """
        with self._slot(what, timeout_s):
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
        conn: _Connection,
        what: str,
        deadline: float,
        body: Callable[[_Connection, float], T],
    ) -> T:
        """Translate everything paramiko and the socket layer raise into our error tree."""
        timed_out = f"{what} timed out"
        alarm = _WATCHDOG.arm(deadline, lambda: conn.close(timed_out))
        try:
            return body(conn, deadline)
        except _Refused as exc:
            raise TransportError(f"host {self.host}: {exc}") from exc
        except _StaleConnection:
            if alarm.fired or time.monotonic() >= deadline:
                raise self._timeout_error(what, deadline) from None
            raise
        except _Deadline:
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
                f"host {self.host}: the SSH connection failed during {what}: {_describe(exc)}{why}"
            ) from exc
        finally:
            alarm.cancel()

    def _timeout_error(self, what: str, deadline: float) -> CommandTimeout:
        return CommandTimeout(
            f"host {self.host}: {what} did not finish before its deadline; "
            "its SSH connection was closed and the next call reconnects"
        )

    # ------------------------------------------------------------------ connecting

    def _connection(self) -> tuple[_Connection, bool]:
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

    def _connect(self) -> _Connection:
        """Open the connection through every hop under one connect deadline."""
        try:
            route = self._route()
        except ValueError as exc:  # e.g. `Port abc` or `ProxyJump host:abc` in ssh_config
            raise HostUnreachable(f"host {self.host}: bad value in the ssh config: {exc}") from exc
        started = time.monotonic()
        deadline = started + self._connect_timeout_s
        conn = _Connection()
        alarm = _WATCHDOG.arm(deadline, lambda: conn.close("connect timed out"))
        hop = route[0]
        try:
            sock: object = self._first_socket(hop, deadline, conn)
            for index, hop in enumerate(route):
                client = self._login(hop, sock, deadline, conn)
                transport = client.get_transport()
                assert transport is not None
                if self._keepalive_s > 0:
                    transport.set_keepalive(max(1, round(self._keepalive_s)))
                conn.transport = transport
                if index + 1 < len(route):
                    nxt = route[index + 1]
                    sock = transport.open_channel(
                        "direct-tcpip",
                        (nxt.address, nxt.port),
                        ("127.0.0.1", 0),
                        timeout=_remaining(deadline),
                    )
                    conn.add(sock)
        except HostKeyError:
            conn.close("host key refused")
            raise
        except Exception as exc:
            conn.close("connect failed")
            if alarm.fired or time.monotonic() >= deadline:
                raise HostUnreachable(
                    f"host {self.host}: connecting to {hop.label} did not finish within "
                    f"connect_timeout_s = {self._connect_timeout_s:g} s"
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

    def _first_socket(self, hop: _Hop, deadline: float, conn: _Connection) -> object:
        """A TCP socket (or ProxyCommand pipe) to the first hop, tuned for dead-peer detection."""
        if hop.proxy_command:
            proxy = paramiko.ProxyCommand(hop.proxy_command)
            conn.add(proxy)
            return proxy
        infos = _resolve(hop.address, hop.port, _remaining(deadline))
        last: OSError | None = None
        for family, _, _, _, sockaddr in infos:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                conn.add(sock)
                _tune_socket(sock)
                sock.settimeout(_remaining(deadline))
                sock.connect(sockaddr)
                return sock
            except OSError as exc:
                sock.close()
                last = exc
        raise last or OSError(errno.EHOSTUNREACH, "no address")

    def _login(
        self, hop: _Hop, sock: object, deadline: float, conn: _Connection
    ) -> paramiko.SSHClient:
        """SSH handshake, host key check and login on an already open socket."""
        client = paramiko.SSHClient()
        conn.add(client)
        if os.path.exists(self._known_hosts):
            try:
                client.load_system_host_keys(self._known_hosts)  # read-only: never written back
            except (OSError, paramiko.SSHException, ValueError) as exc:
                raise HostKeyError(
                    f"host {self.host}: cannot read known_hosts file {self._known_hosts}: {exc}"
                ) from exc
        if self._policy == "accept-new":
            client.set_missing_host_key_policy(_AcceptNewKey(self.host, hop, self._known_hosts))
        else:
            client.set_missing_host_key_policy(_RejectUnknownKey(self.host, hop, self._known_hosts))
        for key_file in hop.key_files:
            if not os.path.exists(key_file):
                raise HostUnreachable(
                    f"host {self.host}: the SSH identity file {key_file} does not exist; "
                    "fix `identity` in the [ssh] section or the host's [[hosts]] entry"
                )
        timeout = _remaining(deadline)
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
                channel_timeout=self._connect_timeout_s,
            )
        except paramiko.BadHostKeyException as exc:
            raise HostKeyError(
                _changed_key_message(self.host, hop, self._known_hosts, exc.expected_key, exc.key)
            ) from exc
        return client

    def _connect_error(self, hop: _Hop, route: list[_Hop], exc: BaseException) -> TransportError:
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
        return HostUnreachable(f"host {self.host}: cannot connect to {where}: {_describe(exc)}")

    # ------------------------------------------------------------------ route planning

    def _route(self) -> list[_Hop]:
        """Jump hosts (from ProxyJump) then the host, as ~/.ssh/config describes them."""
        alias = self._address or self.host
        return self._route_to(alias, self._user, self._port, self._identity, depth=0)

    def _route_to(
        self, alias: str, user: str | None, port: int | None, identity: str | None, depth: int
    ) -> list[_Hop]:
        hop, jump = self._hop(alias, user, port, identity)
        if jump is None:
            return [hop]
        if depth >= MAX_JUMPS:
            raise HostUnreachable(
                f"host {self.host}: more than {MAX_JUMPS} ProxyJump hops in the ssh config "
                f"(a loop?) while resolving {alias}"
            )
        specs = [_parse_jump(spec) for spec in jump.split(",") if spec.strip()]
        first_user, first_host, first_port = specs[0]
        route = self._route_to(first_host, first_user, first_port, None, depth + 1)
        for jump_user, jump_host, jump_port in specs[1:]:
            # Like `ssh -J a,b`: b is reached through a; b's own ProxyJump does not apply.
            route.append(
                replace(self._hop(jump_host, jump_user, jump_port, None)[0], proxy_command=None)
            )
        return route + [replace(hop, proxy_command=None)]

    def _hop(
        self, alias: str, user: str | None, port: int | None, identity: str | None
    ) -> tuple[_Hop, str | None]:
        """One hop as ssh_config describes `alias`; explicit values win. Also its ProxyJump."""
        opts = self._ssh_config.lookup(alias)
        jump = opts.get("proxyjump", "none").strip()
        proxy = opts.get("proxycommand", "none").strip()
        key_files, allow_agent, look_for_keys = _auth_plan(opts, identity)
        hop = _Hop(
            address=opts.get("hostname", alias),
            port=port or int(opts.get("port", 22)),
            user=user or opts.get("user") or getpass.getuser(),
            key_files=key_files,
            allow_agent=allow_agent,
            look_for_keys=look_for_keys,
            proxy_command=None if proxy.lower() == "none" else proxy,
        )
        return hop, None if jump.lower() == "none" else jump

    # ------------------------------------------------------------------ commands

    def _exec(
        self, conn: _Connection, command: str, stdin: bytes, deadline: float
    ) -> CommandResult:
        chan = self._open_channel(conn, deadline)
        try:
            chan.exec_command(command)  # no timeout inside paramiko: the watchdog covers it
            _feed_stdin(chan, stdin)
            stdout, stderr = _drain(chan, deadline, self._max_output)
            exit_code = _exit_status(chan, deadline)
            if (not chan.eof_received or exit_code == -1) and not conn.alive():
                raise _ConnectionLost("connection closed before the command finished")
            return CommandResult(exit_code, stdout, stderr)
        finally:
            chan.close()

    def _open_channel(self, conn: _Connection, deadline: float) -> paramiko.Channel:
        """A session channel; a dead cached connection is reported as stale, not as an error.

        Opening is bounded by connect_timeout_s even for long commands: a host that
        takes longer to open a channel is not answering, whatever the command's budget.
        """
        transport = conn.transport
        assert transport is not None
        try:
            return transport.open_session(
                timeout=min(_remaining(deadline), self._connect_timeout_s)
            )
        except paramiko.ChannelException as exc:
            raise _Refused(
                f"the host refused a new SSH channel ({exc}); is sshd's MaxSessions "
                f"below {MAX_CHANNELS_PER_HOST}?"
            ) from exc
        except (paramiko.SSHException, OSError, EOFError) as exc:
            if not transport.is_active():
                raise _StaleConnection(_describe(exc)) from exc
            raise

    # ------------------------------------------------------------------ files

    def _upload(
        self, conn: _Connection, path: str, data: bytes, mode: int, deadline: float
    ) -> None:
        chan = self._open_channel(conn, deadline)
        chan.settimeout(_remaining(deadline))
        try:
            chan.invoke_subsystem("sftp")
            sftp = paramiko.SFTPClient(chan)
        except BaseException:
            chan.close()
            raise
        try:
            _sftp_write(sftp, path, data, mode)
        except TimeoutError as exc:
            raise _Deadline() from exc
        except OSError as exc:
            if conn.alive():
                raise _Refused(f"cannot write {path}: {_describe(exc)}") from exc
            raise
        finally:
            sftp.close()


# --------------------------------------------------------------------------- host keys

_KNOWN_HOSTS_LOCK = threading.Lock()


def _fingerprint(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.fingerprint}"


def _keyscan_command(hop: _Hop) -> str:
    port = "" if hop.port == 22 else f"-p {hop.port} "
    return f"ssh-keyscan {port}{shlex.quote(hop.address)}"


def _changed_key_message(
    host: str, hop: _Hop, known_hosts: str, expected: paramiko.PKey, offered: paramiko.PKey
) -> str:
    name = hop.known_hosts_name
    return (
        f"host {host}: the SSH host key of {name} changed: {known_hosts} has "
        f"{_fingerprint(expected)}, the host offered {_fingerprint(offered)}. If the host was "
        f"rebuilt, remove the old line with: ssh-keygen -R {shlex.quote(name)} -f "
        f"{shlex.quote(known_hosts)} ; otherwise do not connect: someone may be intercepting "
        "the connection"
    )


class _RejectUnknownKey(paramiko.MissingHostKeyPolicy):
    """RejectPolicy whose error says exactly how to trust the key."""

    def __init__(self, host: str, hop: _Hop, known_hosts: str) -> None:
        self._host, self._hop, self._known_hosts = host, hop, known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey):
        raise HostKeyError(
            f"host {self._host}: the SSH host key of {hostname} ({_fingerprint(key)}) is not in "
            f"{self._known_hosts}. Check the fingerprint out of band (console, provisioning "
            f"output), then add it with: {_keyscan_command(self._hop)} >> "
            f'{shlex.quote(self._known_hosts)} ; or set host_key_policy = "accept-new" in the '
            "[ssh] section to trust a host's key the first time sheetrunner sees it"
        )


class _AcceptNewKey(paramiko.MissingHostKeyPolicy):
    """Trust on first use, then pin: the new key is appended to known_hosts atomically.

    paramiko's AutoAddPolicy rewrites the whole file in place without a lock,
    which corrupts it when many hosts connect in parallel; this appends under
    a thread lock plus an flock (other sheetrunner processes), via temp file
    and rename. A later different key then fails like any changed key.
    """

    def __init__(self, host: str, hop: _Hop, known_hosts: str) -> None:
        self._host, self._hop, self._known_hosts = host, hop, known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey):
        try:
            pinned = _pin_host_key(self._known_hosts, hostname, key)
        except OSError as exc:
            raise HostKeyError(
                f"host {self._host}: cannot add the host key of {hostname} to "
                f"{self._known_hosts}: {exc}"
            ) from exc
        if pinned is not None and pinned != key:
            raise HostKeyError(
                _changed_key_message(self._host, self._hop, self._known_hosts, pinned, key)
            )
        if pinned is None:
            log.warning(
                "host %s: trusted new SSH host key of %s on first use: %s (added to %s)",
                self._host,
                hostname,
                _fingerprint(key),
                self._known_hosts,
            )


def _pin_host_key(path: str, name: str, key: paramiko.PKey) -> paramiko.PKey | None:
    """Append `name key` to known_hosts unless a key is already pinned; return that key."""
    real = os.path.realpath(path)  # replace the target of a symlinked known_hosts, not the link
    directory = os.path.dirname(real)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    with _KNOWN_HOSTS_LOCK, _flock(real + ".lock"):
        existing = paramiko.HostKeys()
        text = ""
        if os.path.exists(real):
            existing.load(real)
            with open(real, encoding="utf-8") as f:
                text = f.read()
        pinned = existing.lookup(name)
        if pinned:
            return pinned.get(key.get_name()) or next(iter(pinned.values()))
        if text and not text.endswith("\n"):
            text += "\n"
        text += f"{name} {key.get_name()} {key.get_base64()}\n"
        write_atomic(real, text.encode("utf-8"))
    return None


@contextlib.contextmanager
def _flock(path: str) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- helpers


def _command_line(argv: Sequence[str]) -> str:
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


def _short(command: str, limit: int = 60) -> str:
    return command if len(command) <= limit else command[: limit - 3] + "..."


def _describe(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    return text if text.startswith(exc.__class__.__name__) else f"{exc.__class__.__name__}: {text}"


def _remaining(deadline: float) -> float:
    return max(0.01, deadline - time.monotonic())


def _load_ssh_config(host: str, path: str | None) -> paramiko.SSHConfig:
    """Parse ~/.ssh/config once, up front, so a broken file is reported at startup."""
    if path is None:
        return paramiko.SSHConfig()
    expanded = os.path.expanduser(path)
    if not os.path.exists(expanded):
        return paramiko.SSHConfig()
    try:
        return paramiko.SSHConfig.from_path(expanded)
    except (OSError, paramiko.ssh_exception.ConfigParseError) as exc:
        raise ConfigError(
            f"host {host}: cannot parse ssh config {expanded} ({exc}); fix the file or set "
            "ssh_config to another file in the [ssh] section"
        ) from exc


def _auth_plan(
    opts: paramiko.SSHConfigDict, identity: str | None
) -> tuple[tuple[str, ...], bool, bool]:
    """(key files, allow agent, look for ~/.ssh/id_*): an explicit identity is used alone;
    otherwise IdentityFile entries plus the agent; otherwise the agent and default keys."""
    if identity:
        return (os.path.expanduser(identity),), False, False
    files = tuple(
        path
        for path in (os.path.expanduser(f) for f in opts.get("identityfile", []))
        if os.path.exists(path)
    )
    identities_only = opts.get("identitiesonly", "no").lower() == "yes"
    return files, not (identities_only and bool(files)), not files


def _parse_jump(spec: str) -> tuple[str | None, str, int | None]:
    """`[user@]host[:port]` or `ssh://[user@]host[:port]` → (user, host, port)."""
    spec = spec.strip().removeprefix("ssh://")
    user, _, hostport = spec.rpartition("@")
    if hostport.startswith("["):  # [v6addr]:port
        host, _, rest = hostport[1:].partition("]")
        port = rest.removeprefix(":")
    elif hostport.count(":") == 1:
        host, _, port = hostport.partition(":")
    else:
        host, port = hostport, ""
    return user or None, host, int(port) if port else None


def _resolve(address: str, port: int, timeout_s: float) -> list[tuple]:
    """getaddrinfo with a deadline: the libc call itself has none."""
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(address)
        return socket.getaddrinfo(address, port, 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
    box: dict[str, object] = {}
    done = threading.Event()

    def lookup() -> None:
        try:
            box["result"] = socket.getaddrinfo(address, port, 0, socket.SOCK_STREAM)
        except OSError as exc:
            box["error"] = exc
        done.set()

    threading.Thread(target=lookup, name="sheetrunner-ssh-resolve", daemon=True).start()
    if not done.wait(timeout_s):
        raise TimeoutError(f"resolving {address} took longer than {timeout_s:.1f} s")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


def _tune_socket(sock: socket.socket) -> None:
    """Make the kernel notice a dead peer: keepalive probes plus a cap on unacked data."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", _TCP_KEEPIDLE_S),
        ("TCP_KEEPINTVL", _TCP_KEEPINTVL_S),
        ("TCP_KEEPCNT", _TCP_KEEPCNT),
        ("TCP_USER_TIMEOUT", _TCP_USER_TIMEOUT_MS),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, option, value)


def _feed_stdin(chan: paramiko.Channel, data: bytes) -> None:
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


def _drain(chan: paramiko.Channel, deadline: float, limit: int) -> tuple[bytes, bytes]:
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
            raise _Refused(
                f"the command wrote more than {limit} bytes of output; redirect its output "
                "to a file on the host and read the tail instead"
            )
        if finished and not chan.recv_ready() and not chan.recv_stderr_ready():
            return bytes(out), bytes(err)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Deadline()
        select.select([fd], [], [], min(remaining, 1.0))


def _exit_status(chan: paramiko.Channel, deadline: float) -> int:
    if not chan.status_event.wait(max(0.0, deadline - time.monotonic())):
        raise _Deadline()
    return chan.exit_status


def _sftp_write(sftp: paramiko.SFTPClient, path: str, data: bytes, mode: int) -> None:
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
