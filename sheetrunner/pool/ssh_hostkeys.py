"""Which SSH host keys to trust: known_hosts, the reject / accept-new policies, pinning.

Host key checking is the one place where a wrong default costs security and
a vague error costs an afternoon, so it lives apart from the transport:
known_hosts is only read, never rewritten by paramiko; "reject" (the default)
refuses an unknown key and prints the command that trusts it; "accept-new"
trusts a key the first time and pins it by appending to known_hosts
atomically under a lock, so many hosts connecting at once cannot corrupt the
file. A changed key is refused under both policies, with what to do about it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shlex
import threading
from collections.abc import Iterator

import paramiko

from sheetrunner.atomic import write_atomic
from sheetrunner.errors import HostKeyError
from sheetrunner.pool.ssh_target import Hop

log = logging.getLogger(__name__)

HOST_KEY_POLICIES = ("reject", "accept-new")

_KNOWN_HOSTS_LOCK = threading.Lock()


def apply_host_key_policy(
    client: paramiko.SSHClient, host: str, hop: Hop, known_hosts: str, policy: str
) -> None:
    """Make `client` check `hop`'s key against known_hosts (read-only) under `policy`."""
    if os.path.exists(known_hosts):
        try:
            client.load_system_host_keys(known_hosts)  # read-only: never written back
        except (OSError, paramiko.SSHException, ValueError) as exc:
            raise HostKeyError(
                f"host {host}: cannot read known_hosts file {known_hosts}: {exc}"
            ) from exc
    if policy == "accept-new":
        client.set_missing_host_key_policy(_AcceptNewKey(host, hop, known_hosts))
    else:
        client.set_missing_host_key_policy(_RejectUnknownKey(host, hop, known_hosts))


def changed_key_message(
    host: str, hop: Hop, known_hosts: str, expected: paramiko.PKey, offered: paramiko.PKey
) -> str:
    name = hop.known_hosts_name
    return (
        f"host {host}: the SSH host key of {name} changed: {known_hosts} has "
        f"{_fingerprint(expected)}, the host offered {_fingerprint(offered)}. If the host was "
        f"rebuilt, remove the old line with: ssh-keygen -R {shlex.quote(name)} -f "
        f"{shlex.quote(known_hosts)} ; otherwise do not connect: someone may be intercepting "
        "the connection"
    )


def _fingerprint(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.fingerprint}"


def _keyscan_command(hop: Hop) -> str:
    port = "" if hop.port == 22 else f"-p {hop.port} "
    return f"ssh-keyscan {port}{shlex.quote(hop.address)}"


class _RejectUnknownKey(paramiko.MissingHostKeyPolicy):
    """RejectPolicy whose error says exactly how to trust the key."""

    def __init__(self, host: str, hop: Hop, known_hosts: str) -> None:
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

    def __init__(self, host: str, hop: Hop, known_hosts: str) -> None:
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
                changed_key_message(self._host, self._hop, self._known_hosts, pinned, key)
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
