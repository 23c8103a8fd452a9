"""Load and validate the TOML config into dataclasses.

Every mistake fails at start with the key's name, what is wrong with it and an
example of a right value, so a user never has to read a traceback. Relative
paths are resolved against the config file's directory, so a config works
from wherever the daemon is started.
"""

from __future__ import annotations

import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import config_checks as checks
from .config_checks import (
    at_least_one,
    check_name,
    expect,
    expect_list_of_str,
    keep,
    known_keys,
    non_negative_int,
    notify_command,
    notify_events,
    notify_max_per_hour,
    notify_webhook,
    opt_str,
    positive,
    resolve,
)
from .config_clusters import ClusterConfig, parse_clusters
from .config_slices import slices as _slices
from .errors import ConfigError
from .gang import Slice
from .pool.accelerators import is_tpu


@dataclass(frozen=True)
class SheetConfig:
    path: Path | None = None  # local .xlsx workbook
    url: str | None = None  # Google Sheets url or key
    worksheet: str | None = None  # tab name; default: the first tab
    credentials: str | None = None
    endpoint: str | None = None
    pool_tab: str | None = None
    metric_columns: tuple[str, ...] = ()
    curve: str | None = None  # metric drawn as a sparkline in the `curve` column
    # Google Sheets: seconds one cycle may spend on the API, retries and their pauses
    # included; past it the cycle goes on without the sheet and tries again next cycle.
    retry_budget_s: float = 20.0


@dataclass(frozen=True)
class DaemonConfig:
    poll_interval_s: float = 15.0
    state_dir: Path = Path(".sheetrunner-state")
    on_host_lost: str = "wait"  # or "requeue"
    host_lost_timeout_s: float = 300.0
    probe_timeout_s: float = 30.0
    max_parallel_hosts: int = 16


@dataclass(frozen=True)
class Defaults:
    retries: int = 2
    hang_timeout_s: float = 600.0
    backoff_s: float = 30.0  # first retry waits this long, doubling each time
    backoff_max_s: float = 3600.0
    launch_timeout_s: float = 120.0  # a launch not seen by the probe after this is lost
    stop_grace_s: float = 10.0  # a kill: SIGTERM, then SIGKILL after this many seconds
    time_limit_s: float | None = None  # a run's longest time running; None: no limit


@dataclass(frozen=True)
class JobConfig:
    name: str
    command: tuple[str, ...]
    workdir: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    keep_checkpoints: int = 2
    best_metric: str | None = None
    best_mode: str = "max"
    checkpoint_root: str | None = None  # shared storage: a restart on another host resumes
    no_retry_exit_codes: tuple[int, ...] = (2,)  # exits that fail at once (2: a usage error)
    time_limit_s: float | None = None  # overrides [defaults] time_limit for this job
    # A local directory the daemon uploads to each host (content-addressed) and runs the job
    # in (sheetrunner/code_sync.py); None: the job runs in `workdir` as it is on the host.
    sync: Path | None = None
    setup: tuple[tuple[str, ...], ...] = ()  # argv lists run once per host and code version


@dataclass(frozen=True)
class SshConfig:
    known_hosts: str = "~/.ssh/known_hosts"
    host_key_policy: str = "reject"  # or "accept-new"
    connect_timeout_s: float = 10.0
    keepalive_s: float = 15.0
    config_file: str | None = "~/.ssh/config"


@dataclass(frozen=True)
class HostConfig:
    name: str
    local: bool = False
    address: str | None = None
    user: str | None = None
    port: int | None = None
    identity: str | None = None
    labels: tuple[str, ...] = ()
    accelerators: int | str = 0  # an int, "auto" (nvidia-smi) or a TPU kind like "tpu-v4-8"
    slots: int = 1  # CPU-only runs (gpus = 0) at once
    root: str = "~/.sheetrunner"  # where runs live on the host
    python: str = "python3"  # interpreter for the agent and for "{python}" in job commands
    drain: bool = False  # take no new runs (for maintenance); running ones go on
    # argv run on the daemon's machine (never through a shell) to bring the host back once it
    # has been unreachable for repair_after seconds (sheetrunner/repair.py); () = never
    repair: tuple[str, ...] = ()
    repair_after_s: float = 300.0
    # Shared GPUs (docs/shared-gpus.md): a GPU is free for a run only with this much memory
    # free (MiB; 0: any); with share_gpus, one that others' processes use still counts free
    # when enough is left; claims: the directory of per-GPU claim files ("" = no claims).
    min_free_memory_mib: int = 0
    share_gpus: bool = False
    gpu_claims: str = checks.DEFAULT_GPU_CLAIMS
    env: dict[str, str] = field(default_factory=dict)  # merged over each job's env
    setup: tuple[tuple[str, ...], ...] = ()  # argv lists run before the job's setup
    keep_finished_days: float = 30.0  # attempt directories of final runs are removed after
    min_free_disk: int = 5 << 30  # bytes; a host with less free disk takes no new runs
    gc_shown_checkpoints: bool = False  # also remove checkpoints of runs the sheet still shows


@dataclass(frozen=True)
class NotifyConfig:
    """`[notify]`: where the daemon announces runs that ended and sweeps that finished
    (sheetrunner/notify.py, docs/notifications.md). Disabled unless webhook or command is set."""

    # A credential (whoever has it can post to the channel): kept out of repr, logs and
    # errors; log `webhook_host` instead.
    webhook: str | None = field(default=None, repr=False)
    command: tuple[str, ...] = ()  # argv; the message is appended as one more item
    on: tuple[str, ...] = checks.NOTIFY_DEFAULT_EVENTS
    max_per_hour: int = 30  # messages (one per cycle at most); beyond, dropped and logged
    timeout_s: float = 10.0  # per attempt, for the webhook and the command alike
    workdir: Path | None = None  # where the command runs: the config file's directory

    @property
    def enabled(self) -> bool:
        return bool(self.webhook or self.command)

    @property
    def webhook_host(self) -> str:
        """The only part of the webhook that may be logged."""
        return checks.url_host(self.webhook) if self.webhook else ""


@dataclass(frozen=True)
class Config:
    path: Path
    sheet: SheetConfig
    daemon: DaemonConfig
    defaults: Defaults
    jobs: dict[str, JobConfig]
    hosts: tuple[HostConfig, ...]
    ssh: SshConfig
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    clusters: tuple[ClusterConfig, ...] = ()  # [[clusters]]: Slurm (config_clusters.py)
    slices: tuple[Slice, ...] = ()  # [[slices]]: hosts that run one program together

    @property
    def base_dir(self) -> Path:
        return self.path.parent


TOP_KEYS = {"sheet", "daemon", "defaults", "jobs", "hosts", "ssh", "notify", "clusters", "slices"}


def load(path: str | Path) -> Config:
    """Read and validate a config file; raises ConfigError naming the key and the fix."""
    path = Path(path).expanduser().resolve()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist; create one with `sheetrunner init -c {path}`"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read the config file {path}: {exc}; point -c at a UTF-8 TOML file"
        ) from None
    return parse(raw, path)


def parse(raw: dict[str, Any], path: Path) -> Config:
    known_keys("", raw, TOP_KEYS)
    base = path.parent
    daemon = _daemon(raw.get("daemon", {}), base)
    hosts = _hosts(raw.get("hosts", []), base, clusters="clusters" in raw)
    config = Config(
        path=path,
        sheet=_sheet(_table(raw, "sheet"), base),
        daemon=daemon,
        defaults=_defaults(raw.get("defaults", {})),
        jobs=_jobs(_table(raw, "jobs"), base),
        hosts=hosts,
        ssh=_ssh(raw.get("ssh", {})),
        notify=_notify(raw.get("notify"), base),
        clusters=parse_clusters(raw.get("clusters", []), base),
        slices=_slices(raw.get("slices", []), {h.name: h.labels for h in hosts}),
    )
    _check_cluster_names(config)
    _check_local_workdirs(config)
    return config


def _check_cluster_names(config: Config) -> None:
    """A row's `where` names a host or a cluster: one name cannot mean both."""
    hosts = {h.name for h in config.hosts}
    for cluster in config.clusters:
        if cluster.name in hosts:
            raise ConfigError(
                f"clusters[{cluster.name}]: a host has that name too; a row's `where` must "
                "name one of them, so give the cluster a name of its own"
            )


def _check_local_workdirs(config: Config) -> None:
    """A job's workdir must exist where the local host would start it; a remote host's
    workdir is a path on that host and cannot be checked from here."""

    local = next((h for h in config.hosts if h.local), None)
    if local is None:
        return
    for job in config.jobs.values():
        if job.workdir is not None:
            resolved = Path(job_workdir(config, job.name, local) or config.base_dir)
            checks.local_workdir(f"jobs.{job.name}.workdir", job.workdir, resolved, local.name)


def _table(raw: dict[str, Any], key: str) -> dict[str, Any]:
    if key not in raw:
        raise ConfigError(
            f"[{key}] is missing; see examples/local/sheetrunner.toml for a full config"
        )
    return expect(key, raw[key], dict, "a table like [sheet]")


def _sheet(raw: dict[str, Any], base: Path) -> SheetConfig:
    known_keys(
        "sheet",
        raw,
        {
            "path",
            "url",
            "key",
            "worksheet",
            "credentials",
            "endpoint",
            "pool_tab",
            "metric_columns",
            "curve",
            "retry_budget",
        },
    )
    path = opt_str("sheet.path", raw.get("path"))
    url = opt_str("sheet.url", raw.get("url")) or opt_str("sheet.key", raw.get("key"))
    if bool(path) == bool(url):
        raise ConfigError(
            '[sheet] needs exactly one of `path` (a local workbook, e.g. path = "experiments.xlsx") '
            'or `url` (a Google Sheet, e.g. url = "https://docs.google.com/spreadsheets/d/KEY/edit")'
        )
    columns = raw.get("metric_columns", [])
    expect_list_of_str("sheet.metric_columns", columns, '["acc", "loss"]')
    checks.metric_columns("sheet.metric_columns", columns)
    workbook = resolve(base, path) if path else None
    if workbook is not None:
        checks.existing_file_with_suffix(
            "sheet.path",
            workbook,
            ".xlsx",
            'point it at an .xlsx workbook, e.g. path = "experiments.xlsx" '
            "(`sheetrunner init -c CONFIG` creates one where none exists)",
        )
    worksheet = opt_str("sheet.worksheet", raw.get("worksheet"))
    if worksheet is not None:
        checks.tab_name("sheet.worksheet", worksheet, 'worksheet = "experiments"')
    pool_tab = opt_str("sheet.pool_tab", raw.get("pool_tab"))
    if pool_tab is not None:
        checks.pool_tab(pool_tab, worksheet)
    return SheetConfig(
        path=workbook,
        url=url,
        worksheet=worksheet,
        credentials=opt_str("sheet.credentials", raw.get("credentials")),
        endpoint=opt_str("sheet.endpoint", raw.get("endpoint")),
        pool_tab=pool_tab,
        metric_columns=tuple(columns),
        curve=opt_str("sheet.curve", raw.get("curve")),
        retry_budget_s=positive("sheet.retry_budget", raw.get("retry_budget", 20), "20"),
    )


def _daemon(raw: dict[str, Any], base: Path) -> DaemonConfig:
    expect("daemon", raw, dict, "a table [daemon]")
    keys = {
        "poll_interval",
        "state_dir",
        "on_host_lost",
        "host_lost_timeout",
        "probe_timeout",
        "max_parallel_hosts",
    }
    known_keys("daemon", raw, keys)
    policy = raw.get("on_host_lost", "wait")
    if policy not in ("wait", "requeue"):
        raise ConfigError(
            f'daemon.on_host_lost = {policy!r} is not allowed; use "wait" (keep a run on an '
            'unreachable host until it is proven gone) or "requeue" (start it elsewhere after '
            "host_lost_timeout seconds)"
        )
    state_dir = resolve(
        base, opt_str("daemon.state_dir", raw.get("state_dir")) or ".sheetrunner-state"
    )
    checks.directory_or_absent("daemon.state_dir", state_dir, 'state_dir = ".sheetrunner-state"')
    return DaemonConfig(
        poll_interval_s=positive("daemon.poll_interval", raw.get("poll_interval", 15), "15"),
        state_dir=state_dir,
        on_host_lost=policy,
        host_lost_timeout_s=positive(
            "daemon.host_lost_timeout", raw.get("host_lost_timeout", 300), "300"
        ),
        probe_timeout_s=positive("daemon.probe_timeout", raw.get("probe_timeout", 30), "30"),
        max_parallel_hosts=at_least_one(
            "daemon.max_parallel_hosts", raw.get("max_parallel_hosts", 16)
        ),
    )


def _defaults(raw: dict[str, Any]) -> Defaults:
    expect("defaults", raw, dict, "a table [defaults]")
    known_keys(
        "defaults",
        raw,
        {
            "retries",
            "hang_timeout",
            "backoff",
            "backoff_max",
            "launch_timeout",
            "stop_grace",
            "time_limit",
        },
    )
    return Defaults(
        retries=non_negative_int("defaults.retries", raw.get("retries", 2), "2"),
        hang_timeout_s=positive("defaults.hang_timeout", raw.get("hang_timeout", 600), "600"),
        backoff_s=positive("defaults.backoff", raw.get("backoff", 30), "30"),
        backoff_max_s=positive("defaults.backoff_max", raw.get("backoff_max", 3600), "3600"),
        launch_timeout_s=positive("defaults.launch_timeout", raw.get("launch_timeout", 120), "120"),
        stop_grace_s=checks.stop_grace("defaults.stop_grace", raw.get("stop_grace", 10)),
        time_limit_s=checks.duration("defaults.time_limit", raw.get("time_limit")),
    )


def _jobs(raw: dict[str, Any], base: Path) -> dict[str, JobConfig]:
    if not raw:
        raise ConfigError(
            "[jobs] declares no job; add one, e.g.\n"
            '[jobs.digits]\ncommand = ["{python}", "jobs/digits.py"]'
        )
    return {name: _job(name, spec, base) for name, spec in raw.items()}


def _job(name: str, raw: Any, base: Path) -> JobConfig:
    where = f"jobs.{name}"
    check_name("job name", where, name)
    expect(where, raw, dict, f'[jobs.{name}] with command = ["python3", "train.py"]')
    known_keys(
        where,
        raw,
        {
            "command",
            "workdir",
            "env",
            "keep_checkpoints",
            "best_metric",
            "best_mode",
            "checkpoint_root",
            "no_retry_exit_codes",
            "time_limit",
            "sync",
            "setup",
        },
    )
    command = raw.get("command")
    if not command:
        raise ConfigError(f'{where}.command is missing; e.g. command = ["python3", "train.py"]')
    expect_list_of_str(f"{where}.command", command, '["python3", "train.py"]')
    checks.command_placeholders(f"{where}.command", command)
    env = raw.get("env", {})
    expect(f"{where}.env", env, dict, '{ OMP_NUM_THREADS = "1" }')
    for key, value in env.items():
        expect(f"{where}.env.{key}", value, str, '"1" (environment values are strings)')
    mode = raw.get("best_mode", "max")
    if mode not in ("max", "min"):
        raise ConfigError(f'{where}.best_mode = {mode!r}; use "max" or "min"')
    return JobConfig(
        name=name,
        command=tuple(command),
        workdir=opt_str(f"{where}.workdir", raw.get("workdir")),
        env=dict(env),
        keep_checkpoints=keep(f"{where}.keep_checkpoints", raw.get("keep_checkpoints", 2)),
        best_metric=opt_str(f"{where}.best_metric", raw.get("best_metric")),
        best_mode=mode,
        checkpoint_root=opt_str(f"{where}.checkpoint_root", raw.get("checkpoint_root")),
        no_retry_exit_codes=_exit_codes(
            f"{where}.no_retry_exit_codes", raw.get("no_retry_exit_codes", [2])
        ),
        time_limit_s=checks.duration(f"{where}.time_limit", raw.get("time_limit")),
        sync=_sync(f"{where}.sync", raw.get("sync"), base),
        setup=checks.setup_commands(f"{where}.setup", raw.get("setup")),
    )


def _sync(where: str, value: Any, base: Path) -> Path | None:
    text = opt_str(where, value)
    if text is None:
        return None
    path = resolve(base, text)
    checks.sync_dir(where, path)
    return path


def _exit_codes(where: str, value: Any) -> tuple[int, ...]:
    """Exit codes a retry cannot fix (a usage error): the run fails at once."""
    if not isinstance(value, list) or any(
        isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 255 for v in value
    ):
        raise ConfigError(
            f"{where} = {value!r}; use a list of exit codes from 1 to 255, e.g. [2] "
            "(argparse's usage error), or [] to retry every crash"
        )
    return tuple(value)


HOST_KEYS = {
    "name",
    "local",
    "address",
    "user",
    "port",
    "identity",
    "labels",
    "accelerators",
    "slots",
    "root",
    "python",
    "drain",
    "repair",
    "repair_after",
    "min_free_memory",
    "share_gpus",
    "gpu_claims",
    "env",
    "setup",
    "keep_finished_days",
    "min_free_disk",
    "gc_shown_checkpoints",
}


def _hosts(raw: Any, base: Path, clusters: bool = False) -> tuple[HostConfig, ...]:
    expect("hosts", raw, list, '[[hosts]] tables, e.g.\n[[hosts]]\nname = "local"\nlocal = true')
    if not raw and not clusters:
        raise ConfigError(
            'no [[hosts]] declared; add e.g.\n[[hosts]]\nname = "local"\nlocal = true'
        )
    hosts = tuple(_host(i, spec, base) for i, spec in enumerate(raw))
    checks.unique_names("host", [h.name for h in hosts])
    return hosts


def _host(index: int, raw: Any, base: Path) -> HostConfig:
    name = checks.table_name("host", f"hosts[{index}]", raw, HOST_KEYS, "gpu-a")
    where = f"hosts[{name}]"
    local = raw.get("local", False)
    expect(f"{where}.local", local, bool, "true")
    labels = raw.get("labels", [])
    expect_list_of_str(f"{where}.labels", labels, '["a100", "big"]')
    root = opt_str(f"{where}.root", raw.get("root")) or "~/.sheetrunner"
    if local:
        root = str(resolve(base, root))
    port = raw.get("port")
    if port is not None and (
        isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536
    ):
        raise ConfigError(f"{where}.port = {port!r}; use a TCP port number, e.g. port = 22")
    python = opt_str(f"{where}.python", raw.get("python"))
    drain = raw.get("drain", False)
    expect(f"{where}.drain", drain, bool, "true")
    return HostConfig(
        name=name,
        local=local,
        address=opt_str(f"{where}.address", raw.get("address")),
        user=opt_str(f"{where}.user", raw.get("user")),
        port=port,
        identity=opt_str(f"{where}.identity", raw.get("identity")),
        labels=tuple(labels),
        accelerators=_accelerators(f"{where}.accelerators", raw.get("accelerators", 0)),
        slots=non_negative_int(f"{where}.slots", raw.get("slots", 1), "4"),
        root=root,
        python=python or (sys.executable if local else "python3"),
        drain=drain,
        repair=checks.repair_command(f"{where}.repair", raw.get("repair")),
        repair_after_s=positive(f"{where}.repair_after", raw.get("repair_after", 300), "300"),
        **checks.gpu_sharing(where, raw),
        env=checks.env_table(f"{where}.env", raw.get("env", {})),
        setup=checks.setup_commands(f"{where}.setup", raw.get("setup")),
        keep_finished_days=checks.days(
            f"{where}.keep_finished_days", raw.get("keep_finished_days", 30)
        ),
        min_free_disk=checks.byte_size(
            f"{where}.min_free_disk", raw.get("min_free_disk", 5 << 30), '"5GiB"'
        ),
        gc_shown_checkpoints=expect(
            f"{where}.gc_shown_checkpoints", raw.get("gc_shown_checkpoints", False), bool, "true"
        ),
    )


def _accelerators(where: str, value: Any) -> int | str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(
            f'{where} = {value!r}; use a count (8), "auto" or a TPU kind ("tpu-v4-8")'
        )
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(
                f"{where} = {value}; a count cannot be negative, e.g. accelerators = 8"
            )
        return value
    if value == "auto" or is_tpu(value):
        return value
    raise ConfigError(f'{where} = {value!r}; use a count (8), "auto" or a TPU kind ("tpu-v4-8")')


def _ssh(raw: dict[str, Any]) -> SshConfig:
    expect("ssh", raw, dict, "a table [ssh]")
    known_keys(
        "ssh",
        raw,
        {"known_hosts", "host_key_policy", "connect_timeout", "keepalive", "config_file"},
    )
    policy = raw.get("host_key_policy", "reject")
    if policy not in ("reject", "accept-new"):
        raise ConfigError(
            f'ssh.host_key_policy = {policy!r}; use "reject" (unknown host keys are refused) or '
            '"accept-new" (trust a host\'s key the first time, then pin it)'
        )
    return SshConfig(
        known_hosts=opt_str("ssh.known_hosts", raw.get("known_hosts")) or "~/.ssh/known_hosts",
        host_key_policy=policy,
        connect_timeout_s=positive("ssh.connect_timeout", raw.get("connect_timeout", 10), "10"),
        keepalive_s=positive("ssh.keepalive", raw.get("keepalive", 15), "15"),
        config_file=opt_str("ssh.config_file", raw.get("config_file", "~/.ssh/config")),
    )


NOTIFY_KEYS = {"webhook", "command", "on", "max_per_hour", "timeout"}


def _notify(raw: Any, base: Path) -> NotifyConfig:
    """`[notify]`; absent: no notifications. The webhook's value never appears in an error."""
    if raw is None:
        return NotifyConfig()
    expect("notify", raw, dict, 'a table [notify] with webhook = "https://hooks.slack.com/..."')
    known_keys("notify", raw, NOTIFY_KEYS)
    webhook = notify_webhook("notify.webhook", raw["webhook"]) if "webhook" in raw else None
    command = notify_command("notify.command", raw.get("command"))
    if webhook is None and not command:
        raise ConfigError(
            '[notify] needs `webhook` (e.g. webhook = "https://hooks.slack.com/services/...") '
            'and/or `command` (e.g. command = ["notify-send", "sheetrunner"]); remove the table '
            "to send no notifications"
        )
    return NotifyConfig(
        webhook=webhook,
        command=command,
        on=notify_events("notify.on", raw.get("on", list(checks.NOTIFY_DEFAULT_EVENTS))),
        max_per_hour=notify_max_per_hour("notify.max_per_hour", raw.get("max_per_hour", 30)),
        timeout_s=positive("notify.timeout", raw.get("timeout", 10), "10"),
        workdir=base,
    )


def job_workdir(config: Config, job: str, host: HostConfig) -> str | None:
    """Where the job starts: relative workdirs are relative to the config file on the local
    host (so the example works from any directory) and to the home directory elsewhere."""
    workdir = config.jobs[job].workdir
    if not host.local:
        return workdir
    base = config.base_dir
    return str((base / Path(workdir).expanduser()).resolve()) if workdir else str(base)
