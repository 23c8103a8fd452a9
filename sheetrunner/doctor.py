"""`sheetrunner doctor`: check the config, the sheet and every host; say what to fix."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from .config import Config, HostConfig, job_workdir
from .daemon import open_pool, open_sheet
from .errors import HostKeyError, HostUnreachable, SheetError, TransportError
from .gang import never_fits_across
from .model import RowLink, Run, RunSpec, Status
from .placement import never_fits
from .pool.accelerators import is_tpu, tpu_chips
from .pool.hosts import HostAgent, capacity, observation_from_probe
from .pool.slurm import SlurmAgent, cluster_host
from .sheet import schema
from .sheet.table import Table

MIN_FREE_DISK_GIB = 5.0


@dataclass(frozen=True)
class Check:
    subject: str  # "config", "sheet" or a host name
    what: str
    ok: bool
    detail: str = ""
    fix: str = ""
    warning: bool = False  # not ok, but nothing stops working (doctor still exits 0)


def run_checks(config: Config) -> Iterator[Check]:
    """Every check, each said once (a problem seen from two sides is one line)."""
    said: set[tuple[str, str, str]] = set()
    for check in _all_checks(config):
        if (check.subject, check.what, check.detail) not in said:
            said.add((check.subject, check.what, check.detail))
            yield check


def _all_checks(config: Config) -> Iterator[Check]:
    yield Check("config", "loads and validates", True, str(config.path))
    table = None
    for check in _sheet(config):
        if isinstance(check, Table):
            table = check
        else:
            yield check
    pool = open_pool(config)
    seen: dict[str, dict] = {}
    try:
        for agent in pool.agents.values():
            if isinstance(agent, SlurmAgent):
                yield from _cluster(agent)
            else:
                yield from _host(agent, config, seen)
    finally:
        pool.close()
    if table is not None:
        yield from _rows_no_host_takes(config, table, seen)


def _sheet(config: Config) -> Iterator[Check | Table]:
    where = str(config.sheet.path or config.sheet.url)
    try:
        table = open_sheet(config).read()
    except SheetError as exc:
        yield Check("sheet", "can be read", False, str(exc), _sheet_fix(config))
        return
    problem = schema.header_problem(table)
    if problem is not None:
        yield Check(
            "sheet",
            "has a header row",
            False,
            f"{where}: {problem}",
            f"put the header back, or run `sheetrunner init -c {config.path}` to write it",
        )
        return
    yield Check("sheet", "can be read", True, f"{where}: {len(table.rows)} rows")
    for line in schema.header_problems(table):
        yield Check("sheet", "parameter columns", False, line, "rename or delete the column")
    yield table


def _rows_no_host_takes(config: Config, table: Table, seen: dict[str, dict]) -> Iterator[Check]:
    """Rows that would be `unplaceable`: no configured host could ever take them."""
    hosts = [
        capacity(
            h,
            observation_from_probe(h.name, seen[h.name], datetime.now(UTC))
            if h.name in seen
            else None,
        )
        for h in config.hosts
    ] + [capacity(cluster_host(c), None) for c in config.clusters]
    for exp in schema.parse_table(table, config.jobs):
        if exp.error or exp.is_sweep:
            continue
        shape = Run(
            run_id="",
            spec=RunSpec(exp.key, exp.job, exp.params),
            status=Status.QUEUED,
            created_at=datetime.now(UTC),
            updated_at=datetime.now(UTC),
            link=RowLink(gpus=exp.gpus, where=exp.where, nodes=exp.nodes),
        )
        reason = never_fits_across(shape, hosts, config.slices)
        if reason is None and exp.nodes == 1:
            reason = never_fits(shape, hosts)
        if reason is not None:
            yield Check(
                "sheet",
                f"row {exp.row} can run somewhere",
                False,
                reason,
                "change the row's gpus or where, or add a host that fits",
            )


def _sheet_fix(config: Config) -> str:
    if config.sheet.path:
        return f"create it with `sheetrunner init -c {config.path}` or fix [sheet] path"
    return (
        "share the sheet with the service account's e-mail address, enable the Google Sheets "
        "API, and check [sheet] credentials (README, Google Sheets section)"
    )


def _cluster(agent: SlurmAgent) -> Iterator[Check]:
    """A Slurm cluster: its login node answers, the commands are there, the partition and
    the account exist, the shared root is writable."""
    name, cluster = agent.name, agent.cluster
    try:
        found = agent.check()
    except TransportError as exc:
        where = "this machine" if cluster.local else f"login node {cluster.login}"
        fix = "check login, user, port and identity in [[clusters]] and the [ssh] settings"
        yield Check(name, f"{where} answers", False, str(exc), fix)
        return
    yield Check(
        name, "login node answers", True, "this machine" if cluster.local else cluster.login or ""
    )
    missing = found.get("missing") or []
    yield Check(
        name,
        "Slurm commands",
        not missing,
        f"missing: {', '.join(missing)}" if missing else "sbatch squeue scancel scontrol sinfo",
        "install Slurm's client commands on the login node, or put them on PATH",
    )
    yield Check(
        name,
        f"partition {cluster.partition}",
        bool(found.get("partition")),
        found.get("partition_error") or "",
        "set [[clusters]] partition to one `sinfo -s` lists",
    )
    if cluster.account:
        yield Check(
            name,
            f"account {cluster.account}",
            bool(found.get("account")),
            found.get("account_error") or "",
            "set [[clusters]] account to one `sacctmgr show assoc user=$USER` lists",
        )
    yield Check(
        name,
        f"shared root {cluster.root} is writable",
        bool(found.get("root")),
        found.get("root_error") or "",
        "set [[clusters]] root to a directory on the filesystem every node mounts",
    )


def _host(agent: HostAgent, config: Config, seen: dict[str, dict]) -> Iterator[Check]:
    name = agent.name
    try:
        facts = agent.facts()
    except HostKeyError as exc:
        yield Check(
            name,
            "host key is known",
            False,
            str(exc),
            'add the host\'s key to known_hosts, or set [ssh] host_key_policy = "accept-new"',
        )
        return
    except HostUnreachable as exc:
        yield Check(name, "reachable over SSH", False, str(exc), _ssh_fix(agent.config))
        return
    except TransportError as exc:
        yield Check(
            name,
            "python3 runs the agent",
            False,
            str(exc),
            f'install python3 on {name}, or set python = "/path/to/python3" in its [[hosts]]',
        )
        return
    seen[name] = facts
    yield Check(name, "reachable, agent runs", True, f"boot {facts.get('boot_id', '?')[:8]}")
    yield _disk(agent.config, facts)
    yield _accelerators(agent.config, facts)
    yield from _unhealthy(agent.config, facts)
    yield from _programs(agent, config)


def _programs(agent: HostAgent, config: Config) -> Iterator[Check]:
    """Each job's program and script exist on the host, in the job's workdir."""
    jobs = sorted(config.jobs)
    asked = [_program_request(config, job, agent.config) for job in jobs]
    try:
        answers = agent.programs(asked)
    except TransportError as exc:
        yield Check(agent.name, "jobs' programs exist", False, str(exc), "")
        return
    for job, want, answer in zip(jobs, asked, answers, strict=False):
        workdir = str(want["workdir"] or "~")
        if not answer.get("workdir_exists"):
            yield Check(
                agent.name,
                f"job {job}: workdir exists",
                False,
                workdir,
                f"create {workdir} on {agent.name} (a checkout of the job's code), or fix "
                f"[jobs.{job}] workdir",
            )
        elif answer.get("missing"):
            yield Check(
                agent.name,
                f"job {job}: program exists",
                False,
                f"missing in {workdir}: {', '.join(answer['missing'])}",
                f"put the job's code on {agent.name}, or fix [jobs.{job}] command",
            )
        else:
            yield Check(agent.name, f"job {job}: program exists", True, workdir)


def _program_request(config: Config, job: str, host: HostConfig) -> dict:
    """What to look for on the host: the program and its scripts in the job's workdir; for a
    synced job only the program (its scripts arrive with its code, before its first launch)."""
    argv = [host.python if p == "{python}" else p for p in config.jobs[job].command]
    if config.jobs[job].sync is not None:
        return {"workdir": None, "argv": argv[:1]}
    return {"workdir": job_workdir(config, job, host), "argv": argv}


def _ssh_fix(host: HostConfig) -> str:
    target = f"{host.user + '@' if host.user else ''}{host.address or host.name}"
    port = f" -p {host.port}" if host.port else ""
    return (
        f"check that `ssh{port} {target} true` works from this machine (address, port, key, sshd)"
    )


def _disk(host: HostConfig, facts: dict) -> Check:
    free = (facts.get("disk_free_bytes") or 0) / 2**30
    ok = free >= MIN_FREE_DISK_GIB
    return Check(
        host.name,
        "disk free in the run directory",
        ok,
        f"{free:.1f} GiB at {host.root}",
        "" if ok else f"free space under {host.root}, or point root elsewhere",
    )


def _accelerators(host: HostConfig, facts: dict) -> Check:
    seen = observation_from_probe(host.name, facts, datetime.now(UTC)).accelerators
    wanted = host.accelerators
    if is_tpu(wanted):
        chips = len(facts.get("tpu_chips", []))
        ok = chips in (0, tpu_chips(str(wanted)))  # 0: the runtime hides its device files
        return Check(
            host.name,
            "TPU chips",
            ok,
            f"{chips} /dev/accel* devices for {wanted}",
            "" if ok else "check accelerators = in [[hosts]] against the VM's type",
        )
    if wanted == "auto":
        ok = bool(seen)
        detail = facts.get("gpu_error") or f"nvidia-smi shows {len(seen)} GPUs"
        return Check(
            host.name,
            "GPUs seen",
            ok,
            detail,
            "" if ok else "install the NVIDIA driver (nvidia-smi), or set accelerators = 0",
        )
    count = int(wanted)
    agree = not seen or len(seen) == count
    return Check(
        host.name,
        "accelerators",
        agree,
        f"config says {count}; nvidia-smi shows {len(seen) if seen else 'none'}",
        "" if agree else f'set accelerators = {len(seen)} (or "auto") for {host.name}',
        warning=not agree,
    )


def _unhealthy(host: HostConfig, facts: dict) -> Iterator[Check]:
    """A GPU lost or with uncorrected ECC errors gets no runs until it is fixed."""
    for acc in observation_from_probe(host.name, facts, datetime.now(UTC)).accelerators:
        if not acc.healthy:
            yield Check(
                host.name,
                f"GPU {acc.index} healthy",
                False,
                acc.health or "unhealthy",
                f"reset or replace GPU {acc.index} on {host.name} (nvidia-smi -q); "
                "sheetrunner gives it no runs meanwhile",
            )
