"""The pool as the daemon sees it: one agent per host, probed in parallel once a cycle.

`HostAgent` speaks to the agent script on one host through any Transport;
`Pool` fans out over all hosts with bounded parallelism and turns failures
into observations (an unreachable host is a fact of the cycle, never an
exception out of it).
"""

from __future__ import annotations

import json
import logging
import shlex
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from ..config import HostConfig, JobConfig
from ..errors import TransportError
from ..model import Accelerator, AttemptObservation, AttemptState, HostObservation, Run, param_argv
from ..reconcile import HostCapacity
from ..remote import agent_name, agent_source, job_library_source, version
from .accelerators import is_tpu, tpu_chips, visible_env
from .transport import Transport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LaunchResult:
    launched: bool
    detail: str


class HostAgent:
    """The agent on one host, called once per command.

    Its file name carries the hash of its content, so it is uploaded only when
    the host lacks this version: the first call that finds it missing uploads
    it (with the job library, for remote hosts) and runs again."""

    def __init__(self, config: HostConfig, transport: Transport, timeout_s: float = 30.0):
        self.config = config
        self.transport = transport
        self.timeout_s = timeout_s

    @property
    def name(self) -> str:
        return self.config.name

    def _agent_path(self) -> str:
        return f"{self.config.root.rstrip('/')}/bin/{agent_name()}"

    def _upload(self) -> None:
        """The job library first (remote hosts), then the agent: an agent present means both are."""
        if not self.config.local:
            lib = lib_dir(self.config)
            self.transport.put_file(f"{lib}/sheetrunner/__init__.py", b"")
            self.transport.put_file(f"{lib}/sheetrunner/job.py", job_library_source())
        self.transport.put_file(self._agent_path(), agent_source(), 0o755)
        log.info("host=%s agent %s uploaded", self.name, agent_name())

    def _call(self, args: list[str], stdin: bytes = b"", timeout_s: float | None = None) -> bytes:
        argv = [self.config.python, self._agent_path(), *args]
        result = self.transport.run(argv, stdin=stdin, timeout_s=timeout_s or self.timeout_s)
        if result.exit_code == 2 and b"can't open file" in result.stderr:
            self._upload()  # nothing ran: safe to run the same command again
            result = self.transport.run(argv, stdin=stdin, timeout_s=timeout_s or self.timeout_s)
        if result.exit_code != 0:
            err = result.stderr.decode(errors="replace").strip().splitlines()[-3:]
            raise TransportError(f"{self.name}: agent {args[0]} failed: {' '.join(err)}")
        return result.stdout

    def probe(self, wanted: Iterable[tuple[str, int]]) -> dict:
        stdin = json.dumps({"attempts": sorted(wanted)}).encode()
        return json.loads(self._call(["probe", self.config.root], stdin))

    def launch(self, spec: dict) -> LaunchResult:
        out = json.loads(self._call(["launch", self.config.root], json.dumps(spec).encode()))
        return LaunchResult(bool(out.get("launched")), out.get("reason") or out.get("dir", ""))

    def kill(self, run_id: str, attempt: int, grace_s: float = 10.0) -> str:
        args = ["kill", self.config.root, run_id, str(attempt), str(grace_s)]
        out = json.loads(self._call(args, timeout_s=self.timeout_s + grace_s))
        return out.get("state", "")

    def tail(self, run_id: str, attempt: int, size: int = 65536, offset: int | None = None) -> bytes:
        """The log's last `size` bytes, or with `offset` the bytes from there on."""
        where = f"+{offset}" if offset is not None else str(size)
        return self._call(["tail", self.config.root, run_id, str(attempt), where])


    def history(self, run_id: str, attempt: int, most: int = 2000) -> list[dict]:
        """The attempt's reports, thinned evenly to at most `most`."""
        return json.loads(self._call(["history", self.config.root, run_id, str(attempt), str(most)]))


class Pool:
    """All hosts of the config, with what was last seen of each."""

    def __init__(self, agents: list[HostAgent], max_parallel: int = 16):
        self.agents = {a.name: a for a in agents}
        self.max_parallel = max(1, max_parallel)
        self.down_since: dict[str, datetime] = {}
        self.last: dict[str, HostObservation] = {}

    def probe_all(self, wanted: Mapping[str, set[tuple[str, int]]], now: datetime) -> dict[str, HostObservation]:
        """One probe per host, in parallel; failures become unreachable observations."""
        with ThreadPoolExecutor(max_workers=min(self.max_parallel, len(self.agents) or 1)) as ex:
            futures = {
                name: ex.submit(self._probe_one, agent, wanted.get(name, set()), now)
                for name, agent in self.agents.items()
            }
            self.last = {name: f.result() for name, f in futures.items()}
        return self.last

    def _probe_one(self, agent: HostAgent, wanted: set[tuple[str, int]], now: datetime) -> HostObservation:
        try:
            facts = agent.probe(wanted)
        except (TransportError, ValueError) as exc:
            since = self.down_since.setdefault(agent.name, now)
            log.warning("host=%s unreachable since %s: %s", agent.name, since.isoformat(), exc)
            return HostObservation(agent.name, False, now, error=str(exc), down_since=since)
        if agent.name in self.down_since:
            log.info("host=%s reachable again", agent.name)
            del self.down_since[agent.name]
        return observation_from_probe(agent.name, facts, now)

    def capacities(self) -> list[HostCapacity]:
        return [capacity(a.config, self.last.get(name)) for name, a in self.agents.items()]

    def close(self) -> None:
        for agent in self.agents.values():
            agent.transport.close()


def observation_from_probe(host: str, facts: dict, now: datetime) -> HostObservation:
    return HostObservation(
        host=host,
        reachable=True,
        observed_at=now,
        boot_id=facts.get("boot_id", ""),
        accelerators=tuple(_accelerator(g) for g in facts.get("gpus", [])),
        load=facts.get("load"),
        disk_free_bytes=facts.get("disk_free_bytes"),
        attempts=tuple(_attempt(a) for a in facts.get("attempts", [])),
        error=facts.get("gpu_error", ""),
    )


def _accelerator(gpu: dict) -> Accelerator:
    return Accelerator(
        index=str(gpu["index"]), name=gpu.get("name", ""),
        memory_used_mib=gpu.get("memory_used_mib"), memory_total_mib=gpu.get("memory_total_mib"),
        utilization_pct=gpu.get("utilization_pct"), foreign=bool(gpu.get("foreign")),
    )


def _attempt(seen: dict) -> AttemptObservation:
    beat = seen.get("heartbeat_at")
    return AttemptObservation(
        run_id=seen["run_id"],
        attempt=int(seen["attempt"]),
        state=AttemptState(seen["state"]),
        exit_code=seen.get("exit_code"),
        heartbeat_at=datetime.fromtimestamp(beat, UTC) if beat else None,
        metrics=seen.get("metrics") or {},
        summary=seen.get("summary") or {},
        log_tail=seen.get("log_tail", ""),
        log_path=seen.get("log_path", ""),
    )


def capacity(config: HostConfig, seen: HostObservation | None) -> HostCapacity:
    """What the core may place on a host: configured count, or what nvidia-smi showed."""
    reachable = seen is not None and seen.reachable
    observed = seen.accelerators if seen else ()
    if config.accelerators == "auto":
        ids = tuple(a.index for a in observed)
    elif is_tpu(config.accelerators):
        ids = tuple(str(i) for i in range(tpu_chips(str(config.accelerators))))
    else:
        ids = tuple(str(i) for i in range(int(config.accelerators)))
    busy = tuple(a.index for a in observed if a.foreign)
    return HostCapacity(config.name, config.labels, ids, busy, config.slots, reachable,
                        config.drain)


def launch_spec(run: Run, job: JobConfig, host: HostConfig, workdir: str | None) -> dict:
    """The JSON document the agent launches from: argv items, never a shell string."""
    command = [host.python if part == "{python}" else part for part in job.command]
    argv = command + param_argv(run.params)
    env = dict(job.env)
    env.update(visible_env(host.accelerators, run.accelerators))
    env["SHEETRUNNER_KEEP_CHECKPOINTS"] = str(job.keep_checkpoints)
    if job.best_metric:
        env["SHEETRUNNER_BEST_METRIC"] = job.best_metric
        env["SHEETRUNNER_BEST_MODE"] = job.best_mode
    spec = {
        "run_id": run.run_id,
        "attempt": run.attempt,
        "argv": argv,
        "env": env,
        "workdir": workdir,
        "accelerators": list(run.accelerators),
        "lib_dir": None if host.local else lib_dir(host),
    }
    if job.checkpoint_root:  # else the agent uses <root>/runs/<run-id>/checkpoints
        spec["checkpoint_dir"] = f"{job.checkpoint_root.rstrip('/')}/{run.run_id}"
    return spec


def lib_dir(host: HostConfig) -> str:
    """Where the job library lies on a remote host, versioned like the agent."""
    return f"{host.root.rstrip('/')}/lib/{version()}"


def describe_argv(spec: dict) -> str:
    """The argv as a person would type it; for logs only, never executed."""
    return shlex.join(spec["argv"])
