"""A Slurm cluster as the daemon sees it: one more member of the pool, IO only.

`SlurmAgent` keeps the host contract of `HostAgent` (probe, launch, kill, tail, history),
so the core places runs on a cluster as on a host, while Slurm does the queueing, the
placement on nodes, the time limits and the requeue after a node failure. Every call goes
through the agent on the login node (over SSH, or this machine with `local = true`): one
`squeue` per probe for all of this sheet's jobs, one agent call per cycle for all of its
submissions. Attempt directories keep the layout of remote/protocol.py on the cluster's
shared filesystem, and the batch job runs the agent's supervisor, so metrics, logs, plots,
hang detection and checkpoints work as on a host. How Slurm's states become observations
is policy, in sheetrunner/slurm_states.py.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence

from ..config import ClusterConfig, HostConfig
from ..model import AttemptState, Run
from ..remote.protocol import is_run_id
from ..remote.slurm_agent import job_name
from ..slurm_states import SlurmJob, scheduler_word, verdict
from .hosts import HostAgent, LaunchResult, lib_dir
from .transport import Transport

log = logging.getLogger(__name__)

# Variables the scheduler sets for the job itself (it picks the GPUs on the node).
SCHEDULER_SET = ("CUDA_VISIBLE_DEVICES",)


def cluster_host(cluster: ClusterConfig) -> HostConfig:
    """The cluster as a member of the pool: what the core may hand out there at once
    (`gpus`, `jobs`), where its attempts live, how its login node is reached."""
    return HostConfig(
        name=cluster.name,
        local=cluster.local,
        address=cluster.login,
        user=cluster.user,
        port=cluster.port,
        identity=cluster.identity,
        labels=cluster.labels,
        accelerators=cluster.gpus,
        slots=cluster.jobs,
        root=cluster.root,
        python=cluster.python,
    )


def sbatch_args(
    cluster: ClusterConfig,
    namespace: str,
    run_id: str,
    attempt: int,
    gpus: int,
    time_limit_s: float | None,
) -> list[str]:
    """The options of one attempt's sbatch (the agent adds output, chdir and the script).
    The row's time limit (rounded up to whole minutes) wins over the cluster's `time`."""
    args = [
        f"--job-name={job_name(namespace, run_id, attempt)}",
        f"--partition={cluster.partition}",
        "--requeue",
        f"--signal=B:USR1@{cluster.signal_lead_s}",
    ]
    if gpus > 0:
        args.append(f"--gres=gpu:{gpus}")
    if cluster.account:
        args.append(f"--account={cluster.account}")
    if time_limit_s is not None:
        args.append(f"--time={max(1, math.ceil(time_limit_s / 60))}")
    elif cluster.time:
        args.append(f"--time={cluster.time}")
    return args + list(cluster.sbatch_args)


class SlurmAgent(HostAgent):
    """The agent on a cluster's login node, speaking Slurm."""

    def __init__(
        self,
        cluster: ClusterConfig,
        transport: Transport,
        timeout_s: float = 30.0,
        namespace: str | None = None,
    ):
        self.cluster = cluster
        self.slurm_conf = cluster.slurm_conf  # SLURM_CONF for the commands; None: the site's
        # every call on a login node is an exec: its Slurm commands are not resident ones
        super().__init__(cluster_host(cluster), transport, timeout_s, namespace, resident=False)
        self.partition_seen: dict | None = None  # the last probe's partition_summary

    def argv(self, args: Sequence[str]) -> list[str]:
        command = super().argv(args)
        return ["env", f"SLURM_CONF={self.slurm_conf}", *command] if self.slurm_conf else command

    def probe(self, wanted: Iterable[tuple[str, int]], runs: Iterable[str] = ()) -> dict:
        """The attempts' files and one squeue listing, combined by slurm_states.verdict."""
        request = {
            "attempts": sorted([r, int(a)] for r, a in wanted if is_run_id(r)),
            "runs": sorted(r for r in runs if is_run_id(r)),
            "partition": self.cluster.partition,
        }
        found = json.loads(self._call(self._where("slurm-probe"), json.dumps(request).encode()))
        for seen in found.get("attempts", []):
            _judge(seen)
        if isinstance(found.get("partition"), dict):
            self.partition_seen = partition_summary(found["partition"])
        return found

    def launch(self, spec: dict) -> LaunchResult:
        return self.launch_many([(spec, None)])[0]

    def launch_many(self, specs: list[tuple[dict, float | None]]) -> list[LaunchResult]:
        """Every submission of a cycle in one agent call: (spec, time limit) each."""
        jobs = []
        for spec, limit in specs:
            env = {k: v for k, v in (spec.get("env") or {}).items() if k not in SCHEDULER_SET}
            spec = {**spec, "env": env, "lib_dir": lib_dir(self.config)}
            args = sbatch_args(
                self.cluster,
                self.namespace or "",
                spec["run_id"],
                int(spec["attempt"]),
                int(spec.get("gpus") or 0),
                limit,
            )
            jobs.append({"spec": spec, "sbatch": args})
        timeout = self.timeout_s + 2.0 * len(jobs)
        answers = json.loads(
            self._call(self._where("slurm-submit"), json.dumps({"jobs": jobs}).encode(), timeout)
        )
        results = []
        for answer in answers:
            detail = answer.get("job_id") or answer.get("reason") or ""
            results.append(LaunchResult(bool(answer.get("launched")), f"slurm job {detail}"))
        return results

    def kill(self, run_id: str, attempt: int, grace_s: float = 10.0) -> str:
        """scancel: Slurm signals the job (SIGTERM to the supervisor, which stops the job)."""
        out = json.loads(self._call([*self._where("slurm-cancel"), run_id, str(attempt)]))
        return str(out.get("state", ""))

    def hold(self, job_id: str, release: bool = False) -> None:
        self._call([*self._where("slurm-hold"), job_id, "release" if release else "hold"])

    def partition(self) -> dict:
        """The partition's nodes: state and GPUs configured and in use (sinfo)."""
        return json.loads(self._call(["slurm-partition", self.cluster.partition]))

    def check(self) -> dict:
        """What `doctor` asks: the commands, the partition, the account, the shared root."""
        args = ["slurm-check", self.cluster.root, self.cluster.partition]
        if self.cluster.account:
            args.append(self.cluster.account)
        return json.loads(self._call(args))


def _judge(seen: dict) -> None:
    """One attempt of the probe's answer, rewritten as the core should see it."""
    raw = seen.pop("slurm", None)
    job = (
        SlurmJob(str(raw["job_id"]), str(raw["state"]), str(raw.get("reason", ""))) if raw else None
    )
    try:
        file_state = AttemptState(str(seen.get("state")))
    except ValueError:
        file_state = AttemptState.VANISHED
    found = verdict(file_state, seen.get("exit_code"), job)
    seen["state"], seen["exit_code"] = found.state.value, found.exit_code
    seen["reason"] = found.reason
    seen["scheduler"] = scheduler_word(job)
    seen["job_id"] = job.job_id if job else ""
    seen["held"] = found.held


def partition_summary(found: dict) -> dict:
    """Nodes by state (idle, mixed, allocated, down...) and GPUs free and total."""
    states: dict[str, int] = {}
    total = used = 0
    for node in found.get("nodes", []):
        state = str(node.get("state", "")).rstrip("*~#!%$@^-").split("+")[0] or "unknown"
        states[state] = states.get(state, 0) + 1
        node_total = _gpu_count(str(node.get("gres", "")))
        total += node_total
        if state not in ("down", "drained", "draining", "fail", "failing", "not_responding"):
            used += _gpu_count(str(node.get("gres_used", "")))
        else:
            used += node_total  # nothing free on a node that takes no jobs
    summary = {
        "partition": found.get("partition", ""),
        "nodes": states,
        "gpus_total": total,
        "gpus_free": max(0, total - used),
    }
    if found.get("error"):
        summary["error"] = found["error"]
    return summary


def _gpu_count(gres: str) -> int:
    """GPUs in a GRES text like "gpu:4", "gpu:a100:4(S:0-1)", "gpu:2(IDX:0-1),shard:0"."""
    count = 0
    for item in gres.split(","):
        parts = item.split("(")[0].split(":")
        if parts and parts[0] == "gpu" and len(parts) >= 2 and parts[-1].isdigit():
            count += int(parts[-1])
    return count


def cluster_entries(agents: Iterable[HostAgent], runs: Iterable[Run]) -> list[dict]:
    """The pool view of each cluster: its partition as the last probe saw it, and this
    sheet's runs there (queued in Slurm or running)."""
    runs = list(runs)
    out = []
    for agent in agents:
        if not isinstance(agent, SlurmAgent):
            continue
        mine = [r for r in runs if r.host == agent.name and r.status.is_live]
        seen = agent.partition_seen or {}
        out.append(
            {
                "cluster": agent.name,
                "kind": agent.cluster.kind,
                "partition": agent.cluster.partition,
                "reachable": agent.partition_seen is not None and not seen.get("error"),
                "error": seen.get("error", "" if agent.partition_seen else "not probed"),
                "nodes": seen.get("nodes", {}),
                "gpus_free": seen.get("gpus_free"),
                "gpus_total": seen.get("gpus_total"),
                "runs": [r.run_id for r in mine],
            }
        )
    return out
