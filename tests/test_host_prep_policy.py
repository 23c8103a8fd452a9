"""The rules behind code, setups and disks on hosts, on pure functions: which host may take
a run, when a setup runs again, what gc removes, what a synced tree holds, the config keys."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sheetrunner.code_sync import LocalTree, ignored
from sheetrunner.config import HostConfig, parse
from sheetrunner.errors import ConfigError
from sheetrunner.host_prep import wanted_hosts
from sheetrunner.model import Status
from sheetrunner.placement import HostCapacity, Placement
from sheetrunner.prep_policy import (
    gc_choice,
    low_disk,
    setup_blocks,
    setup_call_needed,
    setup_key,
)
from sheetrunner.remote import codestore
from tests.helpers import make_run

NOW = datetime(2026, 3, 1, tzinfo=UTC)
GIB = 1 << 30


def test_a_host_under_min_free_disk_takes_no_runs_and_says_why():
    assert low_disk(5 * GIB, 6 * GIB) == ""
    assert low_disk(5 * GIB, None) == ""  # not probed yet: not judged
    reason = low_disk(5 * GIB, 3 * GIB)
    assert reason == "free disk 3.0 GiB < min_free_disk 5.0 GiB"
    full = HostCapacity("a", slots=2, closed=reason)
    roomy = HostCapacity("b", slots=2)
    run = make_run("r1", gpus=0)
    assert Placement([full, roomy], []).take(run) == ("b", ())
    assert Placement([full], []).take(run) == f"waiting: a: {reason}"


def test_a_job_whose_setup_is_not_ready_goes_elsewhere_or_waits_with_the_reason():
    blocked = HostCapacity("a", slots=2, blocked=(("train", "setup failed: boom"),))
    other = HostCapacity("b", slots=2)
    train, evaluate = make_run("r1", job="train", gpus=0), make_run("r2", job="eval", gpus=0)
    assert Placement([blocked, other], []).take(train)[0] == "b"
    placement = Placement([blocked], [])
    assert placement.take(train) == "waiting: a: setup failed: boom"
    assert placement.take(evaluate) == ("a", ())  # the other job is not held back


def test_a_setup_runs_again_only_for_a_new_code_version_argv_env_or_an_explicit_retry():
    key = setup_key("c" * 64, [["uv", "sync"]], {"A": "1"}, "/w")
    assert key == setup_key("c" * 64, [("uv", "sync")], {"A": "1"}, "/w")
    assert len({
        key,
        setup_key("d" * 64, [["uv", "sync"]], {"A": "1"}, "/w"),
        setup_key("c" * 64, [["uv", "sync", "--frozen"]], {"A": "1"}, "/w"),
        setup_key("c" * 64, [["uv", "sync"]], {"A": "2"}, "/w"),
    }) == 4
    assert setup_call_needed(None) and setup_call_needed("running")
    assert not setup_call_needed("failed") and not setup_call_needed("succeeded")
    assert setup_call_needed("failed", retry=True)
    assert setup_blocks("succeeded") == ""
    assert setup_blocks("running") == "setup running"
    assert setup_blocks("failed", "$ uv sync\nerror: no wheel\n\n").startswith(
        "setup failed: error: no wheel")


def test_gc_removes_old_final_runs_and_keeps_checkpoints_the_sheet_shows():
    old = NOW - timedelta(days=40)
    shown = make_run("00000001-aaaaaa", status=Status.SUCCEEDED, attempt=2, finished_at=old)
    deleted = make_run("00000002-aaaaaa", status=Status.FAILED, attempt=1, finished_at=old,
                       released=True)
    recent = make_run("00000003-aaaaaa", status=Status.SUCCEEDED, attempt=1,
                      finished_at=NOW - timedelta(days=3))
    running = make_run("00000004-aaaaaa", status=Status.RUNNING, attempt=1, code_hash="e" * 64)
    never = make_run("00000005-aaaaaa", status=Status.STOPPED, attempt=0, finished_at=old)
    runs = [shown, deleted, recent, running, never]
    choice = gc_choice(runs, NOW, 30, current_code=["c" * 64])
    assert choice.runs == ("00000001-aaaaaa", "00000002-aaaaaa")
    assert choice.checkpoints == ("00000002-aaaaaa",)
    assert choice.keep_code == ("c" * 64, "e" * 64)
    assert gc_choice(runs, NOW, 30, gc_shown_checkpoints=True).checkpoints == choice.runs
    assert gc_choice(runs, NOW, 60).runs == ()


def test_sheetrunnerignore_patterns(tmp_path):
    patterns = ["data/", "*.ckpt", "/build", "# a comment is not read here"]
    assert ignored("data", patterns, directory=True)
    assert ignored("src/data", patterns, directory=True)
    assert not ignored("data", patterns)  # a file named data is not the directory
    assert ignored("runs/model.ckpt", patterns)
    assert ignored("build", patterns) and not ignored("src/build.py", patterns)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.bin").write_bytes(b"1")
    (tmp_path / "m.ckpt").write_bytes(b"1")
    (tmp_path / "train.py").write_text("print(1)\n")
    (tmp_path / ".sheetrunnerignore").write_text("data/\n*.ckpt\n")
    tree = LocalTree(tmp_path)
    first = tree.snapshot()
    assert [f.path for f in first.files] == [".sheetrunnerignore", "train.py"]
    assert first.commit == "" and first.label == first.hash[:12]
    assert tree.snapshot().hash == first.hash  # nothing changed, same version
    (tmp_path / "train.py").write_text("print(2)\n")
    assert tree.snapshot().hash != first.hash
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "state.sqlite").write_bytes(b"changes every cycle")
    own = LocalTree(tmp_path, exclude=[tmp_path / "state"])  # the daemon's own files
    assert "state/state.sqlite" not in [f.path for f in own.snapshot().files]


def test_hosts_get_ready_only_for_jobs_they_may_take():
    hosts = [HostConfig("a", labels=("a100",)), HostConfig("b"), HostConfig("c", drain=True)]
    wanted = wanted_hosts(hosts, [("train", None), ("eval", "a100")], {"a", "b", "c"})
    assert wanted == {"a": {"train", "eval"}, "b": {"train"}}
    assert wanted_hosts(hosts, [("train", None)], {"b"}) == {"b": {"train"}}


def test_a_manifest_path_cannot_leave_the_version_directory():
    assert codestore._relative("src/train.py") == "src/train.py"
    for bad in ("/etc/passwd", "../x", "a/../../x", "a//b", "./a", ""):
        with pytest.raises(codestore.Refused):
            codestore._relative(bad)


def raw_config(tmp_path: Path, host: dict | None = None, job: dict | None = None) -> dict:
    return {
        "sheet": {"url": "https://docs.google.com/spreadsheets/d/KEY/edit"},
        "jobs": {"train": {"command": ["python3", "train.py"], **(job or {})}},
        "hosts": [{"name": "gpu-a", "address": "gpu-a", **(host or {})}],
    }


def test_the_config_keys_for_code_environments_and_disks(tmp_path):
    (tmp_path / "code").mkdir()
    config = parse(raw_config(tmp_path, host={
        "env": {"PATH": "/opt/conda/envs/x/bin:/usr/bin"},
        "setup": ["uv", "sync"],
        "min_free_disk": "20 GiB",
        "keep_finished_days": 7,
    }, job={"sync": "code", "setup": [["uv", "sync"], ["python3", "prepare.py"]]}),
        tmp_path / "sheetrunner.toml")
    host, job = config.hosts[0], config.jobs["train"]
    assert host.env == {"PATH": "/opt/conda/envs/x/bin:/usr/bin"}
    assert host.setup == (("uv", "sync"),)
    assert host.min_free_disk == 20 * GIB and host.keep_finished_days == 7
    assert job.sync == (tmp_path / "code").resolve()
    assert job.setup == (("uv", "sync"), ("python3", "prepare.py"))
    defaults = parse(raw_config(tmp_path), tmp_path / "sheetrunner.toml").hosts[0]
    assert (defaults.min_free_disk, defaults.keep_finished_days) == (5 * GIB, 30)


@pytest.mark.parametrize(("host", "job", "words"), [
    ({"min_free_disk": "lots"}, {}, "min_free_disk"),
    ({"env": {"A": 1}}, {}, "env.A"),
    ({"setup": "uv sync"}, {}, "setup"),
    ({}, {"sync": "missing-dir"}, "jobs.train.sync"),
    ({}, {"setup": [[]]}, "setup[0]"),
])
def test_a_bad_key_fails_at_start_with_its_name(tmp_path, host, job, words):
    with pytest.raises(ConfigError, match=words.replace("[", r"\[")):
        parse(raw_config(tmp_path, host, job), tmp_path / "sheetrunner.toml")


def test_a_host_env_is_merged_over_the_job_env():
    from sheetrunner.config import JobConfig
    from sheetrunner.pool.hosts import launch_spec

    job = JobConfig("train", ("python3", "t.py"), env={"A": "job", "B": "job"})
    host = replace(HostConfig("gpu-a"), env={"A": "host"})
    run = make_run("00000001-aaaaaa", job="train", gpus=0, attempt=1)
    spec = launch_spec(run, job, host, "/w", {"hash": "c" * 64})
    assert spec["env"]["A"] == "host" and spec["env"]["B"] == "job"
    assert spec["code"] == {"hash": "c" * 64} and spec["workdir"] == "/w"


def test_doctor_looks_on_the_host_only_for_a_synced_jobs_program(tmp_path):
    from sheetrunner.doctor import _program_request

    (tmp_path / "code").mkdir()
    config = parse(raw_config(tmp_path, job={"sync": "code"}), tmp_path / "sheetrunner.toml")
    asked = _program_request(config, "train", config.hosts[0])
    assert asked == {"workdir": None, "argv": ["python3"]}  # train.py comes with the code
