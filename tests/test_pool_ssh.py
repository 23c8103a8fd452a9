"""The pool over SSH, end to end: the daemon against real sshd hosts with fake GPUs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import openpyxl
import pytest
import tomli_w
from helpers import cycle_until, write_workbook

from sheetrunner.config import load
from sheetrunner.daemon import Daemon, build
from sheetrunner.doctor import run_checks
from sheetrunner.model import Status

try:
    from tests.sshd import FakeHost, SshdLab, sshd_lab  # noqa: F401  (a fixture)
except ImportError:
    from sshd import FakeHost, SshdLab, sshd_lab  # noqa: F401

pytestmark = pytest.mark.sshd
REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "ssh"
FAKE_JOB = REPO / "tests" / "jobs" / "fake_job.py"
NAMESPACE = "testns000001"


def lab_config(tmp_path: Path, lab: SshdLab, raw: dict) -> Daemon:
    """The config `raw`, pointed at the lab's hosts (same names), built into a daemon."""
    for host in raw["hosts"]:
        fake = lab.hosts[host["name"]]
        host.update(address=fake.address, port=fake.port, user=fake.user, root=str(fake.root_dir),
                    identity=str(lab.client_key), python=sys.executable)
    raw["ssh"] = {**raw.get("ssh", {}), "known_hosts": str(lab.known_hosts),
                  "config_file": str(tmp_path / "no-ssh-config"), "connect_timeout": 3,
                  "keepalive": 2}
    raw["daemon"] = {**raw.get("daemon", {}), "poll_interval": 1, "state_dir": "state"}
    path = tmp_path / "sheetrunner.toml"
    path.write_text(tomli_w.dumps(raw))  # for the CLI commands the tests run
    daemon = build(load(path))
    daemon.pool.set_namespace(NAMESPACE)
    return daemon


def attempt_dir(daemon: Daemon, fake: FakeHost, run_id: str, attempt: int) -> Path:
    """Where the agent keeps an attempt on a fake host, in the namespace the pool uses."""
    namespace = daemon.pool.agents[fake.name].namespace
    return fake.root_dir / namespace / "hosts" / fake.name / "runs" / run_id / str(attempt)


def fake_raw(hosts: list[dict], **defaults) -> dict:
    return {
        "sheet": {"path": "experiments.xlsx"},
        "defaults": {"retries": 1, "backoff": 0.5, "launch_timeout": 10, **defaults},
        "jobs": {"fake": {"command": ["{python}", str(FAKE_JOB)]}},
        "hosts": hosts,
    }


def test_the_ssh_example_runs_its_rows_across_hosts_on_the_right_accelerators(tmp_path, sshd_lab):
    sshd_lab.add_host("gpu-a", gpus=2)
    sshd_lab.add_host("gpu-b", gpus=4)
    raw = tomllib.loads((EXAMPLE / "sheetrunner.toml").read_text())
    raw["jobs"]["digits"]["workdir"] = str(REPO)
    shutil.copy(EXAMPLE / "experiments.xlsx", tmp_path / "experiments.xlsx")
    daemon = lab_config(tmp_path, sshd_lab, raw)
    cycle_until(daemon, lambda rows: all(r.get("status") for r in rows))  # the first acting cycle
    pool = subprocess.run(
        [sys.executable, "-m", "sheetrunner.cli", "pool", "--json", "-c", str(daemon.config.path)],
        capture_output=True, text=True, timeout=60, input="")
    assert pool.returncode == 0, pool.stderr
    entries = {e["host"]: e for e in json.loads(pool.stdout)}
    assert [len(entries[h]["accelerators"]) for h in ("gpu-a", "gpu-b")] == [2, 4]
    assert entries["gpu-a"]["accelerators"][0]["name"] == "NVIDIA H100 80GB HBM3"
    held = [a["run"] for e in entries.values() for a in e["accelerators"] if a["run"]]
    assert len(held) == 4  # gpu-a: 1 + 1 (where = a100); gpu-b: 2; the 4-GPU row waits

    rows = cycle_until(daemon, lambda rows: all(r.get("status") == "succeeded" for r in rows), 150)
    runs = {r.run_id: r for r in daemon.store.runs().values()}
    for row in rows:
        run = runs[row["id"]]
        assert len(run.accelerators) == run.link.gpus
        spec = json.loads((Path(run.seen.log_path).parent / "spec.json").read_text())
        assert spec["env"]["CUDA_VISIBLE_DEVICES"] == ",".join(run.accelerators)
    by_gpus = {runs[r["id"]].link.gpus: runs[r["id"]].host for r in rows if r["where"] is None}
    assert by_gpus[4] == "gpu-b" and by_gpus[2] == "gpu-b" and by_gpus[1] == "gpu-a"
    assert runs[rows[3]["id"]].host == "gpu-a"  # where = a100
    assert all(r["acc"] > 0.5 for r in rows)
    pool_tab = openpyxl.load_workbook(daemon.config.sheet.path)["pool"]
    assert [c.value for c in pool_tab[1]][:3] == ["host", "state", "accelerator"]
    daemon.close()


def test_a_gpu_busy_with_a_foreign_process_is_left_alone(tmp_path, sshd_lab):
    host = sshd_lab.add_host("gpu-a", gpus=2)
    host.set_gpu_busy(0)
    write_workbook(tmp_path / "experiments.xlsx", ["job", "--steps", "gpus"], [["fake", 2, 1]])
    daemon = lab_config(tmp_path, sshd_lab, fake_raw([{"name": "gpu-a", "accelerators": "auto"}]))
    cycle_until(daemon, lambda rows: rows[0].get("status") == "succeeded")
    (run,) = daemon.store.runs().values()
    assert run.accelerators == ("1",)
    daemon.close()


def test_a_host_whose_sshd_dies_is_marked_lost_and_used_again_when_back(tmp_path, sshd_lab):
    host = sshd_lab.add_host("gpu-a", gpus=1)
    write_workbook(tmp_path / "experiments.xlsx", ["job", "--steps", "--sleep", "gpus"],
                   [["fake", 40, 0.2, 1]])
    daemon = lab_config(tmp_path, sshd_lab, fake_raw([{"name": "gpu-a", "accelerators": 1}]))
    cycle_until(daemon, lambda rows: rows[0].get("status") == "running")
    host.kill()  # sshd and its sessions die; the detached job keeps running, as on a real host
    started = time.monotonic()
    rows = cycle_until(daemon, lambda rows: rows[0].get("status") == "lost", timeout_s=20)
    assert time.monotonic() - started < 3 + 2 + 5  # connect_timeout + keepalive (+ slack)
    assert "unreachable" in rows[0]["message"]
    host.restart()
    rows = cycle_until(daemon, lambda rows: rows[0].get("status") == "running", timeout_s=30)
    rows = cycle_until(daemon, lambda rows: rows[0].get("status") == "succeeded", timeout_s=30)
    assert rows[0]["attempt"] == 1  # the same attempt, never started twice
    daemon.close()


def test_requeue_moves_a_run_off_a_dead_host_and_fences_it_when_it_returns(tmp_path, sshd_lab):
    dead = sshd_lab.add_host("gpu-a", gpus=1)
    sshd_lab.add_host("gpu-b", gpus=1)
    write_workbook(tmp_path / "experiments.xlsx", ["job", "--steps", "--sleep", "gpus", "where"],
                   [["fake", 200, 0.2, 1, "gpu-a"]])
    raw = fake_raw([{"name": "gpu-a", "accelerators": 1, "labels": ["pool"]},
                    {"name": "gpu-b", "accelerators": 1, "labels": ["pool"]}])
    raw["daemon"] = {"on_host_lost": "requeue", "host_lost_timeout": 1}
    daemon = lab_config(tmp_path, sshd_lab, raw)
    cycle_until(daemon, lambda rows: rows[0].get("status") == "running")
    book = openpyxl.load_workbook(daemon.config.sheet.path)
    book.worksheets[0].cell(row=2, column=5, value="pool")  # may now run on either host
    book.save(daemon.config.sheet.path)
    dead.freeze()  # a frozen host: still ACKs TCP, answers nothing
    rows = cycle_until(daemon, lambda rows: rows[0].get("host") == "gpu-b", timeout_s=40)
    assert rows[0]["attempt"] == 2
    dead.thaw()
    daemon.pool.agents["gpu-a"].transport.close()  # skip the reconnect backoff of a long outage
    first = attempt_dir(daemon, dead, rows[0]["id"], 1)
    deadline = time.monotonic() + 30
    while not (first / "exit_code").exists():  # fenced: attempt 1 is killed once seen again
        daemon.cycle()
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert int((first / "exit_code").read_text()) == 128 + 15
    # attempt 2 may still be launching when the fence lands (a resident agent answers fast)
    while daemon.store.runs()[rows[0]["id"]].status not in (Status.RUNNING, Status.SUCCEEDED):
        daemon.cycle()
        assert time.monotonic() < deadline
        time.sleep(0.3)
    daemon.close()


def test_doctor_says_what_to_fix_for_an_unknown_host_key(tmp_path, sshd_lab):
    sshd_lab.add_host("gpu-a", gpus=1)
    write_workbook(tmp_path / "experiments.xlsx", ["job"], [])
    daemon = lab_config(tmp_path, sshd_lab, fake_raw([{"name": "gpu-a", "accelerators": 1}]))
    ok = {(c.subject, c.what): c for c in run_checks(daemon.config)}
    assert ok[("gpu-a", "reachable, agent runs")].ok and ok[("gpu-a", "accelerators")].ok
    sshd_lab.known_hosts.write_text("")
    checks = list(run_checks(daemon.config))
    bad = [c for c in checks if not c.ok]
    assert [c.what for c in bad] == ["host key is known"]
    assert "known_hosts" in bad[0].fix and "accept-new" in bad[0].fix
    daemon.close()
