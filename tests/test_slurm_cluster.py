"""Rows through a real single-node Slurm cluster (tests/slurm_cluster.py), driven by the
daemon: submitted with sbatch, watched with one squeue per cycle, ended as Slurm says."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import FAKE_JOB, HEADER, cycle_until, write_workbook
from slurm_cluster import slurm  # noqa: F401 - the module's cluster fixture
from sshd import sshd_lab  # noqa: F401 - a fixture

from sheetrunner import config as config_module
from sheetrunner.cli import main
from sheetrunner.daemon import build
from sheetrunner.doctor import run_checks

pytestmark = pytest.mark.slurm


def cluster_config(
    tmp: Path, slurm_conf: Path, extra: str = "", retries: int = 0, time: str = "10"
) -> Path:
    text = textwrap.dedent(f"""
        [sheet]
        path = "experiments.xlsx"

        [daemon]
        poll_interval = 0.5
        state_dir = "state"

        [defaults]
        retries = {retries}
        backoff = 0.5
        launch_timeout = 30

        [jobs.fake]
        command = ["{sys.executable}", "{FAKE_JOB}"]

        [[clusters]]
        name = "ci"
        local = true
        partition = "gpu"
        root = "{tmp}/shared"
        time = "{time}"
        slurm_conf = "{slurm_conf}"
    """) + textwrap.dedent(extra)
    path = tmp / "sheetrunner.toml"
    path.write_text(text)
    return path


def start(tmp: Path, slurm, rows: list[list], **kw):  # noqa: F811
    write_workbook(tmp / "experiments.xlsx", HEADER, rows)
    return build(config_module.load(cluster_config(tmp, slurm.conf, **kw)))


def _job_of(slurm, run_id: str) -> list[dict]:  # noqa: F811
    return [j for j in slurm.jobs() if f".{run_id}." in j["name"]]


def test_a_sweep_of_twenty_rows_is_submitted_in_batches_and_succeeds(tmp_path, slurm):  # noqa: F811
    rows = [["fake", 1, 0.01, 0, 0] for _ in range(19)] + [["fake", 1, 0.01, 1, 0]]
    daemon = start(tmp_path, slurm, rows)
    calls = []
    agent = daemon.pool.agents["ci"]
    real = agent.launch_many
    agent.launch_many = lambda specs: calls.append(len(specs)) or real(specs)  # type: ignore[method-assign]
    try:
        rows = cycle_until(
            daemon,
            lambda rows: all(r.get("status") in ("succeeded", "failed") for r in rows),
            timeout_s=60,
        )
    finally:
        daemon.close()
    assert [r["status"] for r in rows] == ["succeeded"] * 19 + ["failed"]
    assert rows[0]["metrics"] == "step=1 loss=1" and rows[0]["host"] == "ci"
    assert rows[19]["message"].startswith("no retries left (0 allowed) after exit code 1")
    assert Path(rows[0]["log"]).is_file()
    assert len(rows) == 20 and sum(calls) == 20
    assert max(calls) > 1  # many submissions in one agent call
    assert len({j["name"] for j in slurm.jobs() if any(r["id"] in j["name"] for r in rows)}) == 20


def test_a_daemon_killed_between_sbatch_and_recording_never_submits_twice(tmp_path, slurm):  # noqa: F811
    daemon = start(tmp_path, slurm, [["fake", 2, 0.05, 0, 0]])

    class Killed(BaseException):
        """The daemon dies right after sbatch returned, before the outcome is journalled."""

    def die(*_args, **_kw):
        raise Killed

    daemon.store.record_outcome = die  # type: ignore[method-assign]
    with pytest.raises(Killed):
        for _ in range(5):  # the first cycle takes the sheet's lease, the next one submits
            daemon.cycle()
    daemon.close()
    submitted = [j for j in slurm.jobs() if j["name"].startswith("sr.")]
    again = build(config_module.load(tmp_path / "sheetrunner.toml"))
    try:
        rows = cycle_until(again, lambda rows: rows[0]["status"] == "succeeded")
    finally:
        again.close()
    ours = _job_of(slurm, rows[0]["id"])
    assert len(ours) == 1 and ours[0]["id"] in {j["id"] for j in submitted}
    assert rows[0]["attempt"] == 1


def test_a_node_failure_is_left_to_slurms_requeue_and_the_run_goes_on(tmp_path, slurm):  # noqa: F811
    daemon = start(tmp_path, slurm, [["fake", 20, 0.1, 0, 0]])
    try:
        rows = cycle_until(daemon, lambda rows: rows[0]["status"] == "running")
        slurm.run("scontrol", "update", "nodename=localhost", "state=down", "reason=test")
        rows = cycle_until(
            daemon, lambda rows: "queued by the cluster" in (rows[0]["message"] or "")
        )
        assert rows[0]["status"] == "queued"  # requeued: pending again in Slurm's queue
        slurm.run("scontrol", "update", "nodename=localhost", "state=resume", check=False)
        rows = cycle_until(daemon, lambda rows: rows[0]["status"] == "succeeded", timeout_s=40)
    finally:
        daemon.close()
    assert rows[0]["attempt"] == 1  # Slurm's requeue, not a new attempt
    log = Path(rows[0]["log"]).parent / "slurm.out"
    assert "DUE TO NODE FAILURE" in log.read_text()


EXAMPLE = Path(__file__).parent.parent / "examples" / "slurm"


def example_daemon(tmp_path: Path, slurm, rows: list[list] | None = None):  # noqa: F811
    """examples/slurm as committed, in a copy, pointed at the test cluster's slurm.conf."""
    import importlib.util
    import shutil

    work = tmp_path / "example"
    shutil.copytree(EXAMPLE, work)
    config = work / "sheetrunner.toml"
    text = config.read_text().replace(
        "sbatch_args = []", f'sbatch_args = []\nslurm_conf = "{slurm.conf}"'
    )
    config.write_text(text.replace("poll_interval = 5", "poll_interval = 0.5"))
    spec = importlib.util.spec_from_file_location("make_workbook", work / "make_workbook.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if rows is not None:
        module.ROWS[:] = rows
    module.main(work / "experiments.xlsx")
    return build(config_module.load(config)), work


def test_the_slurm_example_runs_its_rows_through_the_cluster(tmp_path, slurm, capsys):  # noqa: F811
    daemon, _ = example_daemon(tmp_path, slurm)
    try:
        rows = cycle_until(daemon, lambda rows: all(r.get("status") == "succeeded" for r in rows))
    finally:
        daemon.close()
    assert [r["metrics"] for r in rows] == [
        "step=5 loss=0.5905",
        "step=5 loss=0.1681",
        "step=5 loss=0.3277",
    ]
    assert {r["host"] for r in rows} == {"cluster"}
    checks = [c for c in run_checks(daemon.config) if c.subject == "cluster"]
    assert len(checks) == 4 and all(c.ok for c in checks), (
        checks
    )  # login, commands, partition, root
    capsys.readouterr()
    assert main(["pool", "--json", "-c", str(daemon.config.path)]) == 0
    (entry,) = [e for e in json.loads(capsys.readouterr().out) if e.get("cluster") == "cluster"]
    assert entry["partition"] == "gpu" and entry["nodes"] == {"idle": 1}
    assert (entry["gpus_free"], entry["gpus_total"]) == (4, 4)


def _set_action(book: Path, row: int, action: str, column: int) -> None:
    import openpyxl

    wb = openpyxl.load_workbook(book)
    wb.worksheets[0].cell(row=row, column=column, value=action)
    wb.save(book)


def test_usr1_hold_stop_and_scancel_from_outside(tmp_path, slurm):  # noqa: F811
    """One daemon, three rows: SIGUSR1 reaches a job that asked for it and the job goes on;
    `hold` keeps a pending job held in Slurm's queue; `stop` cancels; a job cancelled
    outside sheetrunner ends `stopped` with what Slurm says."""
    rows = [
        ["train", 0.1, 400, 1, None],
        ["train", 0.1, 400, 0, None],
        ["train", 0.1, 1, 4, None],  # pending: the first row holds one of the four GPUs
    ]
    daemon, work = example_daemon(tmp_path, slurm, rows)
    book, action = work / "experiments.xlsx", 5
    try:
        shown = cycle_until(
            daemon,
            lambda r: (
                r[0].get("status") == r[1].get("status") == "running"
                and "queued by the cluster" in (r[2].get("message") or "")
            ),
        )
        assert shown[2]["status"] == "queued"  # Slurm's reason: Resources, or Priority
        assert any(w in shown[2]["message"] for w in ("Resources", "Priority"))
        (long_job,) = _job_of(slurm, shown[0]["id"])
        marker = Path(shown[0]["log"]).parent / "wants_usr1"  # job.on_time_limit was called
        cycle_until(daemon, lambda r: marker.exists())
        slurm.run("scancel", "--signal=USR1", "--batch", long_job["id"])
        cycle_until(daemon, lambda r: any((work / "shared").rglob("resume.json")))
        slurm.run("scancel", _job_of(slurm, shown[1]["id"])[0]["id"])
        _set_action(book, 4, "hold", action)
        shown = cycle_until(
            daemon,
            lambda r: (
                "held in the cluster's queue" in (r[2].get("message") or "")
                and r[1].get("status") == "stopped"
            ),
        )
        assert shown[1]["message"].startswith("cancelled outside sheetrunner: Slurm: CANCELLED")
        cycle_until(
            daemon, lambda r: _job_of(slurm, shown[2]["id"])[0]["reason"].startswith("JobHeld")
        )
        assert _job_of(slurm, shown[0]["id"])[0]["state"] == "RUNNING"  # USR1 did not end it
        _set_action(book, 2, "stop", action)
        _set_action(book, 4, "stop", action)
        shown = cycle_until(daemon, lambda r: all(x.get("status") == "stopped" for x in r))
    finally:
        daemon.close()
    assert shown[0]["message"] == "stopped: the row's action is stop"
    assert _job_of(slurm, shown[0]["id"])[0]["state"] in ("CANCELLED", "COMPLETING")


@pytest.mark.sshd
def test_the_cluster_is_reached_through_an_ssh_login_node(tmp_path, slurm, sshd_lab):  # noqa: F811
    login = sshd_lab.add_host("login", gpus=0)
    extra = f"""
        [ssh]
        known_hosts = "{sshd_lab.known_hosts}"
        config_file = "{tmp_path}/no-ssh-config"
    """
    path = cluster_config(tmp_path, slurm.conf, extra=extra)
    text = path.read_text().replace(
        "local = true",
        f'login = "{login.address}"\nport = {login.port}\nuser = "{login.user}"\n'
        f'identity = "{sshd_lab.client_key}"\npython = "{sys.executable}"',
    )
    path.write_text(text)
    write_workbook(tmp_path / "experiments.xlsx", HEADER, [["fake", 2, 0.05, 0, 1]])
    daemon = build(config_module.load(path))
    try:
        rows = cycle_until(daemon, lambda rows: rows[0].get("status") == "succeeded")
    finally:
        daemon.close()
    assert rows[0]["metrics"] == "step=2 loss=0.5" and rows[0]["host"] == "ci"
    assert _job_of(slurm, rows[0]["id"])[0]["state"] == "COMPLETED"


def test_a_job_past_its_time_limit_ends_in_slurms_timeout_named_as_such(tmp_path, slurm):  # noqa: F811
    """Slurm enforces the limit (here the cluster's `time`, one minute: Slurm counts in
    minutes, checks about every 30 s, then waits KillWait before the kill: 1.5 to 4 minutes
    here): the job's TIMEOUT is a crash whose message says
    so, and the exit code comes from the attempt's own file."""
    daemon = start(tmp_path, slurm, [["fake", 3000, 0.1, 0, 0]], time="1")
    try:
        rows = cycle_until(daemon, lambda rows: rows[0].get("status") == "running")
        rows = cycle_until(daemon, lambda rows: rows[0].get("status") == "failed", timeout_s=300)
    finally:
        daemon.close()
    assert "TIMEOUT" in rows[0]["message"], rows[0]["message"]
    (job,) = _job_of(slurm, rows[0]["id"])
    assert job["state"] == "TIMEOUT"
