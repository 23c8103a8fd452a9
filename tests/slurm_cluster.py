"""A real single-node Slurm cluster for tests: slurmctld + slurmd from Debian's packages
(scripts/install-slurm.sh), in a temporary directory, with auth/none and fake GPUs.

The node is this machine (`NodeName=localhost`, `slurmd -N localhost`); its four GPUs are
GRES entries whose files are symlinks to /dev/null, which is all Slurm needs to hand them
out. `cred_expire=5` and 1 s scheduler passes make a requeued job start again within
seconds. Every client command needs SLURM_CONF (`cluster.env`). Stopped with SIGTERM, and
each daemon waited for (children of this process: never left as zombies).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

GPUS = 4
CPUS = 8  # more CPUs than the machine has (config_overrides): 8 one-CPU jobs at once


def slurm_installed() -> bool:
    return all(
        shutil.which(c, path=os.environ.get("PATH", "") + ":/usr/sbin")
        for c in ("slurmctld", "slurmd", "sbatch", "squeue")
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.conf = base / "etc" / "slurm.conf"
        self.procs: list[subprocess.Popen] = []
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.env["PATH"] = self.env.get("PATH", "") + ":/usr/sbin"

    def write_config(self) -> None:
        for d in ("etc", "state", "spool", "log", "pids", "dev"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        for i in range(GPUS):
            link = self.base / "dev" / f"nvidia{i}"
            if not link.exists():
                link.symlink_to("/dev/null")
        b = self.base
        ctl, node = _free_port(), _free_port()
        self.conf.write_text(
            f"""ClusterName=ci
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/none
CredType=cred/none
AuthInfo=cred_expire=5
SlurmctldPort={ctl}
SlurmdPort={node}
StateSaveLocation={b}/state
SlurmdSpoolDir={b}/spool
SlurmctldPidFile={b}/pids/slurmctld.pid
SlurmdPidFile={b}/pids/slurmd.pid
SlurmctldLogFile={b}/log/slurmctld.log
SlurmdLogFile={b}/log/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
KillWait=5
MinJobAge=600
SchedulerParameters=sched_interval=1,bf_interval=1
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs={CPUS} RealMemory=1000 Gres=gpu:{GPUS} State=UNKNOWN
PartitionName=gpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""
        )
        (b / "etc" / "gres.conf").write_text(
            f"NodeName=localhost Name=gpu File={b}/dev/nvidia[0-{GPUS - 1}]\n"
        )

    def start(self) -> None:
        self.write_config()
        for argv in (["slurmctld", "-D", "-i"], ["slurmd", "-D", "-N", "localhost"]):
            log = open(self.base / "log" / f"{argv[0]}.out", "ab")  # noqa: SIM115
            self.procs.append(
                subprocess.Popen(argv, env=self.env, stdout=log, stderr=log, cwd=self.base)
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            out = self.run("sinfo", "-h", "-n", "localhost", "-o", "%t", check=False)
            if out.strip() == "idle":
                return
            time.sleep(0.2)
        raise RuntimeError(f"the test Slurm cluster did not come up: {self.log_tail()}")

    def run(self, *argv: str, check: bool = True) -> str:
        # cwd: a plain sbatch writes slurm-<id>.out into the directory it runs in
        done = subprocess.run(
            argv, env=self.env, capture_output=True, text=True, timeout=30, cwd=self.base
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{argv}: {done.stderr}")
        return done.stdout

    def jobs(self) -> list[dict[str, str]]:
        """Every job Slurm knows: id, name, state, reason."""
        out = self.run("squeue", "-h", "-t", "all", "-o", "%i|%j|%T|%r")
        keys = ("id", "name", "state", "reason")
        return [dict(zip(keys, line.split("|"), strict=False)) for line in out.splitlines()]

    def log_tail(self) -> str:
        path = self.base / "log" / "slurmctld.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop(self) -> None:
        """Cancel every job and let the steps end (a slurmstepd whose slurmd is gone lingers,
        retrying, ignoring SIGTERM), then SIGTERM the daemons and wait for them (they are
        children of this process: never left as zombies); steps still left are killed."""
        self.run("scancel", "--me", check=False)
        deadline = time.monotonic() + 15
        while self.run("squeue", "-h", check=False).strip() and time.monotonic() < deadline:
            time.sleep(0.2)
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in self.steps():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def steps(self) -> list[int]:
        """slurmstepd processes of this cluster still running (by SLURM_CONF in their
        environment; a zombie left for PID 1 to reap does not count)."""
        marker = f"SLURM_CONF={self.conf}".encode()
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                environ = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                continue
            state = stat.rsplit(")", 1)[-1].split()[0]
            if state != "Z" and marker in environ.split(b"\0") and "slurmstepd" in stat:
                found.append(int(pid))
        return found


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    if not slurm_installed():
        pytest.skip("Slurm is not installed (scripts/install-slurm.sh)")
    if os.geteuid() != 0:
        pytest.skip("the test Slurm cluster runs slurmd, which needs root")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
    assert all(p.poll() is not None for p in cluster.procs)  # daemons waited for: no zombies
    assert not cluster.steps(), "slurmstepd left running"
