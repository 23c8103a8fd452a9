"""Fake hosts for tests: real OpenSSH `sshd` processes on 127.0.0.1, one per host.

Mocks of paramiko would hide exactly the behaviour that matters (channel
limits, EOF ordering, dead peers, host keys), so tests talk to real sshd.
Each fake host has its own port, host key, sshd_config, log, `bin/` directory
first on PATH (with a fake `nvidia-smi`) and a `root_dir` to use as
sheetrunner's remote root. All hosts log in as the current user, so they
share HOME: put per-host state under `root_dir`, never directly in `~/`.

Use from a test module:

    from sshd import sshd_lab, fake_host      # fixtures (or `tests.sshd`)

    @pytest.mark.sshd
    def test_x(fake_host):
        fake_host.port, fake_host.lab.client_key, fake_host.lab.known_hosts ...

or as a plugin: `pytest_plugins = ["tests.sshd"]` in the top-level conftest.

Every process started over SSH inherits SHEETRUNNER_FAKE_LAB/SHEETRUNNER_FAKE_HOST,
which is how `kill(jobs=True)` finds detached jobs to simulate a dead machine.
Requires `openssh-server` (`/usr/sbin/sshd`) and `ssh-keygen`.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"  # sshd re-executes itself and refuses a relative path
SSH_KEYGEN = "ssh-keygen"
ADDRESS = "127.0.0.1"
START_TIMEOUT_S = 5.0

DEFAULT_GPU_NAME = "NVIDIA H100 80GB HBM3"
DEFAULT_GPU_MEMORY_MIB = 81559

QUERY_GPU = (
    "nvidia-smi --query-gpu=index,uuid,name,memory.used,memory.total,utilization.gpu "
    "--format=csv,noheader,nounits"
).split()
QUERY_APPS = (
    "nvidia-smi --query-compute-apps=gpu_uuid,pid,used_memory --format=csv,noheader,nounits"
).split()


# --------------------------------------------------------------------------- small helpers


def free_port() -> int:
    """A port nothing listens on right now (the kernel picks it)."""
    with socket.socket() as s:
        s.bind((ADDRESS, 0))
        return s.getsockname()[1]


def generate_key(path: Path, comment: str) -> None:
    """A fresh passphrase-less ed25519 key pair at path and path.pub."""
    for p in (path, path.with_name(path.name + ".pub")):
        p.unlink(missing_ok=True)
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )


def wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    """Return once 127.0.0.1:port accepts TCP connections."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"sshd exited with code {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((ADDRESS, port), 0.2):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing accepted connections on {ADDRESS}:{port}")
        time.sleep(0.01)


def _parent_map() -> dict[int, int]:
    """pid -> ppid for every process, from /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            parents[int(entry)] = int(stat.rpartition(")")[2].split()[1])
    return parents


def _descendants(root: int) -> set[int]:
    parents = _parent_map()
    found = {root}
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    found.discard(root)
    return found


def _processes_with_env(markers: Iterable[bytes]) -> set[int]:
    """Pids whose environment holds every `NAME=value` marker."""
    wanted = [m + b"\0" for m in markers]
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            env = Path(f"/proc/{entry}/environ").read_bytes() + b"\0"
            if all(b"\0" + m in b"\0" + env for m in wanted):
                found.add(int(entry))
    return found


def _signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _freeze_and_kill(find: callable) -> None:
    """SIGSTOP until the set stops growing (stopped processes cannot fork), then SIGKILL."""
    stopped: set[int] = set()
    while True:
        new = find() - stopped
        if not new:
            break
        _signal_all(new, signal.SIGSTOP)
        stopped |= new
    _signal_all(stopped, signal.SIGKILL)


# --------------------------------------------------------------------------- fake nvidia-smi

_NVIDIA_SMI = r'''#!{python} -I
"""Fake nvidia-smi for sheetrunner tests; state lives in {state}."""
import json, sys, time

STATE = {state!r}
GPU_FIELDS = {{
    "index": lambda g: (str(g["index"]), ""),
    "uuid": lambda g: (g["uuid"], ""),
    "name": lambda g: (g["name"], ""),
    "memory.used": lambda g: (str(used(g)), " MiB"),
    "memory.total": lambda g: (str(g["memory_total"]), " MiB"),
    "memory.free": lambda g: (str(g["memory_total"] - used(g)), " MiB"),
    "utilization.gpu": lambda g: (str(g["utilization"]), " %"),
    "temperature.gpu": lambda g: (str(g["temperature"]), ""),
}}
APP_FIELDS = {{
    "gpu_uuid": lambda g, p: (g["uuid"], ""),
    "pid": lambda g, p: (str(p["pid"]), ""),
    "process_name": lambda g, p: (p["name"], ""),
    "used_memory": lambda g, p: (str(p["used_memory"]), " MiB"),
    "used_gpu_memory": lambda g, p: (str(p["used_memory"]), " MiB"),
}}


def used(g):
    return g["memory_idle"] + sum(p["used_memory"] for p in g["procs"])


def fail(message, code=2):
    print(message)
    sys.exit(code)


def table(fields, known, rows, fmt):
    for f in fields:
        if f not in known:
            fail('Field "%s" is not a valid field to query.' % f)
    lines = []
    if "noheader" not in fmt:
        lines.append(", ".join(fields))
    for row in rows:
        cells = []
        for f in fields:
            value, unit = known[f](*row)
            cells.append(value if "nounits" in fmt else value + unit)
        lines.append(", ".join(cells))
    return lines


def xml(gpus):
    """`nvidia-smi -q -x`, the parts the agent reads (one call for GPUs and processes)."""
    out = ['<?xml version="1.0" ?>', "<nvidia_smi_log>"]
    for g in gpus:
        procs = "".join(
            "<process_info><pid>%d</pid><type>C</type><process_name>%s</process_name>"
            "<used_memory>%d MiB</used_memory></process_info>" % (p["pid"], p["name"], p["used_memory"])
            for p in g["procs"]
        )
        out.append(
            '<gpu id="00000000:%02X:00.0"><product_name>%s</product_name><uuid>%s</uuid>'
            "<fb_memory_usage><total>%d MiB</total><used>%d MiB</used></fb_memory_usage>"
            "<utilization><gpu_util>%d %%</gpu_util></utilization>"
            "<ecc_errors><volatile><dram_uncorrectable>0</dram_uncorrectable></volatile></ecc_errors>"
            "<processes>%s</processes></gpu>"
            % (g["index"], g["name"], g["uuid"], g["memory_total"], used(g), g["utilization"], procs)
        )
    return out + ["</nvidia_smi_log>"]


def main(args):
    with open(STATE) as f:
        state = json.load(f)
    if state.get("calls"):  # the bench counts nvidia-smi starts
        with open(state["calls"], "a") as f:
            f.write(" ".join(args) + "\n")
    if state["mode"] == "hang":
        time.sleep(3600)
    if state["mode"] == "fail":
        fail("Unable to determine the device handle for GPU 0000:00:04.0: Unknown Error", 15)
    gpus = state["gpus"]
    opts = dict(a.split("=", 1) for a in args if a.startswith("--") and "=" in a)
    fmt = opts.get("--format", "csv").split(",")
    if args == ["-L"]:
        lines = ["GPU %d: %s (UUID: %s)" % (g["index"], g["name"], g["uuid"]) for g in gpus]
    elif args == ["-q", "-x"]:
        lines = xml(gpus)
    elif "--query-gpu" in opts:
        rows = [(g,) for g in gpus]
        lines = table(opts["--query-gpu"].split(","), GPU_FIELDS, rows, fmt)
    elif "--query-compute-apps" in opts:
        rows = [(g, p) for g in gpus for p in g["procs"]]
        lines = table(opts["--query-compute-apps"].split(","), APP_FIELDS, rows, fmt)
    else:
        fail("fake nvidia-smi: unsupported arguments: %s" % " ".join(args))
    if lines:
        print("\n".join(lines))


main(sys.argv[1:])
'''


# --------------------------------------------------------------------------- fake host


class FakeHost:
    """One fake machine: an sshd on its own port with its own key, bin/ and remote root."""

    def __init__(self, lab: SshdLab, name: str, gpus: int, extra_config: Iterable[str]) -> None:
        self.lab = lab
        self.name = name
        self.address = ADDRESS
        self.user = lab.user
        self.dir = lab.base_dir / name
        self.bin_dir = self.dir / "bin"
        self.root_dir = self.dir / ".sheetrunner"  # use as the host's `root` setting
        self.host_key = self.dir / "ssh_host_ed25519_key"
        self.config_path = self.dir / "sshd_config"
        self.log_path = self.dir / "sshd.log"
        self.gpu_state_path = self.dir / "gpu-state.json"
        self.extra_config = list(extra_config)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.bin_dir.mkdir(parents=True)
        self.root_dir.mkdir()
        generate_key(self.host_key, f"host-key-{name}")
        self._write_config()
        if gpus:
            self._install_nvidia_smi(gpus)

    def __repr__(self) -> str:
        return f"FakeHost({self.name!r}, port={self.port}, running={self.running})"

    # ---------------------------------------------------------------- lifecycle

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start sshd (same port and key as before) and wait until it accepts connections."""
        if self.running:
            return
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        try:
            wait_for_port(self.port, START_TIMEOUT_S, self.proc)
        except RuntimeError as exc:
            self.kill()
            raise RuntimeError(f"fake host {self.name}: {exc}\n{self.log_tail()}") from exc

    def kill(self, jobs: bool = False) -> None:
        """SIGKILL sshd and every session process under it, like an sshd crash.

        With jobs=True also every process started over SSH on this host that
        has since detached (setsid, nohup): the machine "died".
        """
        if self.proc is not None:
            listener = self.proc.pid
            _freeze_and_kill(
                lambda: _descendants(listener) | ({listener} if self.running else set())
            )
            self.proc.wait()
        if jobs:
            _freeze_and_kill(lambda: _processes_with_env(self.env_markers))

    def restart(self) -> None:
        """kill() then start() on the same port with the same host key."""
        self.kill()
        self.start()

    def stop(self) -> None:
        """kill(jobs=True): leave nothing of this host running."""
        self.kill(jobs=True)

    def freeze(self) -> None:
        """SIGSTOP sshd and its sessions: the host looks alive to TCP but answers nothing."""
        _signal_all(self._sshd_pids(), signal.SIGSTOP)

    def thaw(self) -> None:
        _signal_all(self._sshd_pids(), signal.SIGCONT)

    def _sshd_pids(self) -> set[int]:
        if not self.running:
            return set()
        return _descendants(self.proc.pid) | {self.proc.pid}

    def regenerate_host_key(self) -> None:
        """Give the host a new key (a rebuilt machine at the same address); restarts sshd."""
        was_running = self.running
        self.kill()
        generate_key(self.host_key, f"host-key-{self.name}-{uuid.uuid4().hex[:6]}")
        if was_running:
            self.start()

    # ---------------------------------------------------------------- facts for clients

    @property
    def env_markers(self) -> list[bytes]:
        return [
            f"SHEETRUNNER_FAKE_LAB={self.lab.lab_id}".encode(),
            f"SHEETRUNNER_FAKE_HOST={self.name}".encode(),
        ]

    @property
    def known_hosts_name(self) -> str:
        return f"[{self.address}]:{self.port}"

    def known_hosts_line(self) -> str:
        key_type, key_b64 = (
            self.host_key.with_name(self.host_key.name + ".pub").read_text().split()[:2]
        )
        return f"{self.known_hosts_name} {key_type} {key_b64}"

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    # ---------------------------------------------------------------- fake GPUs

    @property
    def gpu_uuids(self) -> list[str]:
        return [g["uuid"] for g in self._gpu_state()["gpus"]]

    def set_gpu_busy(
        self,
        index: int,
        pid: int = 424242,
        used_mib: int = 30000,
        utilization: int = 97,
        process_name: str = "python3",
    ) -> None:
        """Show a foreign process on GPU `index` (in both nvidia-smi queries)."""
        state = self._gpu_state()
        gpu = state["gpus"][index]
        gpu["procs"].append({"pid": pid, "name": process_name, "used_memory": used_mib})
        gpu["utilization"] = utilization
        self._save_gpu_state(state)

    def set_gpu_memory_used(self, index: int, used_mib: int) -> None:
        """Memory in use on GPU `index` with no process nvidia-smi lists (another user's, in a
        container that hides it): only its free memory says the GPU is not free."""
        state = self._gpu_state()
        state["gpus"][index]["memory_idle"] = used_mib
        self._save_gpu_state(state)

    def set_gpu_free(self, index: int) -> None:
        state = self._gpu_state()
        state["gpus"][index].update(procs=[], utilization=0)
        self._save_gpu_state(state)

    def set_nvidia_smi(self, mode: str) -> None:
        """ "ok", "fail" (driver error, exit 15) or "hang" (sleeps an hour)."""
        assert mode in ("ok", "fail", "hang"), mode
        state = self._gpu_state()
        state["mode"] = mode
        self._save_gpu_state(state)

    def _install_nvidia_smi(self, gpus: int) -> None:
        self._save_gpu_state(
            {
                "mode": "ok",
                "gpus": [
                    {
                        "index": i,
                        "uuid": f"GPU-{uuid.uuid5(uuid.NAMESPACE_URL, f'{self.lab.lab_id}/{self.name}/{i}')}",
                        "name": DEFAULT_GPU_NAME,
                        "memory_total": DEFAULT_GPU_MEMORY_MIB,
                        "memory_idle": 3,
                        "utilization": 0,
                        "temperature": 30,
                        "procs": [],
                    }
                    for i in range(gpus)
                ],
            }
        )
        script = self.bin_dir / "nvidia-smi"
        script.write_text(_NVIDIA_SMI.format(python=sys.executable, state=str(self.gpu_state_path)))
        script.chmod(0o755)

    def _gpu_state(self) -> dict:
        return json.loads(self.gpu_state_path.read_text())

    def _save_gpu_state(self, state: dict) -> None:
        tmp = self.gpu_state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.gpu_state_path)  # the script never sees a half-written file

    # ---------------------------------------------------------------- sshd_config

    def _write_config(self) -> None:
        path = ":".join(
            [
                str(self.bin_dir),
                os.path.dirname(sys.executable),
                "/usr/local/sbin",
                "/usr/local/bin",
                "/usr/sbin",
                "/usr/bin",
                "/sbin",
                "/bin",
            ]
        )
        env = [
            f"PATH={path}",
            *(m.decode() for m in self.env_markers),
            f"SHEETRUNNER_FAKE_ROOT={self.root_dir}",
        ]
        lines = [
            f"Port {self.port}",
            f"ListenAddress {self.address}",
            f"HostKey {self.host_key}",
            "PidFile none",
            "UsePAM no",
            "PermitRootLogin prohibit-password",
            "StrictModes no",
            f"AuthorizedKeysFile {self.lab.authorized_keys}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "Subsystem sftp internal-sftp",
            "MaxStartups 100:30:200",
            "PrintMotd no",
            "UseDNS no",
            "LogLevel INFO",
            "SetEnv " + " ".join(f'"{e}"' for e in env),
            *self.extra_config,
        ]
        self.config_path.write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- lab


class SshdLab:
    """A set of fake hosts sharing one client key, authorized_keys and known_hosts file."""

    def __init__(self, base_dir: Path) -> None:
        if not os.path.exists(SSHD):
            raise RuntimeError(
                f"{SSHD} not found: install OpenSSH's server "
                "(scripts/install-sshd.sh installs it without starting its service)"
            )
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation dir
        self.base_dir = Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.lab_id = uuid.uuid4().hex[:12]
        self.user = getpass.getuser()
        self.home = Path(pwd.getpwuid(os.getuid()).pw_dir)
        self.client_key = self.base_dir / "client_ed25519"
        self.authorized_keys = self.base_dir / "authorized_keys"
        self.known_hosts = self.base_dir / "known_hosts"
        self.hosts: dict[str, FakeHost] = {}
        generate_key(self.client_key, "sheetrunner-test-client")
        self.authorized_keys.write_text(
            self.client_key.with_name(self.client_key.name + ".pub").read_text()
        )
        self.known_hosts.write_text("")

    def add_host(
        self, name: str, *, gpus: int = 2, extra_config: Iterable[str] = (), start: bool = True
    ) -> FakeHost:
        """A new fake host (started unless start=False); known_hosts is rewritten to include it."""
        if name in self.hosts:
            raise ValueError(f"fake host {name} exists already")
        host = FakeHost(self, name, gpus, extra_config)
        self.hosts[name] = host
        if start:
            host.start()
        self.write_known_hosts()
        return host

    def write_known_hosts(
        self, path: Path | None = None, hosts: Iterable[FakeHost] | None = None
    ) -> Path:
        """Write `[127.0.0.1]:PORT key` lines for hosts (default: all) to path (default: lab's)."""
        path = Path(path or self.known_hosts)
        chosen = self.hosts.values() if hosts is None else hosts
        path.write_text("".join(h.known_hosts_line() + "\n" for h in chosen))
        return path

    def write_ssh_config(self, path: Path | None = None, extra: str = "") -> Path:
        """An ssh_config with a `Host NAME` block per fake host, plus `extra` text at the end."""
        path = Path(path or self.base_dir / "ssh_config")
        blocks = [
            f"Host {h.name}\n    HostName {h.address}\n    Port {h.port}\n    User {h.user}\n"
            f"    IdentityFile {self.client_key}\n"
            for h in self.hosts.values()
        ]
        path.write_text("\n".join(blocks) + extra)
        return path

    def transport_kwargs(self, host: FakeHost) -> dict:
        """Keyword arguments for SshTransport that reach `host` with the lab's key and known_hosts."""
        return {
            "host": host.name,
            "address": host.address,
            "port": host.port,
            "user": host.user,
            "identity": str(self.client_key),
            "known_hosts": str(self.known_hosts),
            "ssh_config": None,
        }

    def close(self) -> None:
        for host in self.hosts.values():
            host.stop()


# --------------------------------------------------------------------------- pytest fixtures


@pytest.fixture
def sshd_lab(tmp_path: Path) -> Iterator[SshdLab]:
    """A lab for one test; every host it started is killed afterwards."""
    lab = SshdLab(tmp_path / "sshd-lab")
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="module")
def sshd_lab_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdLab]:
    """A lab shared by a module's tests (cheaper when tests don't break their hosts)."""
    lab = SshdLab(tmp_path_factory.mktemp("sshd-lab"))
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def fake_host(sshd_lab: SshdLab) -> FakeHost:
    """One running fake host with 2 fake GPUs."""
    return sshd_lab.add_host("host1", gpus=2)


# A stand-in for a cloud's "start the VM" command (`[[hosts]] repair` in tests): after
# DELAY seconds it starts a fake host's sshd again and waits until its port answers.
# argv: SSHD CONFIG LOG PID_FILE PORT DELAY
REVIVE_SSHD = """\
import socket, subprocess, sys, time
sshd, config, log, pid_file, port, delay = sys.argv[1:7]
time.sleep(float(delay))
with open(log, "ab") as out:
    proc = subprocess.Popen([sshd, "-D", "-e", "-f", config], stdout=out, stderr=out,
                            stdin=subprocess.DEVNULL, start_new_session=True)
open(pid_file, "w").write(str(proc.pid))
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    try:
        socket.create_connection(("127.0.0.1", int(port)), 0.2).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit(1)
"""
