"""config.load / config.parse: values, units, path resolution, defaults, and clear errors."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from helpers import FAKE_JOB, local_config

from sheetrunner import config
from sheetrunner.errors import ConfigError

MINIMAL = """
[sheet]
path = "experiments.xlsx"

[jobs.train]
command = ["python3", "train.py"]

[[hosts]]
name = "local"
local = true
"""


def write(tmp_path: Path, text: str, name: str = "sheetrunner.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# -- a full valid config ------------------------------------------------------------------------


def test_local_config_values_units_and_resolved_paths(tmp_path: Path) -> None:
    cfg = local_config(tmp_path, slots=3, accelerators=2, hang_timeout=42, retries=5, backoff=0.25)
    base = tmp_path.resolve()
    assert cfg.path == base / "sheetrunner.toml"
    assert cfg.base_dir == base
    # relative paths are resolved against the config file's directory, not the cwd
    assert cfg.sheet.path == base / "experiments.xlsx"
    assert cfg.sheet.url is None
    assert cfg.daemon.state_dir == base / "state"
    # units: the TOML keys are seconds, the fields say so
    assert cfg.daemon.poll_interval_s == 0.5
    assert cfg.defaults.retries == 5
    assert cfg.defaults.hang_timeout_s == 42.0
    assert cfg.defaults.backoff_s == 0.25
    assert cfg.defaults.launch_timeout_s == 10.0
    assert isinstance(cfg.defaults.hang_timeout_s, float)
    assert list(cfg.jobs) == ["fake"]
    job = cfg.jobs["fake"]
    assert job.name == "fake"
    assert job.command == (sys.executable, str(FAKE_JOB))
    (host,) = cfg.hosts
    assert host.name == "local" and host.local is True
    assert host.accelerators == 2 and host.slots == 3
    assert host.root == str(base / "host")
    assert host.python == sys.executable  # a local host runs the daemon's own interpreter


def test_every_key_parses_with_its_unit(tmp_path: Path) -> None:
    path = write(tmp_path, """
        [sheet]
        url = "https://docs.google.com/spreadsheets/d/KEY/edit"
        worksheet = "runs"
        credentials = "sa.json"
        endpoint = "http://localhost:9000"
        pool_tab = "pool"
        metric_columns = ["acc", "loss"]

        [daemon]
        poll_interval = 7
        state_dir = "/var/lib/sheetrunner"
        on_host_lost = "requeue"
        host_lost_timeout = 90
        probe_timeout = 12.5
        max_parallel_hosts = 4

        [defaults]
        retries = 0
        hang_timeout = 100
        backoff = 3
        backoff_max = 60
        launch_timeout = 20

        [jobs.train]
        command = ["{python}", "train.py", "--fast"]
        workdir = "/srv/code"
        env = { OMP_NUM_THREADS = "1", WANDB_MODE = "offline" }
        keep_checkpoints = 5
        best_metric = "loss"
        best_mode = "min"

        [jobs.eval]
        command = ["bash", "eval.sh"]

        [[hosts]]
        name = "gpu-a"
        address = "10.0.0.5"
        user = "ml"
        port = 2222
        identity = "~/.ssh/id_ml"
        labels = ["a100", "big"]
        accelerators = "auto"
        slots = 4
        root = "/scratch/sr"
        python = "/opt/py/bin/python"

        [[hosts]]
        name = "tpu_1.zone-b"
        address = "tpu1"
        accelerators = "tpu-v4-8"

        [ssh]
        known_hosts = "/etc/ssh/known"
        host_key_policy = "accept-new"
        connect_timeout = 5
        keepalive = 30
        config_file = "/etc/ssh/ssh_config"
    """)
    cfg = config.load(path)
    assert cfg.sheet == config.SheetConfig(
        path=None, url="https://docs.google.com/spreadsheets/d/KEY/edit", worksheet="runs",
        credentials="sa.json", endpoint="http://localhost:9000", pool_tab="pool",
        metric_columns=("acc", "loss"),
    )
    assert cfg.daemon == config.DaemonConfig(
        poll_interval_s=7.0, state_dir=Path("/var/lib/sheetrunner"), on_host_lost="requeue",
        host_lost_timeout_s=90.0, probe_timeout_s=12.5, max_parallel_hosts=4,
    )
    assert cfg.defaults == config.Defaults(
        retries=0, hang_timeout_s=100.0, backoff_s=3.0, backoff_max_s=60.0, launch_timeout_s=20.0
    )
    assert list(cfg.jobs) == ["train", "eval"]
    assert cfg.jobs["train"] == config.JobConfig(
        name="train", command=("{python}", "train.py", "--fast"), workdir="/srv/code",
        env={"OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}, keep_checkpoints=5,
        best_metric="loss", best_mode="min",
    )
    assert cfg.jobs["eval"].command == ("bash", "eval.sh")
    gpu, tpu = cfg.hosts
    assert gpu == config.HostConfig(
        name="gpu-a", local=False, address="10.0.0.5", user="ml", port=2222,
        identity="~/.ssh/id_ml", labels=("a100", "big"), accelerators="auto", slots=4,
        root="/scratch/sr", python="/opt/py/bin/python",
    )
    assert tpu.name == "tpu_1.zone-b" and tpu.accelerators == "tpu-v4-8"
    # a remote host's root is a path on that host: never resolved locally
    assert tpu.root == "~/.sheetrunner" and tpu.python == "python3" and tpu.port is None
    assert cfg.ssh == config.SshConfig(
        known_hosts="/etc/ssh/known", host_key_policy="accept-new", connect_timeout_s=5.0,
        keepalive_s=30.0, config_file="/etc/ssh/ssh_config",
    )


def test_sheet_key_is_an_alias_for_url(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace('path = "experiments.xlsx"', 'key = "1AbCdEf"'))
    cfg = config.load(path)
    assert cfg.sheet.url == "1AbCdEf" and cfg.sheet.path is None


def test_defaults_of_a_minimal_config(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, MINIMAL))
    base = tmp_path.resolve()
    assert cfg.daemon == config.DaemonConfig(state_dir=base / ".sheetrunner-state")
    assert cfg.daemon.poll_interval_s == 15.0 and cfg.daemon.on_host_lost == "wait"
    assert cfg.defaults == config.Defaults()
    assert cfg.defaults.retries == 2 and cfg.defaults.hang_timeout_s == 600.0
    assert cfg.ssh == config.SshConfig()
    assert cfg.ssh.host_key_policy == "reject"
    assert cfg.jobs["train"].env == {} and cfg.jobs["train"].best_mode == "max"
    assert cfg.jobs["train"].keep_checkpoints == 2
    (host,) = cfg.hosts
    assert host.accelerators == 0 and host.slots == 1 and host.labels == ()
    # a local host's default root is expanded (not left as "~/...") so it is usable directly
    assert host.root == str(Path("~/.sheetrunner").expanduser())
    assert cfg.sheet.worksheet is None and cfg.sheet.metric_columns == ()


def test_relative_paths_do_not_depend_on_the_cwd(tmp_path: Path, monkeypatch) -> None:
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    write(conf_dir, MINIMAL + '\n[daemon]\nstate_dir = "../state"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = config.load("../conf/sheetrunner.toml")  # relative to the cwd, like a CLI argument
    assert cfg.sheet.path == conf_dir.resolve() / "experiments.xlsx"
    assert cfg.daemon.state_dir == tmp_path.resolve() / "state"


def test_absolute_and_home_paths_are_kept(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace('"experiments.xlsx"', '"~/exp.xlsx"')
                 + '\n[daemon]\nstate_dir = "/abs/state"\n')
    cfg = config.load(path)
    assert cfg.sheet.path == Path("~/exp.xlsx").expanduser()
    assert cfg.daemon.state_dir == Path("/abs/state")


@pytest.mark.parametrize("value", ['"auto"', '"tpu-v4-8"', '"tpu-v5e-16"', "0", "8"])
def test_good_accelerators(tmp_path: Path, value: str) -> None:
    cfg = config.load(write(tmp_path, MINIMAL + f"accelerators = {value}\n"))
    expected = value.strip('"') if value.startswith('"') else int(value)
    assert cfg.hosts[0].accelerators == expected


# -- bad configs: each error names the key and hints at the fix ---------------------------------

SHEET = '[sheet]\npath = "x.xlsx"\n'
JOBS = '[jobs.train]\ncommand = ["python3", "train.py"]\n'
HOSTS = '[[hosts]]\nname = "local"\nlocal = true\n'


def host(extra: str) -> str:
    return SHEET + JOBS + HOSTS + extra + "\n"


BAD = {
    "unknown top-level key": (
        SHEET + JOBS + HOSTS + "[deamon]\npoll_interval = 3\n",
        ["deamon", "allowed", "daemon"],
    ),
    "unknown key in daemon": (
        SHEET + JOBS + HOSTS + "[daemon]\npoll_intervall = 3\n",
        ["daemon.poll_intervall", "poll_interval"],
    ),
    "missing sheet": (JOBS + HOSTS, ["[sheet]", "missing", "example"]),
    "both path and url": (
        '[sheet]\npath = "x.xlsx"\nurl = "https://docs.google.com/x"\n' + JOBS + HOSTS,
        ["path", "url", "exactly one", 'path = "experiments.xlsx"'],
    ),
    "neither path nor url": (
        '[sheet]\nworksheet = "runs"\n' + JOBS + HOSTS,
        ["path", "url", "exactly one"],
    ),
    "negative poll_interval": (
        SHEET + JOBS + HOSTS + "[daemon]\npoll_interval = -1\n",
        ["daemon.poll_interval", "-1", "positive", "poll_interval = 15"],
    ),
    "zero hang_timeout": (
        SHEET + JOBS + HOSTS + "[defaults]\nhang_timeout = 0\n",
        ["defaults.hang_timeout", "positive", "hang_timeout = 600"],
    ),
    "bool where a number is expected": (
        SHEET + JOBS + HOSTS + "[daemon]\npoll_interval = true\n",
        ["daemon.poll_interval", "True", "poll_interval = 15"],
    ),
    "bool retries": (
        SHEET + JOBS + HOSTS + "[defaults]\nretries = false\n",
        ["defaults.retries", "whole number", "retries = 2"],
    ),
    "string where a number is expected": (
        SHEET + JOBS + HOSTS + '[ssh]\nconnect_timeout = "10s"\n',
        ["ssh.connect_timeout", "'10s'", "connect_timeout = 10"],
    ),
    "bad on_host_lost": (
        SHEET + JOBS + HOSTS + '[daemon]\non_host_lost = "retry"\n',
        ["daemon.on_host_lost", "'retry'", '"wait"', '"requeue"'],
    ),
    "jobs missing": (SHEET + HOSTS, ["[jobs]", "missing"]),
    "jobs empty": (SHEET + "[jobs]\n" + HOSTS, ["[jobs]", "no job", "[jobs.digits]", "command"]),
    "job without command": (
        SHEET + '[jobs.train]\nworkdir = "/srv"\n' + HOSTS,
        ["jobs.train.command", "missing", 'command = ["python3", "train.py"]'],
    ),
    "command is a string": (
        SHEET + '[jobs.train]\ncommand = "python3 train.py"\n' + HOSTS,
        ["jobs.train.command", "list of strings", 'command = ["python3", "train.py"]'],
    ),
    "command holds a number": (
        SHEET + '[jobs.train]\ncommand = ["python3", 3]\n' + HOSTS,
        ["jobs.train.command", "list of strings"],
    ),
    "env value not a string": (
        SHEET + JOBS + "env = { OMP_NUM_THREADS = 1 }\n" + HOSTS,
        ["jobs.train.env.OMP_NUM_THREADS", "wrong type", '"1"', "strings"],
    ),
    "unknown key in a job": (
        SHEET + JOBS + 'cmd = ["x"]\n' + HOSTS,
        ["jobs.train.cmd", "command"],
    ),
    "bad job name": (
        SHEET + '[jobs."my job"]\ncommand = ["x"]\n' + HOSTS,
        ["jobs.my job", "'my job'", "letters, digits"],
    ),
    "keep_checkpoints zero": (
        SHEET + JOBS + "keep_checkpoints = 0\n" + HOSTS,
        ["jobs.train.keep_checkpoints", "at least 1", "2"],
    ),
    "bad best_mode": (
        SHEET + JOBS + 'best_mode = "up"\n' + HOSTS,
        ["jobs.train.best_mode", "'up'", '"max"', '"min"'],
    ),
    "no hosts": (SHEET + JOBS, ["[[hosts]]", "name = \"local\""]),
    "hosts as a table": (
        SHEET + JOBS + '[hosts]\nname = "a"\n',
        ["hosts", "wrong type", "[[hosts]]"],
    ),
    "duplicate host names": (
        SHEET + JOBS + HOSTS + '[[hosts]]\nname = "local"\naddress = "x"\n',
        ["hosts", "'local'", "twice", "its own name"],
    ),
    "host without name": (
        SHEET + JOBS + '[[hosts]]\naddress = "x"\n',
        ["hosts[0].name", "missing", 'name = "gpu-a"'],
    ),
    "bad host name chars": (
        SHEET + JOBS + '[[hosts]]\nname = "gpu a;rm"\n',
        ["hosts[0].name", "'gpu a;rm'", "letters, digits", '"gpu-a"'],
    ),
    "unknown key in a host": (
        SHEET + JOBS + '[[hosts]]\nname = "a"\nhostname = "x"\n',
        ["hosts[0].hostname", "address"],
    ),
    "accelerators lots": (
        host('accelerators = "lots"'),
        ["hosts[local].accelerators", "'lots'", '"auto"', '"tpu-v4-8"', "(8)"],
    ),
    "accelerators negative": (
        host("accelerators = -1"),
        ["hosts[local].accelerators", "-1", "negative", "accelerators = 8"],
    ),
    "accelerators bool": (host("accelerators = true"), ["hosts[local].accelerators", '"auto"']),
    "accelerators float": (host("accelerators = 2.5"), ["hosts[local].accelerators", "(8)"]),
    "port too big": (host("port = 70000"), ["hosts[local].port", "70000", "port = 22"]),
    "port zero": (host("port = 0"), ["hosts[local].port", "port = 22"]),
    "port as text": (host('port = "22"'), ["hosts[local].port", "'22'", "port = 22"]),
    "labels not a list": (
        host('labels = "a100"'),
        ["hosts[local].labels", "list of strings", '["a100", "big"]'],
    ),
    "local not a bool": (
        SHEET + JOBS + '[[hosts]]\nname = "a"\nlocal = "yes"\n',
        ["hosts[a].local", "wrong type", "true"],
    ),
    "negative slots": (host("slots = -2"), ["hosts[local].slots", "whole number", "slots = 4"]),
    "bad host_key_policy": (
        SHEET + JOBS + HOSTS + '[ssh]\nhost_key_policy = "yes"\n',
        ["ssh.host_key_policy", "'yes'", '"reject"', '"accept-new"'],
    ),
    "empty worksheet name": (
        '[sheet]\npath = "x.xlsx"\nworksheet = ""\n' + JOBS + HOSTS,
        ["sheet.worksheet", "non-empty string", "worksheet ="],
    ),
    "metric_columns not a list": (
        '[sheet]\npath = "x.xlsx"\nmetric_columns = "acc"\n' + JOBS + HOSTS,
        ["sheet.metric_columns", "list of strings", '["acc", "loss"]'],
    ),
}


@pytest.mark.parametrize("text,fragments", list(BAD.values()), ids=list(BAD))
def test_bad_config_names_the_key_and_the_fix(tmp_path: Path, text: str,
                                              fragments: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_missing_file_says_how_to_create_one(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        config.load(path)
    message = str(info.value)
    assert str(path.resolve()) in message
    assert "does not exist" in message and "sheetrunner init" in message


def test_invalid_toml_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[sheet]\npath = "x.xlsx"\n\n[daemon]\npoll_interval = = 3\n')
    with pytest.raises(ConfigError) as info:
        config.load(path)
    message = str(info.value)
    assert str(path.resolve()) in message and "not valid TOML" in message
    assert "line 5" in message  # tomllib's position: where to look


def test_parse_takes_a_dict_and_its_path(tmp_path: Path) -> None:
    raw = {
        "sheet": {"path": "book.xlsx"},
        "jobs": {"j": {"command": ["echo", "hi"]}},
        "hosts": [{"name": "h", "local": True, "root": "r"}],
    }
    cfg = config.parse(raw, tmp_path / "c.toml")
    assert cfg.sheet.path == (tmp_path / "book.xlsx").resolve()
    assert cfg.hosts[0].root == str((tmp_path / "r").resolve())
    raw["daemon"] = {"poll_interval": 0}
    with pytest.raises(ConfigError, match="daemon.poll_interval"):
        config.parse(raw, tmp_path / "c.toml")


# -- gaps: mistakes that are not reported as ConfigError (xfail until fixed) --------------------


def test_bool_port_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"hosts\[local\]\.port"):
        config.load(write(tmp_path, host("port = true")))


def test_fractional_max_parallel_hosts_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="daemon.max_parallel_hosts"):
        config.load(write(tmp_path, SHEET + JOBS + HOSTS + "[daemon]\nmax_parallel_hosts = 0.5\n"))


def test_non_string_ssh_config_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ssh.config_file"):
        config.load(write(tmp_path, SHEET + JOBS + HOSTS + "[ssh]\nconfig_file = 22\n"))


@pytest.mark.parametrize("kind", ["directory", "not utf-8"])
def test_unreadable_config_is_a_config_error(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "sheetrunner.toml"
    if kind == "directory":
        path.mkdir()
    else:
        path.write_bytes(b'[sheet]\npath = "caf\xe9.xlsx"\n')
    with pytest.raises(ConfigError, match="sheetrunner.toml"):
        config.load(path)


# -- [notify] -----------------------------------------------------------------------------------

WEBHOOK = "https://hooks.slack.com/services/T000/B000/s3cr3tT0k3n"


def test_notify_every_key_parses(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, SHEET + JOBS + HOSTS + textwrap.dedent(f"""
        [notify]
        webhook = "{WEBHOOK}"
        command = ["notify-send", "sheetrunner"]
        on = ["failed", "succeeded", "sweep-finished", "failed"]
        max_per_hour = 12
        timeout = 2.5
    """)))
    assert cfg.notify == config.NotifyConfig(
        webhook=WEBHOOK, command=("notify-send", "sheetrunner"),
        on=("failed", "succeeded", "sweep-finished"), max_per_hour=12, timeout_s=2.5,
        workdir=tmp_path.resolve(),
    )
    assert cfg.notify.enabled and cfg.notify.webhook_host == "hooks.slack.com"
    # the webhook is a credential: not in the config's repr (which a traceback or log may show)
    assert "s3cr3t" not in repr(cfg) and "s3cr3t" not in str(cfg.notify)


def test_notify_defaults_and_absence(tmp_path: Path) -> None:
    assert config.load(write(tmp_path, MINIMAL)).notify == config.NotifyConfig()
    assert not config.NotifyConfig().enabled
    cfg = config.load(write(tmp_path, MINIMAL + '\n[notify]\ncommand = ["notify-send"]\n'))
    notify = cfg.notify
    assert notify.enabled and notify.webhook is None and notify.webhook_host == ""
    assert notify.on == ("failed", "sweep-finished")
    assert notify.max_per_hour == 30 and notify.timeout_s == 10.0
    # a plain-http webhook (a local relay) is allowed
    cfg = config.load(write(tmp_path, MINIMAL + '\n[notify]\nwebhook = "http://127.0.0.1:8080/h"\n'))
    assert cfg.notify.webhook_host == "127.0.0.1" and cfg.notify.command == ()


NOTIFY = SHEET + JOBS + HOSTS + "[notify]\n"
NOTIFY_HOOK = NOTIFY + f'webhook = "{WEBHOOK}"\n'
ALLOWED = "succeeded, failed, stopped, invalid, duplicate, sweep-finished"

NOTIFY_BAD = {
    "unknown key": (NOTIFY_HOOK + "url = 1\n", ["notify.url", "webhook", "max_per_hour"]),
    "neither webhook nor command": (NOTIFY + "max_per_hour = 3\n",
                                    ["[notify]", "webhook", "command", "remove the table"]),
    "a typo in on": (NOTIFY_HOOK + 'on = ["failed", "sweep-finshed"]\n',
                     ["notify.on", "'sweep-finshed'", ALLOWED]),
    "a live status in on": (NOTIFY_HOOK + 'on = ["running"]\n', ["notify.on", "'running'", ALLOWED]),
    "on not a list": (NOTIFY_HOOK + 'on = "failed"\n', ["notify.on", "list of strings", ALLOWED]),
    "on empty": (NOTIFY_HOOK + "on = []\n", ["notify.on", "empty", ALLOWED]),
    "command a string": (NOTIFY + 'command = "notify-send hi"\n',
                         ["notify.command", "list of strings", '["notify-send", "sheetrunner"]']),
    "command empty": (NOTIFY + 'command = [""]\n', ["notify.command", "names no program"]),
    "max_per_hour zero": (NOTIFY_HOOK + "max_per_hour = 0\n",
                          ["notify.max_per_hour", "from 1 to 3600", "max_per_hour = 30"]),
    "max_per_hour fractional": (NOTIFY_HOOK + "max_per_hour = 2.5\n", ["notify.max_per_hour"]),
    "timeout negative": (NOTIFY_HOOK + "timeout = -1\n", ["notify.timeout", "timeout = 10"]),
    "timeout infinite": (NOTIFY_HOOK + "timeout = inf\n", ["notify.timeout", "finite"]),
    "notify not a table": ('notify = "x"\n' + SHEET + JOBS + HOSTS,
                           ["notify", "wrong type", "[notify]"]),
}


@pytest.mark.parametrize("text,fragments", list(NOTIFY_BAD.values()), ids=list(NOTIFY_BAD))
def test_bad_notify_names_the_key_and_the_fix(tmp_path: Path, text: str,
                                              fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, text))
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in {str(info.value)!r}"


@pytest.mark.parametrize("url", [
    "hooks.slack.com/services/T000/B000/s3cr3tT0k3n",  # no scheme
    "ftp://hooks.slack.com/services/T000/B000/s3cr3tT0k3n",
    "https:///services/T000/B000/s3cr3tT0k3n",  # no host
    " https://hooks.slack.com/services/T000/B000/s3cr3tT0k3n",
    "https://hooks.slack.com/services/T000/B000/s3cr3tT0k3n\\n",
    "https://hooks.slack.com:99999/services/T000/B000/s3cr3tT0k3n",  # a bad port
    "https://user:s3cr3tT0k3n@hooks.slack.com/x",
])
def test_a_bad_webhook_is_refused_without_repeating_it(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, NOTIFY + f'webhook = "{url}"\n'))
    message = str(info.value)
    assert "notify.webhook" in message and "https://hooks.slack.com/services/" in message
    assert "s3cr3t" not in message and "T000/B000/s3" not in message


@pytest.mark.parametrize("value", ["3", "true", '""'])
def test_a_webhook_of_the_wrong_type_is_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="notify.webhook .*non-empty string"):
        config.load(write(tmp_path, NOTIFY + f"webhook = {value}\n"))


def test_no_retry_exit_codes_default_to_the_usage_error_and_are_checked(tmp_path):
    from helpers import local_config

    config = local_config(tmp_path)
    assert config.jobs["fake"].no_retry_exit_codes == (2,)
    with pytest.raises(ConfigError, match="no_retry_exit_codes"):
        local_config(tmp_path, extra='\n[jobs.bad]\ncommand = ["x"]\nno_retry_exit_codes = [0]\n')


# -- the lifecycle: stop_grace, time_limit, repair, the Sheets retry budget ---------------------


LIFECYCLE = """
[sheet]
url = "https://docs.google.com/spreadsheets/d/KEY/edit"
retry_budget = 12

[defaults]
stop_grace = 30
time_limit = "2h"

[jobs.train]
command = ["python3", "train.py"]
time_limit = "90m"

[jobs.quick]
command = ["python3", "quick.py"]
time_limit = 600

[jobs.open]
command = ["python3", "open.py"]

[[hosts]]
name = "tpu-a"
address = "10.0.0.2"
repair = ["gcloud", "compute", "tpus", "tpu-vm", "start", "tpu-a"]
repair_after = 120

[[hosts]]
name = "gpu-b"
address = "10.0.0.3"
"""


def test_lifecycle_keys_parse_with_their_units_and_reach_the_policy(tmp_path: Path) -> None:
    from sheetrunner.daemon import policy_from

    cfg = config.load(write(tmp_path, LIFECYCLE))
    assert cfg.sheet.retry_budget_s == 12.0
    assert cfg.defaults.stop_grace_s == 30.0 and cfg.defaults.time_limit_s == 7200.0
    assert cfg.jobs["train"].time_limit_s == 5400.0 and cfg.jobs["quick"].time_limit_s == 600.0
    assert cfg.jobs["open"].time_limit_s is None
    tpu, gpu = cfg.hosts
    assert tpu.repair == ("gcloud", "compute", "tpus", "tpu-vm", "start", "tpu-a")
    assert tpu.repair_after_s == 120.0
    assert gpu.repair == () and gpu.repair_after_s == 300.0
    policy = policy_from(cfg)
    assert policy.stop_grace_s == 30.0 and policy.time_limit_s == 7200.0
    assert dict(policy.job_time_limit_s) == {"train": 5400.0, "quick": 600.0}


def test_lifecycle_defaults(tmp_path: Path) -> None:
    from sheetrunner.daemon import policy_from

    cfg = config.load(write(tmp_path, MINIMAL))
    assert cfg.defaults.stop_grace_s == 10.0 and cfg.defaults.time_limit_s is None
    assert cfg.sheet.retry_budget_s == 20.0
    assert cfg.hosts[0].repair == () and cfg.hosts[0].repair_after_s == 300.0
    policy = policy_from(cfg)
    assert policy.stop_grace_s == 10.0 and policy.time_limit_s is None
    assert dict(policy.job_time_limit_s) == {}


@pytest.mark.parametrize("value,seconds", [
    ("45", 45.0), ("1.5", 1.5), ('"30s"', 30.0), ('"90m"', 5400.0), ('"2h"', 7200.0),
    ('"1d"', 86400.0), ('"1.5h"', 5400.0), ('" 2h "', 7200.0),
])
def test_time_limit_takes_seconds_or_a_duration_with_a_unit(tmp_path, value, seconds):
    cfg = config.load(write(tmp_path, MINIMAL + f"\n[defaults]\ntime_limit = {value}\n"))
    assert cfg.defaults.time_limit_s == seconds


LIFECYCLE_BAD = {
    "stop_grace negative": ("[defaults]\nstop_grace = -1\n",
                            ["defaults.stop_grace = -1", "stop_grace = 10"]),
    "stop_grace text": ('[defaults]\nstop_grace = "10s"\n',
                        ["defaults.stop_grace = '10s'", "stop_grace = 10"]),
    "stop_grace too long": ("[defaults]\nstop_grace = 7200\n",
                            ["defaults.stop_grace = 7200", "3600"]),
    "stop_grace nan": ("[defaults]\nstop_grace = nan\n", ["defaults.stop_grace = nan"]),
    "time_limit no unit": ('[defaults]\ntime_limit = "2 hours"\n',
                           ["defaults.time_limit = '2 hours'", 'time_limit = "2h"']),
    "time_limit zero": ("[defaults]\ntime_limit = 0\n", ["defaults.time_limit = 0", '"90m"']),
    "time_limit bool": ("[defaults]\ntime_limit = true\n", ["defaults.time_limit = True"]),
    "time_limit inf": ("[defaults]\ntime_limit = inf\n", ["defaults.time_limit = inf"]),
    "job time_limit": ('[jobs.slow]\ncommand = ["x"]\ntime_limit = "1w"\n',
                       ["jobs.slow.time_limit = '1w'", 'time_limit = "2h"']),
    "repair not a list": ('[[hosts]]\nname = "t"\naddress = "h"\nrepair = "gcloud start t"\n',
                          ["hosts[t].repair = 'gcloud start t'", "argv", 'repair = ["gcloud"']),
    "repair empty": ('[[hosts]]\nname = "t"\naddress = "h"\nrepair = []\n',
                     ["hosts[t].repair names no program", 'repair = ["gcloud"']),
    "repair_after zero": ('[[hosts]]\nname = "t"\naddress = "h"\nrepair = ["x"]\nrepair_after = 0\n',
                          ["hosts[t].repair_after = 0", "repair_after = 300"]),
    "retry_budget text": ('[sheet]\nurl = "KEY"\nretry_budget = "20s"\n',
                          ["sheet.retry_budget = '20s'", "retry_budget = 20"]),
}


@pytest.mark.parametrize("text,fragments", list(LIFECYCLE_BAD.values()), ids=list(LIFECYCLE_BAD))
def test_bad_lifecycle_key_names_the_key_and_a_right_value(tmp_path, text, fragments):
    base = MINIMAL
    if text.startswith("[sheet]"):
        base = base.replace('[sheet]\npath = "experiments.xlsx"\n', "")
    with pytest.raises(ConfigError) as raised:
        config.load(write(tmp_path, base + "\n" + text))
    for fragment in fragments:
        assert fragment in str(raised.value)
