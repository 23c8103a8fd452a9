"""The pool as the daemon sees it: one agent per host, probed in parallel once a cycle.

`HostAgent` speaks to the agent script on one host through any Transport;
`Pool` fans out over all hosts with bounded parallelism and turns failures
into observations (an unreachable host is a fact of the cycle, never an
exception out of it).
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import shlex
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..config import HostConfig, JobConfig
from ..errors import TransportError
from ..model import Accelerator, AttemptObservation, AttemptState, HostObservation, Run, param_argv
from ..prep_policy import low_disk
from ..reconcile import HostCapacity
from ..remote import agent_name, agent_zipapp, job_library_files, version
from ..remote.protocol import (
    ENV_BEST_METRIC,
    ENV_BEST_MODE,
    ENV_KEEP_CHECKPOINTS,
    FILE_MODE,
    RESIDENT_COMMANDS,
    is_attempt,
    is_namespace,
    is_run_id,
    namespace_root,
)
from .accelerators import is_tpu, tpu_chips, visible_env
from .resident import ResidentAgent, Unavailable
from .transport import CommandResult, Transport

log = logging.getLogger(__name__)

AGENT_MODE = 0o700  # run as `python3 <file>`; executable only for a person's convenience
# Run before an upload (python 3.6+, standard library): mkdir -p with 0700 for every directory
# it creates, then each named directory set to 0700; a named directory that is a symlink is
# refused (exit 3), as the agent refuses one in a run directory.
MAKE_PRIVATE_DIRS = """
import os, stat, sys
def make(path):
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        make(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    os.chmod(path, 0o700)
for path in sys.argv[1:]:
    make(path)
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        sys.exit("refused: %s is not a directory" % path)
    os.chmod(path, 0o700)
"""


@dataclass(frozen=True)
class LaunchResult:
    launched: bool
    detail: str
    refused: bool = False  # the host started nothing (a GPU claimed): place the run again


class HostAgent:
    """The agent on one host, called once per command.

    Its file name carries the hash of its content, so it is uploaded only when
    the host lacks this version: the first call that finds it missing uploads
    it (with the job library, for remote hosts) and runs again. Every command
    that touches runs names the namespace root and this host's name: the agent
    looks at nothing else, so sheets never see each other's runs and hosts
    sharing a home directory never judge each other's processes."""

    def __init__(
        self,
        config: HostConfig,
        transport: Transport,
        timeout_s: float = 30.0,
        namespace: str | None = None,
        resident: bool = True,
    ):
        self.config = config
        self.transport = transport
        self.timeout_s = timeout_s
        self.namespace = namespace
        # Asked first when the transport can hold a stream; from the first exec that
        # succeeded on (it uploads the agent when the host lacks this version).
        self.resident = ResidentAgent(config.name, transport, self.argv(["serve"]), agent_name())
        self._use_resident = resident
        self._agent_present = False

    @property
    def name(self) -> str:
        return self.config.name

    def ns_root(self) -> str:
        """`<root>/<namespace>`, as the agent receives it (a leading `~` is expanded there)."""
        if not self.namespace:
            raise TransportError(f"{self.name}: agent called with no namespace yet")
        return namespace_root(self.config.root, self.namespace)

    def _agent_path(self) -> str:
        return f"{self.config.root.rstrip('/')}/bin/{agent_name()}"

    def argv(self, args: Sequence[str]) -> list[str]:
        """The command line that runs the agent with `args`."""
        return [self.config.python, self._exec_path(self._agent_path()), *args]

    def _exec_path(self, path: str) -> str:
        """The agent's path as the command line names it. Over SSH a command line is quoted, so
        `~` would stay literal: `~/x` becomes `x`, relative to the login directory, where
        SFTP's `~/` lands too. Here, it is this user's home."""
        if self.config.local:
            return os.path.expanduser(path)
        return path[2:] if path.startswith("~/") else path

    def _upload(self) -> None:
        """The job library first, then the agent: an agent present means both are. The local
        host gets the library too (its jobs use the installed one): a root shared by the
        local host and SSH hosts (one home directory, NFS) must hold both for all of them.

        Their directories are made first, 0700 whatever the umask (a transport's put_file
        leaves the directories it creates to the umask: under `umask 000`, a `bin/` anyone
        could write into would let anyone replace the code this daemon runs); the files are
        0600, the agent 0700."""
        files = {
            f"{lib_dir(self.config)}/{name}": data for name, data in job_library_files().items()
        }
        lib = [posixpath.dirname(lib_dir(self.config)), lib_dir(self.config)]
        self._make_private_dirs(
            [
                posixpath.dirname(self._agent_path()),
                *lib,
                *sorted({posixpath.dirname(p) for p in files}),
            ]
        )
        for path, data in sorted(files.items()):
            self.transport.put_file(path, data, FILE_MODE)
        self.transport.put_file(self._agent_path(), agent_zipapp(), AGENT_MODE)
        log.info("host=%s agent %s uploaded", self.name, agent_name())

    def _make_private_dirs(self, dirs: list[str]) -> None:
        """Create `dirs` (and missing parents) 0700 and set each of them to 0700: they are
        sheetrunner's own. A fixed command, like the agent's: the paths come from the config."""
        argv = [self.config.python, "-c", MAKE_PRIVATE_DIRS, *(self._exec_path(d) for d in dirs)]
        result = self.transport.run(argv, timeout_s=self.timeout_s)
        if result.exit_code != 0:
            err = result.stderr.decode(errors="replace").strip().splitlines()[-3:]
            raise TransportError(f"{self.name}: cannot prepare {dirs[0]}: {' '.join(err)}")

    def close(self) -> None:
        """End the resident agent and the connection."""
        self.resident.close()
        self.transport.close()

    def _call(self, args: list[str], stdin: bytes = b"", timeout_s: float | None = None) -> bytes:
        result = self._resident_call(args, stdin, timeout_s or self.timeout_s)
        if result is None:
            result = self._exec(args, stdin, timeout_s or self.timeout_s)
        if result.exit_code != 0:
            err = result.stderr.decode(errors="replace").strip().splitlines()[-3:]
            raise TransportError(f"{self.name}: agent {args[0]} failed: {' '.join(err)}")
        return result.stdout

    def _resident_call(
        self, args: list[str], stdin: bytes, timeout_s: float
    ) -> CommandResult | None:
        """The resident agent's answer, or None when the exec path must ask."""
        if not (self._use_resident and self._agent_present) or args[0] not in RESIDENT_COMMANDS:
            return None
        try:
            return self.resident.call(args, stdin, timeout_s)
        except Unavailable:
            return None

    def _exec(self, args: list[str], stdin: bytes, timeout_s: float) -> CommandResult:
        argv = self.argv(args)
        result = self.transport.run(argv, stdin=stdin, timeout_s=timeout_s)
        if result.exit_code == 2 and b"can't open file" in result.stderr:
            self._upload()  # nothing ran: safe to run the same command again
            result = self.transport.run(argv, stdin=stdin, timeout_s=timeout_s)
        if result.exit_code != 2 or b"can't open file" not in result.stderr:
            self._agent_present = True
        return result

    def _where(self, command: str) -> list[str]:
        return [command, self.ns_root(), self.name]

    def probe(self, wanted: Iterable[tuple[str, int]], runs: Iterable[str] = ()) -> dict:
        """Host facts and attempts: those in `wanted`, the newest of each run in `runs` found
        here, and every unfinished one of this host. Ids not in the protocol's format cannot
        exist on a host (the agent refuses them): they are left out, so one bad id in the
        store never makes a host look unreachable."""
        request = {
            "attempts": sorted(_well_formed(self.name, wanted)),
            "runs": sorted(_well_formed_runs(self.name, runs)),
            "gpu_claims": self.config.gpu_claims or None,
        }
        return json.loads(self._call(self._where("probe"), json.dumps(request).encode()))

    def facts(self) -> dict:
        """The host's facts without its runs (boot id, GPUs, disk, load): needs no namespace,
        for checks made before the sheet's namespace is known."""
        return json.loads(self._call(["facts", self.config.root]))

    def programs(self, jobs: list[dict]) -> list[dict]:
        """For each {"workdir", "argv"}: whether the workdir exists and which items are missing."""
        return json.loads(self._call(["programs"], json.dumps(jobs).encode()))

    def launch(self, spec: dict) -> LaunchResult:
        out = json.loads(self._call(self._where("launch"), json.dumps(spec).encode()))
        return LaunchResult(
            bool(out.get("launched")),
            out.get("reason") or out.get("dir", ""),
            refused=out.get("refused") is True,
        )

    def command(self, name: str, request: dict, with_host: bool = True) -> dict:
        """One of the agent's code, setup and disk commands (sheetrunner/remote/codestore.py):
        the request as JSON on stdin, the answer as JSON."""
        args = self._where(name) if with_host else [name, self.ns_root()]
        return json.loads(self._call(args, json.dumps(request).encode()))

    def kill(self, run_id: str, attempt: int, grace_s: float = 10.0) -> str:
        """SIGCONT and SIGTERM to the attempt's process group; the agent returns at once and
        its supervisor sends SIGKILL after `grace_s` if the job is still there (the caller
        never waits out the grace: a kill does not hold the cycle)."""
        args = [*self._where("kill"), run_id, str(attempt), f"{grace_s:g}"]
        out = json.loads(self._call(args, timeout_s=self.timeout_s))
        return out.get("state", "")

    def tail(
        self, run_id: str, attempt: int, size: int = 65536, offset: int | None = None
    ) -> bytes:
        """The log's last `size` bytes, or with `offset` the bytes from there on."""
        where = f"+{offset}" if offset is not None else str(size)
        return self._call([*self._where("tail"), run_id, str(attempt), where])

    def history(self, run_id: str, attempt: int, most: int = 2000) -> list[dict]:
        """The attempt's reports, thinned evenly to at most `most`."""
        return json.loads(self._call([*self._where("history"), run_id, str(attempt), str(most)]))


def _well_formed(host: str, wanted: Iterable[tuple[str, int]]) -> list[list]:
    wanted = list(wanted)
    kept = [[r, int(a)] for r, a in wanted if is_run_id(r) and is_attempt(a)]
    if len(kept) < len(wanted):
        bad = [w for w in wanted if not (is_run_id(w[0]) and is_attempt(w[1]))]
        log.warning("host=%s: malformed attempts not probed: %r", host, bad)
    return kept


def _well_formed_runs(host: str, runs: Iterable[str]) -> set[str]:
    runs = set(runs)
    bad = {r for r in runs if not is_run_id(r)}
    if bad:
        log.warning("host=%s: malformed run ids not probed: %s", host, sorted(map(repr, bad)))
    return runs - bad


class Pool:
    """All hosts of the config, with what was last seen of each."""

    def __init__(self, agents: list[HostAgent], max_parallel: int = 16):
        self.agents = {a.name: a for a in agents}
        self.max_parallel = max(1, max_parallel)
        self.down_since: dict[str, datetime] = {}
        self.last: dict[str, HostObservation] = {}
        self.namespace: str | None = None

    def set_namespace(self, namespace: str) -> None:
        """The sheet's namespace: every agent call from now on looks only under it."""
        if not is_namespace(namespace):
            raise ValueError(f"not a namespace: {namespace!r}")
        self.namespace = namespace
        for agent in self.agents.values():
            agent.namespace = namespace

    def probe_all(
        self, wanted: Mapping[str, set[tuple[str, int]]], now: datetime, runs: Iterable[str] = ()
    ) -> dict[str, HostObservation]:
        """One probe per host, in parallel; failures become unreachable observations.
        `runs`: ids asked of every host, which reports the newest attempt of each it has."""
        runs = frozenset(runs)
        with ThreadPoolExecutor(max_workers=min(self.max_parallel, len(self.agents) or 1)) as ex:
            futures = {
                name: ex.submit(self._probe_one, agent, wanted.get(name, set()), runs, now)
                for name, agent in self.agents.items()
            }
            self.last = {name: f.result() for name, f in futures.items()}
        return self.last

    def _probe_one(
        self, agent: HostAgent, wanted: set[tuple[str, int]], runs: frozenset[str], now: datetime
    ) -> HostObservation:
        try:
            facts = agent.probe(wanted, runs)
        except (TransportError, ValueError) as exc:
            since = self.down_since.setdefault(agent.name, now)
            log.warning("host=%s unreachable since %s: %s", agent.name, since.isoformat(), exc)
            return HostObservation(agent.name, False, now, error=str(exc), down_since=since)
        if agent.name in self.down_since:
            log.info("host=%s reachable again", agent.name)
            del self.down_since[agent.name]
        return observation_from_probe(agent.name, facts, now)

    def replace_agents(self, agents: list[HostAgent]) -> None:
        """The hosts of a reloaded config: agents kept, added or dropped (their connections
        closed), all in this sheet's namespace."""
        keep = {id(a) for a in agents}
        for old in self.agents.values():
            if id(old) not in keep:
                old.close()
        self.agents = {a.name: a for a in agents}
        if self.namespace:
            self.set_namespace(self.namespace)
        self.last = {n: o for n, o in self.last.items() if n in self.agents}
        self.down_since = {n: t for n, t in self.down_since.items() if n in self.agents}

    def capacities(self) -> list[HostCapacity]:
        return [capacity(a.config, self.last.get(name)) for name, a in self.agents.items()]

    def close(self) -> None:
        for agent in self.agents.values():
            agent.close()


def observation_from_probe(host: str, facts: dict, now: datetime) -> HostObservation:
    """A probe's answer on the daemon's clock: the host reports ages, measured on its own
    clock, and `now - age` is when things happened as the daemon counts time."""
    return HostObservation(
        host=host,
        reachable=True,
        observed_at=now,
        boot_id=facts.get("boot_id", ""),
        accelerators=tuple(_accelerator(g) for g in facts.get("gpus", [])),
        load=facts.get("load"),
        disk_free_bytes=facts.get("disk_free_bytes"),
        attempts=tuple(_attempt(a, now) for a in facts.get("attempts", [])),
        error=facts.get("gpu_error", ""),
    )


def _accelerator(gpu: dict) -> Accelerator:
    return Accelerator(
        index=str(gpu["index"]),
        name=gpu.get("name", ""),
        memory_used_mib=gpu.get("memory_used_mib"),
        memory_total_mib=gpu.get("memory_total_mib"),
        utilization_pct=gpu.get("utilization_pct"),
        foreign=bool(gpu.get("foreign")),
        healthy=gpu.get("healthy") is not False,
        health=str(gpu.get("health") or ""),
        uuid=str(gpu.get("uuid") or ""),
        **_claim(gpu.get("claim")),
        foreign_users=tuple(str(u) for u in gpu.get("foreign_users") or () if u),
    )


def _claim(raw: object) -> dict[str, str]:
    """A GPU's claim as the probe read it from the claim file (any user may have written it)."""
    claim = raw if isinstance(raw, dict) else {}
    return {
        "claim_namespace": str(claim.get("namespace") or "")[:100],
        "claim_run": str(claim.get("run_id") or "")[:100],
        "claim_user": str(claim.get("user") or "")[:100],
    }


def _attempt(seen: dict, now: datetime) -> AttemptObservation:
    found = seen.get("spec")
    spec: dict = found if isinstance(found, dict) else {}
    return AttemptObservation(
        run_id=seen["run_id"],
        attempt=int(seen["attempt"]),
        state=AttemptState(seen["state"]),
        exit_code=seen.get("exit_code"),
        heartbeat_at=_ago(now, seen.get("heartbeat_age_s")),
        metrics=seen.get("metrics") or {},
        summary=seen.get("summary") or {},
        log_tail=seen.get("log_tail", ""),
        log_path=seen.get("log_path", ""),
        reason=str(seen.get("reason") or ""),
        leftovers=str(seen.get("leftovers") or ""),
        key=str(spec.get("key") or ""),
        job=str(spec.get("job") or ""),
        params=_params(spec.get("params")),
        gpus=_count(spec.get("gpus")),
        accelerators=tuple(str(a) for a in spec.get("accelerators") or ()),
        started_at=_ago(now, seen.get("started_age_s")),
        scheduler=str(seen.get("scheduler") or ""),
        job_id=str(seen.get("job_id") or ""),
        held=seen.get("held") is True,
    )


def _ago(now: datetime, age_s: object) -> datetime | None:
    if isinstance(age_s, bool) or not isinstance(age_s, int | float) or not age_s == age_s:
        return None
    return now - timedelta(seconds=max(0.0, float(age_s)))


def _params(raw: object) -> tuple[tuple[str, str], ...]:
    pairs = raw if isinstance(raw, list) else []
    return tuple(
        (str(p[0]), str(p[1])) for p in pairs if isinstance(p, list | tuple) and len(p) == 2
    )


def _count(raw: object) -> int:
    return raw if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0 else 0


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
    busy = tuple(a.index for a in observed if _busy(a, config.share_gpus))
    known = config.accelerators != "auto" or reachable  # "auto" counts only once probed
    return HostCapacity(
        config.name,
        config.labels,
        ids,
        busy,
        config.slots,
        reachable,
        config.drain,
        known,
        free_memory_mib=tuple(
            (a.index, a.memory_free_mib) for a in observed if a.memory_free_mib is not None
        ),
        min_free_memory_mib=config.min_free_memory_mib,
        largest_memory_mib=max((a.memory_total_mib or 0 for a in observed), default=0),
        closed=low_disk(config.min_free_disk, seen.disk_free_bytes if seen else None),
        claimed=tuple(a.index for a in observed if a.claim_namespace),
    )


def _busy(gpu: Accelerator, share: bool) -> bool:
    """Not for a new run whatever its memory: unhealthy (drained), claimed by a run of any
    sheet, or used by others' processes unless sharing is allowed and its memory is known
    (then the memory it has free decides)."""
    if not gpu.healthy or gpu.claim_namespace:
        return True
    return gpu.foreign and not (share and gpu.memory_free_mib is not None)


def launch_spec(
    run: Run, job: JobConfig, host: HostConfig, workdir: str | None, code: dict | None = None
) -> dict:
    """The JSON document the agent launches from: argv items, never a shell string. The
    agent keeps it as spec.json, so the attempt directory alone says what runs there
    (key, job, params, gpus: enough to rebuild the run if the store lost it), and the code
    it runs (`code`: content hash, commit, dirty) when the job is synced. The host's `env`
    is merged over the job's."""
    command = [host.python if part == "{python}" else part for part in job.command]
    env = {**job.env, **host.env}
    env.update(visible_env(host.accelerators, run.accelerators))
    env[ENV_KEEP_CHECKPOINTS] = str(job.keep_checkpoints)
    if job.best_metric:
        env[ENV_BEST_METRIC] = job.best_metric
        env[ENV_BEST_MODE] = job.best_mode
    spec = {
        "run_id": run.run_id,
        "attempt": run.attempt,
        "key": run.spec.key,
        "job": run.spec.job,
        "params": [[name, value] for name, value in run.spec.params],
        "gpus": run.link.gpus,
        "argv": command + param_argv(run.spec.params),
        "env": env,
        "workdir": workdir,
        "accelerators": list(run.accelerators),
        "lib_dir": None if host.local else lib_dir(host),
        "gpu_claims": host.gpu_claims or None,  # the agent claims each GPU there
    }
    if code:
        spec["code"] = code
    if job.checkpoint_root:  # else the agent uses <root>/<namespace>/checkpoints/<run-id>
        spec["checkpoint_dir"] = f"{job.checkpoint_root.rstrip('/')}/{run.run_id}"
    return spec


def lib_dir(host: HostConfig) -> str:
    """Where the job library lies on a remote host, versioned like the agent."""
    return f"{host.root.rstrip('/')}/lib/{version()}"


def describe_argv(spec: dict) -> str:
    """The argv as a person would type it; for logs only, never executed."""
    return shlex.join(spec["argv"])
