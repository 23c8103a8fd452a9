"""SshTransport against real OpenSSH sshd processes (see tests/sshd.py)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sheetrunner.errors import CommandTimeout, HostKeyError, HostUnreachable, TransportError
from sheetrunner.pool.ssh import SshTransport, _tune_socket

try:
    from tests.sshd import (
        QUERY_APPS,
        QUERY_GPU,
        FakeHost,
        SshdLab,
        fake_host,
        sshd_lab,
        sshd_lab_module,
    )
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    from sshd import QUERY_APPS, QUERY_GPU, FakeHost, SshdLab, fake_host, sshd_lab, sshd_lab_module

pytestmark = pytest.mark.sshd

__all__ = ["fake_host", "sshd_lab", "sshd_lab_module"]  # fixtures, imported for pytest

PRINT_ARGV = ["python3", "-c", "import sys, json; print(json.dumps(sys.argv[1:]))"]
HOSTILE = [
    "; rm -rf ~",
    "$(id)",
    "`id`",
    "a b  c",
    "it's",
    'say "hi"',
    "line1\nline2",
    "*",
    "~",
    "",
    "\\",
    "$HOME",
    "--",
    "-n",
    "&& echo pwned",
    "| cat",
    "> /tmp/x",
    "é✓ 漢字",
    "\t",
]


def make(lab: SshdLab, host: FakeHost, **overrides) -> SshTransport:
    """A transport to a fake host with test-friendly (short) timeouts."""
    kwargs = lab.transport_kwargs(host) | {
        "connect_timeout_s": 5,
        "keepalive_s": 5,
        "backoff_base_s": 0.2,
        "backoff_max_s": 1.0,
    }
    return SshTransport(**(kwargs | overrides))


@pytest.fixture
def transport(sshd_lab: SshdLab, fake_host: FakeHost):
    t = make(sshd_lab, fake_host)
    yield t
    t.close()


@pytest.fixture(scope="module")
def shared(sshd_lab_module: SshdLab):
    """One host and transport for tests that leave both healthy."""
    host = sshd_lab_module.add_host("shared", gpus=2)
    t = make(sshd_lab_module, host)
    yield t, host
    t.close()


def timed(fn, *args, **kwargs):
    started = time.monotonic()
    try:
        return fn(*args, **kwargs), time.monotonic() - started
    except Exception as exc:
        return exc, time.monotonic() - started


# --------------------------------------------------------------------------- commands


def test_run_returns_exit_code_stdout_stderr(shared):
    t, _ = shared
    result = t.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.exit_code, result.stdout, result.stderr) == (3, b"out\n", b"err\n")


def test_hostile_argv_arrives_verbatim(shared):
    t, _ = shared
    result = t.run(PRINT_ARGV + HOSTILE)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == HOSTILE
    printed = t.run(["printf", "%s\\0", *HOSTILE]).stdout
    assert printed.decode().split("\0")[:-1] == HOSTILE


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.text(
            st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=20
        ),
        max_size=6,
    )
)
def test_any_argv_arrives_verbatim(shared, items):
    t, _ = shared
    result = t.run(PRINT_ARGV + items)
    assert json.loads(result.stdout) == items


@pytest.mark.parametrize(
    "argv, error",
    [
        ([], ValueError),
        ("echo hi", TypeError),
        (["echo", "a\0b"], ValueError),
        ([b"ls"], TypeError),
    ],
)
def test_bad_argv_is_refused_before_connecting(argv, error):
    t = SshTransport("nowhere", "127.0.0.1", 1, "root", None, ssh_config=None)
    with pytest.raises(error):
        t.run(argv)


def test_stdin_is_delivered(shared):
    t, _ = shared
    data = os.urandom(3 * 2**20)
    result = t.run(["cat"], stdin=data, timeout_s=20)
    assert result.exit_code == 0 and result.stdout == data


def test_stdin_not_read_by_the_command_does_not_hang(shared):
    t, _ = shared
    result, elapsed = timed(t.run, ["true"], stdin=b"x" * (8 * 2**20), timeout_s=10)
    assert result.exit_code == 0 and elapsed < 5


def test_large_output_on_both_streams_is_not_lost(shared):
    t, _ = shared
    script = (
        "import sys\n"
        "for i in range(50):\n"
        "    sys.stdout.write(str(i % 10) * 100_000); sys.stdout.flush()\n"
        "    sys.stderr.write(chr(97 + i % 26) * 60_000); sys.stderr.flush()\n"
    )
    result = t.run(["python3", "-c", script], timeout_s=20)
    expected_out = "".join(str(i % 10) * 100_000 for i in range(50)).encode()
    expected_err = "".join(chr(97 + i % 26) * 60_000 for i in range(50)).encode()
    assert len(result.stdout) == 5_000_000 and len(result.stderr) == 3_000_000
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(expected_out).digest()
    assert result.stderr == expected_err


def test_output_over_the_cap_is_an_error_and_the_connection_survives(sshd_lab, fake_host):
    t = make(sshd_lab, fake_host, max_output_bytes=2**20)
    try:
        before = t.run(["sh", "-c", "echo $SSH_CONNECTION"]).stdout
        with pytest.raises(TransportError, match="more than 1048576 bytes") as info:
            t.run(["head", "-c", "3000000", "/dev/zero"])
        assert not isinstance(info.value, HostUnreachable | CommandTimeout)
        assert t.run(["sh", "-c", "echo $SSH_CONNECTION"]).stdout == before
    finally:
        t.close()


def test_timeout_raises_in_time_and_next_call_works(transport):
    error, elapsed = timed(transport.run, ["sleep", "5"], timeout_s=1)
    assert isinstance(error, CommandTimeout), error
    assert "host1" in str(error)
    assert 0.9 <= elapsed < 2.0
    assert transport.run(["echo", "ok"]).stdout == b"ok\n"


def test_connection_is_reused_until_closed(shared):
    t, _ = shared
    first = t.run(["sh", "-c", "echo $SSH_CONNECTION"]).stdout
    assert t.run(["sh", "-c", "echo $SSH_CONNECTION"]).stdout == first  # same client port
    t.close()
    assert t.run(["sh", "-c", "echo $SSH_CONNECTION"]).stdout != first


def test_many_threads_share_one_connection_at_most_8_channels(shared):
    t, _ = shared
    t.run(["true"])  # connect first, so all threads use the same connection
    command = ["sh", "-c", "sleep 0.4; echo $SSH_CONNECTION"]
    with ThreadPoolExecutor(16) as pool:
        started = time.monotonic()
        results = list(pool.map(lambda _: t.run(command, timeout_s=20), range(16)))
        elapsed = time.monotonic() - started
    assert all(r.exit_code == 0 for r in results)
    assert len({r.stdout for r in results}) == 1
    assert elapsed >= 0.8  # 16 commands through 8 slots take two rounds


def test_many_hosts_from_one_thread_pool(sshd_lab):
    hosts = [sshd_lab.add_host(f"gpu{i}", gpus=i + 1) for i in range(3)]
    transports = [make(sshd_lab, h) for h in hosts]
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda t: t.run(QUERY_GPU), transports * 3))
        assert [len(r.stdout.splitlines()) for r in results] == [1, 2, 3] * 3
    finally:
        for t in transports:
            t.close()


# --------------------------------------------------------------------------- files


def test_put_file_resolves_home_creates_dirs_sets_mode(shared):
    t, _ = shared
    top = f".sheetrunner-test-{uuid.uuid4().hex[:8]}"
    try:
        t.put_file(f"~/{top}/a/b/secret.json", b'{"k": 1}\n', mode=0o600)
        home = t.run(["sh", "-c", 'printf %s "$HOME"']).stdout.decode()
        path = f"{home}/{top}/a/b/secret.json"
        assert t.run(["cat", path]).stdout == b'{"k": 1}\n'
        assert t.run(["stat", "-c", "%a", path]).stdout == b"600\n"
        assert t.run(["ls", "-A", f"{home}/{top}/a/b"]).stdout == b"secret.json\n"
    finally:
        shutil.rmtree(Path.home() / top, ignore_errors=True)


def test_put_file_replaces_by_rename(shared):
    t, host = shared
    path = f"{host.root_dir}/bin/agent.py"
    t.put_file(path, b"v1\n", mode=0o755)
    inode = t.run(["stat", "-c", "%i %a", path]).stdout.split()
    t.put_file(path, b"v2\n", mode=0o755)
    after = t.run(["stat", "-c", "%i %a", path]).stdout.split()
    assert after[0] != inode[0] and after[1] == b"755"  # a new file, renamed over the old one
    assert t.run(["cat", path]).stdout == b"v2\n"
    assert t.run(["ls", "-A", f"{host.root_dir}/bin"]).stdout == b"agent.py\n"


def test_put_file_error_names_the_path(shared):
    t, host = shared
    (host.root_dir / "plainfile").write_text("x")
    with pytest.raises(TransportError, match="plainfile") as info:
        t.put_file(f"{host.root_dir}/plainfile/inside", b"x")
    assert not isinstance(info.value, HostUnreachable)
    assert t.run(["true"]).exit_code == 0


# --------------------------------------------------------------------------- host keys


def test_unknown_host_key_is_refused_with_instructions(sshd_lab, fake_host):
    sshd_lab.known_hosts.write_text("")
    t = make(sshd_lab, fake_host)
    with pytest.raises(HostKeyError) as info:
        t.run(["true"])
    message = str(info.value)
    assert f"ssh-keyscan -p {fake_host.port} 127.0.0.1 >> {sshd_lab.known_hosts}" in message
    assert "accept-new" in message and "host1" in message
    assert sshd_lab.known_hosts.read_text() == ""  # read-only by default


def test_changed_host_key_is_refused(sshd_lab, fake_host):
    t = make(sshd_lab, fake_host)
    assert t.run(["true"]).exit_code == 0
    t.close()
    fake_host.regenerate_host_key()
    with pytest.raises(HostKeyError, match="changed") as info:
        t.run(["true"])
    assert f"ssh-keygen -R '[127.0.0.1]:{fake_host.port}'" in str(info.value)


def test_accept_new_pins_the_first_key(sshd_lab, fake_host):
    sshd_lab.known_hosts.write_text("# pinned by sheetrunner\n")
    t = make(sshd_lab, fake_host, host_key_policy="accept-new")
    assert t.run(["true"]).exit_code == 0
    assert sshd_lab.known_hosts.read_text() == (
        "# pinned by sheetrunner\n" + fake_host.known_hosts_line() + "\n"
    )
    t.close()
    fake_host.regenerate_host_key()
    with pytest.raises(HostKeyError, match="changed"):
        t.run(["true"])


def test_accept_new_from_many_threads_keeps_every_key(sshd_lab):
    hosts = [sshd_lab.add_host(f"new{i}", gpus=0) for i in range(4)]
    sshd_lab.known_hosts.write_text("")
    transports = [make(sshd_lab, h, host_key_policy="accept-new") for h in hosts]
    try:
        with ThreadPoolExecutor(4) as pool:
            assert all(r.exit_code == 0 for r in pool.map(lambda t: t.run(["true"]), transports))
        lines = sorted(sshd_lab.known_hosts.read_text().splitlines())
        assert lines == sorted(h.known_hosts_line() for h in hosts)
    finally:
        for t in transports:
            t.close()


# --------------------------------------------------------------------------- failures


def test_killed_sshd_is_unreachable_quickly_then_recovers(sshd_lab, fake_host):
    transport = make(sshd_lab, fake_host, backoff_base_s=1.0)
    assert transport.run(["true"]).exit_code == 0
    fake_host.kill()
    error, elapsed = timed(transport.run, ["true"])
    assert isinstance(error, HostUnreachable), error
    assert "host1" in str(error) and elapsed < 2  # connect_timeout_s + keepalive_s = 10
    again, elapsed = timed(transport.run, ["true"])
    assert isinstance(again, HostUnreachable) and "not retrying" in str(again) and elapsed < 0.1
    fake_host.restart()  # the transport notices once its backoff window (1 s) has passed
    deadline = time.monotonic() + 5
    while True:
        result, _ = timed(transport.run, ["echo", "back"])
        if not isinstance(result, HostUnreachable) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    transport.close()
    assert result.stdout == b"back\n"


def test_connection_dying_mid_command_is_unreachable_not_an_exit_code(sshd_lab, fake_host):
    transport = make(sshd_lab, fake_host)
    assert transport.run(["true"]).exit_code == 0
    threading.Timer(0.5, fake_host.kill).start()
    error, elapsed = timed(transport.run, ["sleep", "5"], timeout_s=10)
    assert isinstance(error, HostUnreachable), error
    assert elapsed < 2


def test_a_timeout_fails_the_commands_sharing_its_connection(shared):
    t, _ = shared
    t.run(["true"])
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(timed, t.run, ["sleep", "3"], timeout_s=10)
        time.sleep(0.2)
        short = pool.submit(timed, t.run, ["sleep", "3"], timeout_s=0.5)
        (slow_error, slow_elapsed), (short_error, _) = slow.result(), short.result()
    assert isinstance(short_error, CommandTimeout), short_error
    assert isinstance(slow_error, HostUnreachable) and "timed out" in str(slow_error)
    assert slow_elapsed < 2
    assert t.run(["echo", "ok"]).stdout == b"ok\n"


def test_nothing_listening_is_unreachable(sshd_lab, fake_host):
    fake_host.kill()
    error, elapsed = timed(make(sshd_lab, fake_host).run, ["true"])
    assert isinstance(error, HostUnreachable) and "refused" in str(error) and elapsed < 1


def test_silent_server_hits_connect_timeout():
    """A peer that accepts TCP but never speaks SSH must not hang the caller."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        t = SshTransport(
            "mute", "127.0.0.1", port, "root", None, ssh_config=None, connect_timeout_s=1
        )
        error, elapsed = timed(t.run, ["true"])
    assert isinstance(error, HostUnreachable) and "mute" in str(error), error
    assert 0.9 <= elapsed < 2.5


def test_frozen_host_times_out_and_recovers_after_thaw(sshd_lab, fake_host, transport):
    assert transport.run(["true"]).exit_code == 0
    fake_host.freeze()
    try:
        error, elapsed = timed(transport.run, ["true"], timeout_s=1)
    finally:
        fake_host.thaw()
    assert isinstance(error, CommandTimeout), error
    assert elapsed < 2.0
    assert transport.run(["echo", "ok"]).stdout == b"ok\n"


# --------------------------------------------------------------------------- ssh config


def test_ssh_config_alias_and_proxyjump(sshd_lab):
    jump = sshd_lab.add_host("jump", gpus=0)
    target = sshd_lab.add_host("target", gpus=1)
    config = sshd_lab.write_ssh_config(
        extra="\nHost via-jump\n    HostName 127.0.0.1\n"
        f"    Port {target.port}\n    ProxyJump jump\n"
        f"    IdentityFile {sshd_lab.client_key}\n"
    )
    common = {"known_hosts": str(sshd_lab.known_hosts), "ssh_config": str(config)}
    direct = SshTransport("target", None, None, None, None, **common)
    hopped = SshTransport("via-jump", None, None, None, None, **common)
    try:
        assert direct.run(["printenv", "SHEETRUNNER_FAKE_HOST"]).stdout == b"target\n"
        assert hopped.run(["printenv", "SHEETRUNNER_FAKE_HOST"]).stdout == b"target\n"
        hopped.close()
        jump.kill()
        with pytest.raises(HostUnreachable, match="jump host"):
            hopped.run(["true"])
        assert direct.run(["true"]).exit_code == 0
    finally:
        direct.close()
        hopped.close()


def test_ssh_config_proxycommand(sshd_lab, fake_host):
    if shutil.which("ssh") is None:
        pytest.skip("no ssh client for ProxyCommand")
    proxy = (
        f"ssh -F /dev/null -i {sshd_lab.client_key} -o UserKnownHostsFile={sshd_lab.known_hosts} "
        f"-o StrictHostKeyChecking=yes -o BatchMode=yes -p {fake_host.port} "
        f"{fake_host.user}@127.0.0.1 -W %h:%p"
    )
    config = Path(sshd_lab.base_dir / "proxy_config")
    config.write_text(
        f"Host iap\n    HostName 127.0.0.1\n    Port {fake_host.port}\n"
        f"    IdentityFile {sshd_lab.client_key}\n    ProxyCommand {proxy}\n"
    )
    t = SshTransport(
        "iap", None, None, None, None, known_hosts=str(sshd_lab.known_hosts), ssh_config=str(config)
    )
    try:
        assert t.run(["echo", "tunnelled"]).stdout == b"tunnelled\n"
    finally:
        t.close()


def test_ssh_agent_is_used_without_identity(sshd_lab, fake_host, monkeypatch):
    if shutil.which("ssh-agent") is None:
        pytest.skip("no ssh-agent")
    sock_dir = tempfile.mkdtemp(prefix="sr-agent-")  # short path: unix sockets max ~108 bytes
    sock = f"{sock_dir}/agent"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", sock], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.01)
        env = {**os.environ, "SSH_AUTH_SOCK": sock}
        subprocess.run(
            ["ssh-add", "-q", str(sshd_lab.client_key)], env=env, check=True, capture_output=True
        )
        monkeypatch.setenv("SSH_AUTH_SOCK", sock)
        t = make(sshd_lab, fake_host, identity=None)
        try:
            assert t.run(["echo", "agent"]).stdout == b"agent\n"
        finally:
            t.close()
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(5)
        shutil.rmtree(sock_dir, ignore_errors=True)


def test_missing_identity_file_is_unreachable_with_hint(sshd_lab, fake_host):
    t = make(sshd_lab, fake_host, identity="/nonexistent/id_ed25519")
    with pytest.raises(HostUnreachable, match="identity file /nonexistent/id_ed25519"):
        t.run(["true"])


def test_wrong_key_is_an_authentication_error(sshd_lab, fake_host, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    t = make(sshd_lab, fake_host, identity=str(other))
    with pytest.raises(HostUnreachable, match="login .* failed"):
        t.run(["true"])


# --------------------------------------------------------------------------- fake nvidia-smi


def test_fake_nvidia_smi_answers_the_probe_queries(shared):
    t, host = shared
    gpus = t.run(QUERY_GPU).stdout.decode().splitlines()
    uuids = host.gpu_uuids
    assert gpus == [f"{i}, {uuids[i]}, NVIDIA H100 80GB HBM3, 3, 81559, 0" for i in range(2)]
    assert t.run(QUERY_APPS).stdout == b""

    host.set_gpu_busy(1, pid=777, used_mib=5000, utilization=88)
    try:
        assert t.run(QUERY_APPS).stdout.decode() == f"{uuids[1]}, 777, 5000\n"
        busy = t.run(QUERY_GPU).stdout.decode().splitlines()[1]
        assert busy == f"1, {uuids[1]}, NVIDIA H100 80GB HBM3, 5003, 81559, 88"
    finally:
        host.set_gpu_free(1)

    host.set_nvidia_smi("fail")
    try:
        failed = t.run(QUERY_GPU)
        assert failed.exit_code == 15 and b"Unknown Error" in failed.stdout
    finally:
        host.set_nvidia_smi("ok")


def test_fake_host_kill_with_jobs_kills_detached_processes(shared):
    """kill(jobs=True) is how tests simulate a dead machine; the job must really be gone."""
    t, host = shared
    marker = f"sleep 300.{uuid.uuid4().int % 10**9}"  # unique command line to look for
    t.run(["sh", "-c", f"setsid -f {marker} </dev/null >/dev/null 2>&1"])
    pids = lambda: subprocess.run(["pgrep", "-f", marker], capture_output=True).stdout.split()  # noqa: E731
    assert pids()
    host.kill(jobs=True)
    deadline = time.monotonic() + 3
    while pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive([int(p) for p in pids()])
    host.start()
    t.close()
    assert t.run(["true"]).exit_code == 0


def _alive(pids: list[int]) -> list[int]:
    """Pids that exist and are not zombies (this sandbox's PID 1 reaps lazily)."""
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            alive.append(pid)
    return alive


def test_sockets_are_tuned_for_dead_peer_detection():
    with socket.socket() as sock:
        _tune_socket(sock)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) > 0
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) > 0


def test_watchdog_thread_count_stays_flat(shared):
    """Deadlines share one watchdog thread: no Timer thread is left behind per call."""
    t, _ = shared
    t.run(["true"])
    before = threading.active_count()
    for _ in range(5):
        t.run(["true"], timeout_s=30)
    assert threading.active_count() <= before + 1
