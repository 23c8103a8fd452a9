"""Where an SSH host is and how the first bytes reach it.

The config gives a host name and optional address, port, user and identity;
~/.ssh/config may add HostName, User, Port, IdentityFile, ProxyJump and
ProxyCommand. `Target.route` turns both into the list of hops to log in to
(jump hosts first), the way `ssh` itself would. `open_socket` then opens the
pipe to the first hop: a ProxyCommand, or a TCP socket tuned so the kernel
notices a dead peer (paramiko's keepalive only sends traffic and never
notices one by itself); `open_jump_channel` opens the pipe to each later hop
through the one before it.
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import ipaddress
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

import paramiko

from sheetrunner.errors import ConfigError, HostUnreachable
from sheetrunner.pool.ssh_deadline import remaining

MAX_JUMPS = 8

_TCP_KEEPIDLE_S = 10
_TCP_KEEPINTVL_S = 5
_TCP_KEEPCNT = 3
_TCP_USER_TIMEOUT_MS = 20_000


@dataclass(frozen=True)
class Hop:
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


# --------------------------------------------------------------------------- route planning


@dataclass(frozen=True)
class Target:
    """One host as the config arguments name it; explicit values win over ~/.ssh/config."""

    host: str
    address: str | None
    port: int | None
    user: str | None
    identity: str | None
    ssh_config: paramiko.SSHConfig

    def route(self) -> list[Hop]:
        """Jump hosts (from ProxyJump) then the host, as ~/.ssh/config describes them.

        A bad value in the ssh config (`Port abc`, `ProxyJump host:abc`) raises ValueError.
        """
        alias = self.address or self.host
        return self._route_to(alias, self.user, self.port, self.identity, depth=0)

    def _route_to(
        self, alias: str, user: str | None, port: int | None, identity: str | None, depth: int
    ) -> list[Hop]:
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
    ) -> tuple[Hop, str | None]:
        """One hop as ssh_config describes `alias`; explicit values win. Also its ProxyJump."""
        opts = self.ssh_config.lookup(alias)
        jump = opts.get("proxyjump", "none").strip()
        proxy = opts.get("proxycommand", "none").strip()
        key_files, allow_agent, look_for_keys = _auth_plan(opts, identity)
        hop = Hop(
            address=opts.get("hostname", alias),
            port=port or int(opts.get("port", 22)),
            user=user or opts.get("user") or getpass.getuser(),
            key_files=key_files,
            allow_agent=allow_agent,
            look_for_keys=look_for_keys,
            proxy_command=None if proxy.lower() == "none" else proxy,
        )
        return hop, None if jump.lower() == "none" else jump


def load_ssh_config(host: str, path: str | None) -> paramiko.SSHConfig:
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


# --------------------------------------------------------------------------- sockets


def open_socket(hop: Hop, deadline: float, register: Callable[[object], None]) -> object:
    """A TCP socket (or ProxyCommand pipe) to the first hop, tuned for dead-peer detection.

    Each socket is passed to `register` before it connects, so closing the
    connection (the watchdog does at the deadline) interrupts the connect.
    """
    if hop.proxy_command:
        proxy = paramiko.ProxyCommand(hop.proxy_command)
        register(proxy)
        return proxy
    infos = _resolve(hop.address, hop.port, remaining(deadline))
    last: OSError | None = None
    for family, _, _, _, sockaddr in infos:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            register(sock)
            tune_socket(sock)
            sock.settimeout(remaining(deadline))
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise last or OSError(errno.EHOSTUNREACH, "no address")


def open_jump_channel(transport: paramiko.Transport, hop: Hop, deadline: float) -> paramiko.Channel:
    """A tunnel to `hop` through the already logged-in hop before it (like `ssh -J`)."""
    return transport.open_channel(
        "direct-tcpip",
        (hop.address, hop.port),
        ("127.0.0.1", 0),
        timeout=remaining(deadline),
    )


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


def tune_socket(sock: socket.socket) -> None:
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
