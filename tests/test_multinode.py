"""Runs across hosts, end to end: the daemon against two real sshd hosts on loopback.

examples/multinode runs a real torch.distributed all-reduce (gloo, CPU) across the two
hosts; with the fake job (no torch, cheaper), one node killed mid-run takes the other down
with it and the attempt is retried whole, and a host lost does the same. One pair of hosts
serves the module."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
import tomllib
from pathlib import Path

import pytest
import tomli_w
from helpers import read_workbook, write_workbook

from sheetrunner import cli
from sheetrunner.config import load
from sheetrunner.daemon import Daemon, build

try:
    from tests.sshd import FakeHost, SshdLab, sshd_lab_module  # noqa: F401  (a fixture)
except ImportError:
    from sshd import FakeHost, SshdLab, sshd_lab_module  # noqa: F401

pytestmark = [pytest.mark.sshd, pytest.mark.torch]
REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "multinode"
FAKE_JOB = REPO / "tests" / "jobs" / "fake_job.py"


@pytest.fixture(scope="module")
def pair(sshd_lab_module: SshdLab) -> SshdLab:
    sshd_lab_module.add_host("node-a", gpus=0)
    sshd_lab_module.add_host("node-b", gpus=0)
    return sshd_lab_module


def lab_daemon(tmp_path: Path, lab: SshdLab, raw: dict, namespace: str) -> Daemon:
    """The config `raw`, pointed at the lab's hosts (same names), built into a daemon."""
    for host in raw["hosts"]:
        fake = lab.hosts[host["name"]]
        host.update(address=fake.address, port=fake.port, user=fake.user,
                    root=str(fake.root_dir), identity=str(lab.client_key), python=sys.executable)
    raw["ssh"] = {"known_hosts": str(lab.known_hosts), "connect_timeout": 2, "keepalive": 1,
                  "config_file": str(tmp_path / "no-ssh-config")}
    raw["daemon"] = {**raw.get("daemon", {}), "poll_interval": 1, "state_dir": "state"}
    raw["defaults"] = {**raw.get("defaults", {}), "backoff": 0.2, "launch_timeout": 30}
    path = tmp_path / "sheetrunner.toml"
    path.write_text(tomli_w.dumps(raw))
    daemon = build(load(path))
    daemon.pool.set_namespace(namespace)
    return daemon


def cycle_until(daemon: Daemon, done, timeout_s: float) -> list[dict]:
    """Cycles back to back (a cycle over SSH takes long enough) until the sheet shows `done`."""
    deadline = time.monotonic() + timeout_s
    while True:
        daemon.cycle()
        rows = read_workbook(daemon.config.sheet.path)
        if done(rows):
            return rows
        assert time.monotonic() < deadline, f"timed out; sheet shows {rows}"


def attempt_dir(daemon: Daemon, fake: FakeHost, run_id: str, attempt: int) -> Path:
    namespace = daemon.pool.agents[fake.name].namespace
    return fake.root_dir / namespace / "hosts" / fake.name / "runs" / run_id / str(attempt)


def exit_code(path: Path, timeout_s: float = 20) -> int:
    """The exit code the host recorded for an attempt (waiting for its supervisor)."""
    deadline = time.monotonic() + timeout_s
    while not (path / "exit_code").exists():
        assert time.monotonic() < deadline, f"no exit code in {path}"
        time.sleep(0.1)
    return int((path / "exit_code").read_text())


def test_the_example_all_reduces_across_two_hosts_and_logs_show_any_node(tmp_path, pair, capfd):
    raw = tomllib.loads((EXAMPLE / "sheetrunner.toml").read_text())
    raw["jobs"]["allreduce"]["workdir"] = str(REPO)
    shutil.copy(EXAMPLE / "experiments.xlsx", tmp_path / "experiments.xlsx")
    daemon = lab_daemon(tmp_path, pair, raw, "multinode0001")
    rows = cycle_until(daemon, lambda rows: rows[0].get("status") == "running", 60)
    assert rows[0]["host"] == "node-a+node-b"
    rows = cycle_until(daemon, lambda rows: rows[0].get("status") == "succeeded", 90)
    assert rows[0]["attempt"] == 1
    assert rows[0]["allreduce_sum"] == 3  # 1 + 2: rank 0 and rank 1 met through the coordinator
    run_id = rows[0]["id"]
    spec = json.loads((attempt_dir(daemon, pair.hosts["node-b"], run_id, 1) / "spec.json")
                      .read_text())
    assert (spec["env"]["NODE_RANK"], spec["env"]["WORLD_SIZE"]) == ("1", "2")
    capfd.readouterr()
    assert cli.main(["logs", run_id, "--node", "1", "-c", str(daemon.config.path)]) == 0
    assert "node 1 of 2: all-reduce sum 3" in capfd.readouterr().out
    daemon.close()


def test_a_killed_node_then_a_lost_host_each_kill_the_other_node_and_retry_whole(
    tmp_path, pair
):
    write_workbook(tmp_path / "experiments.xlsx", ["job", "--hang-attempts", "gpus", "nodes"],
                   [["fake", 2, 0, 2]])  # attempts 1 and 2 run until killed, 3 ends at once
    raw = {"sheet": {"path": "experiments.xlsx"}, "daemon": {"host_lost_timeout": 1},
           "jobs": {"fake": {"command": ["{python}", str(FAKE_JOB)]}},
           "hosts": [{"name": "node-a"}, {"name": "node-b"}]}
    daemon = lab_daemon(tmp_path, pair, raw, "multinode0002")
    node_a, node_b = pair.hosts["node-a"], pair.hosts["node-b"]
    rows = cycle_until(daemon, lambda rows: rows[0].get("status") == "running", 30)
    run_id = rows[0]["id"]
    first_b = attempt_dir(daemon, node_b, run_id, 1)
    os.kill(int((first_b / "pid").read_text().split()[0]), signal.SIGKILL)  # node 1 dies
    rows = cycle_until(daemon, lambda rows: rows[0].get("status") == "running"
                       and rows[0].get("attempt") == 2, 30)
    crashes = [d for _, _, kind, d in daemon.store.events(run_id) if kind == "crashed"]
    assert crashes == ["exit code 137 on attempt 1: node 1 on node-b"]
    assert exit_code(attempt_dir(daemon, node_a, run_id, 1)) == 128 + 15  # killed, not left

    node_b.kill(jobs=True)  # the machine dies: sshd and the node's process
    rows = cycle_until(daemon, lambda rows: rows[0].get("status") == "retrying", 30)
    assert "lost: host node-b (node 1) unreachable" in rows[0]["message"]
    assert exit_code(attempt_dir(daemon, node_a, run_id, 2)) == 128 + 15
    node_b.start()
    daemon.pool.agents["node-b"].transport.close()  # skip the reconnect backoff
    rows = cycle_until(daemon, lambda rows: rows[0].get("status") == "succeeded", 60)
    assert rows[0]["attempt"] == 3  # each failure one crash of the run, retried whole
    assert exit_code(attempt_dir(daemon, node_b, run_id, 3)) == 0
    daemon.close()
