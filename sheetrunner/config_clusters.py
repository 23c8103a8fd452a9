"""`[[clusters]]`: Slurm clusters the sheet's rows may go to, beside the SSH hosts.

A cluster is reached like a host (its login node over SSH with the `[ssh]` settings, or
`local = true` on the login node itself) and keeps its attempt directories under `root`,
on the filesystem its nodes share. Everything that changes how a job is submitted comes
from here, never from a sheet cell.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config_checks import (
    expect,
    expect_list_of_str,
    non_negative_int,
    opt_str,
    positive,
    resolve,
    table_name,
    unique_names,
)
from .errors import ConfigError

# Slurm's --time forms: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
SLURM_TIME_RE = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
TIME_EXAMPLE = 'time = "24:00:00"'
# sbatch options sheetrunner sets itself: a config that set them too would break the contract.
OWN_OPTIONS = (
    "--job-name",
    "-J",
    "--output",
    "-o",
    "--error",
    "-e",
    "--open-mode",
    "--signal",
    "--requeue",
    "--no-requeue",
    "--parsable",
    "--array",
    "-a",
    "--wrap",
    "--chdir",
    "-D",
)

CLUSTER_KEYS = {
    "name",
    "kind",
    "local",
    "login",
    "user",
    "port",
    "identity",
    "partition",
    "account",
    "time",
    "root",
    "python",
    "sbatch_args",
    "gpus",
    "jobs",
    "labels",
    "signal_lead",
    "slurm_conf",
}


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    partition: str
    root: str  # on the shared filesystem: every node sees the same attempt directories
    kind: str = "slurm"
    local: bool = False  # this machine is a login node: the commands run here
    login: str | None = None  # the login node, reached over SSH like a host
    user: str | None = None
    port: int | None = None
    identity: str | None = None
    account: str | None = None
    time: str | None = None  # default --time; a row's time_limit overrides it
    python: str = "python3"  # on the nodes: runs the agent's supervisor around each job
    sbatch_args: tuple[str, ...] = ()
    gpus: int = 64  # GPUs sheetrunner may have queued or running on the cluster at once
    jobs: int = 64  # CPU-only runs (gpus = 0) queued or running at once
    labels: tuple[str, ...] = ()
    signal_lead_s: int = 60  # --signal=B:USR1@lead: a job's warning before its time limit
    slurm_conf: str | None = None  # SLURM_CONF for the commands; None: the cluster's own


def parse_clusters(raw: Any, base: Path) -> tuple[ClusterConfig, ...]:
    expect("clusters", raw, list, '[[clusters]] tables, e.g.\n[[clusters]]\nname = "campus"')
    clusters = tuple(_cluster(i, spec, base) for i, spec in enumerate(raw))
    unique_names("cluster", [c.name for c in clusters])
    return clusters


def _cluster(index: int, raw: Any, base: Path) -> ClusterConfig:
    name = table_name("cluster", f"clusters[{index}]", raw, CLUSTER_KEYS, "campus")
    where = f"clusters[{name}]"
    kind = raw.get("kind", "slurm")
    if kind != "slurm":
        raise ConfigError(f'{where}.kind = {kind!r}; the only kind supported is kind = "slurm"')
    local = raw.get("local", False)
    expect(f"{where}.local", local, bool, "true")
    login = opt_str(f"{where}.login", raw.get("login"))
    if not local and login is None:
        raise ConfigError(
            f'{where}: say how to reach the cluster: login = "login.campus.edu" (over SSH) '
            "or local = true (this machine is a login node)"
        )
    partition = opt_str(f"{where}.partition", raw.get("partition"))
    if partition is None:
        raise ConfigError(f'{where}.partition is missing; e.g. partition = "gpu"')
    root = opt_str(f"{where}.root", raw.get("root"))
    if root is None:
        raise ConfigError(
            f"{where}.root is missing; name a directory on the cluster's shared filesystem, "
            'e.g. root = "/shared/lab/sheetrunner"'
        )
    if local:
        root = str(resolve(base, root))
    args = raw.get("sbatch_args", [])
    expect_list_of_str(f"{where}.sbatch_args", args, '["--qos=normal"]')
    _check_sbatch_args(f"{where}.sbatch_args", args)
    labels = raw.get("labels", [])
    expect_list_of_str(f"{where}.labels", labels, '["a100"]')
    port = raw.get("port")
    if port is not None and (
        isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536
    ):
        raise ConfigError(f"{where}.port = {port!r}; use a TCP port number, e.g. port = 22")
    lead = positive(f"{where}.signal_lead", raw.get("signal_lead", 60), "60")
    python = opt_str(f"{where}.python", raw.get("python"))
    return ClusterConfig(
        name=name,
        partition=partition,
        root=root,
        local=local,
        login=login,
        user=opt_str(f"{where}.user", raw.get("user")),
        port=port,
        identity=opt_str(f"{where}.identity", raw.get("identity")),
        account=opt_str(f"{where}.account", raw.get("account")),
        time=slurm_time(f"{where}.time", raw.get("time")),
        python=python or (sys.executable if local else "python3"),
        sbatch_args=tuple(args),
        gpus=non_negative_int(f"{where}.gpus", raw.get("gpus", 64), "64"),
        jobs=non_negative_int(f"{where}.jobs", raw.get("jobs", 64), "64"),
        labels=tuple(labels),
        signal_lead_s=max(1, int(lead)),
        slurm_conf=opt_str(f"{where}.slurm_conf", raw.get("slurm_conf")),
    )


def slurm_time(where: str, value: Any) -> str | None:
    """A --time value in one of Slurm's forms ("24:00:00", "1-00:00:00", "90")."""
    if value is None:
        return None
    if not isinstance(value, str) or not SLURM_TIME_RE.match(value):
        raise ConfigError(
            f"{where} = {value!r}; use Slurm's --time form, e.g. {TIME_EXAMPLE} "
            '(or "1-00:00:00", or minutes as "90")'
        )
    return value


def _check_sbatch_args(where: str, args: list[str]) -> None:
    for arg in args:
        option = arg.split("=", 1)[0]
        if option in OWN_OPTIONS:
            raise ConfigError(
                f"{where} holds {arg!r}, which sheetrunner sets itself for every job; remove it "
                '(keep site options only, e.g. sbatch_args = ["--qos=normal"])'
            )
        if not arg.startswith("-") or "\0" in arg or "\n" in arg:
            raise ConfigError(
                f'{where} holds {arg!r}; each item is one sbatch option, e.g. "--qos=normal"'
            )


def slurm_seconds(text: str) -> int:
    """Seconds in a --time value already checked by `slurm_time`."""
    found = SLURM_TIME_RE.match(text)
    if not found:
        raise ValueError(text)
    days, a, b, c = (int(g) if g else None for g in found.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        return days * 86400 + (a or 0) * 3600 + (b or 0) * 60 + (c or 0)
    if c is not None:  # HH:MM:SS
        return (a or 0) * 3600 + (b or 0) * 60 + c
    if b is not None:  # MM:SS
        return (a or 0) * 60 + b
    return (a or 0) * 60  # minutes
