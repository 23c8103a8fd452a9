"""The agent script on a host, driven through the local transport with real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import FAKE_JOB

from sheetrunner.config import HostConfig
from sheetrunner.pool.hosts import HostAgent
from sheetrunner.pool.local import LocalTransport


@pytest.fixture
def agent(tmp_path: Path) -> HostAgent:
    host = HostConfig(name="local", local=True, root=str(tmp_path / "root"), python=sys.executable)
    return HostAgent(host, LocalTransport("local"))


def spec(run_id: str, attempt: int, *args: str, workdir: str | None = None) -> dict:
    return {"run_id": run_id, "attempt": attempt, "argv": [sys.executable, str(FAKE_JOB), *args],
            "env": {"CUDA_VISIBLE_DEVICES": ""}, "workdir": workdir, "accelerators": []}


def wait_for(agent: HostAgent, run_id: str, attempt: int, state: str, timeout_s: float = 15) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        seen = next(a for a in agent.probe({(run_id, attempt)})["attempts"]
                    if a["run_id"] == run_id and a["attempt"] == attempt)
        if seen["state"] == state or time.monotonic() > deadline:
            return seen
        time.sleep(0.1)


def attempt_dir(agent: HostAgent, run_id: str, attempt: int) -> Path:
    return Path(agent.config.root) / "runs" / run_id / str(attempt)


def test_a_launched_job_runs_detached_and_its_exit_code_is_recorded(agent):
    assert agent.launch(spec("r1", 1, "--steps", "2", "--exit", "7")).launched
    seen = wait_for(agent, "r1", 1, "exited")
    assert seen["state"] == "exited" and seen["exit_code"] == 7
    assert seen["metrics"] == {"step": 2, "loss": 0.5}
    pid, ticks, boot, *_ = (attempt_dir(agent, "r1", 1) / "pid").read_text().split()
    assert int(pid) > 0 and ticks.isdigit() and boot == Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def test_the_attempt_directory_is_the_launch_lock(agent):
    assert agent.launch(spec("r1", 1, "--steps", "20")).launched
    second = agent.launch(spec("r1", 1, "--steps", "20"))
    assert not second.launched and "already exists" in second.detail
    wait_for(agent, "r1", 1, "running")
    agent.kill("r1", 1, grace_s=2)


def test_the_job_gets_its_environment_and_argv_items_verbatim(agent, tmp_path):
    hostile = ["; rm -rf ~", "$(id)", "`touch /tmp/pwned`", "a b 'c' \"d\"", "=1+1"]
    args = [item for value in hostile for item in ("--echo", value)]
    agent.launch(spec("r2", 1, *args, "--steps", "0", workdir=str(tmp_path)))
    wait_for(agent, "r2", 1, "exited")
    log = (attempt_dir(agent, "r2", 1) / "output.log").read_text()
    echoed = json.loads(log.split("ECHO ", 1)[1].splitlines()[0])
    assert echoed["argv"] == args + ["--steps", "0"]
    assert not Path("/tmp/pwned").exists()


def test_kill_stops_the_whole_process_group(agent):
    agent.launch(spec("r3", 1, "--hang", "1"))
    wait_for(agent, "r3", 1, "running")
    pid = int((attempt_dir(agent, "r3", 1) / "pid").read_text().split()[0])
    assert agent.kill("r3", 1, grace_s=2) == "exited"
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    assert (attempt_dir(agent, "r3", 1) / "stop").exists()
    assert wait_for(agent, "r3", 1, "exited")["exit_code"] == 128 + 15


def test_probe_reports_unfinished_attempts_nobody_asked_about(agent):
    agent.launch(spec("r4", 1, "--hang", "1"))
    wait_for(agent, "r4", 1, "running")
    seen = agent.probe(set())["attempts"]
    assert [(a["run_id"], a["attempt"], a["state"]) for a in seen] == [("r4", 1, "running")]
    agent.kill("r4", 1, grace_s=2)


def test_a_recorded_pid_from_another_boot_is_lost_not_running(agent):
    agent.launch(spec("r5", 1, "--hang", "1"))
    wait_for(agent, "r5", 1, "running")
    pid_file = attempt_dir(agent, "r5", 1) / "pid"
    real = pid_file.read_text()
    parts = real.split()
    pid_file.write_text(" ".join([parts[0], parts[1], "another-boot", "1", "0"]))
    assert wait_for(agent, "r5", 1, "lost", timeout_s=1)["state"] == "lost"
    assert [a["run_id"] for a in agent.probe(set())["attempts"]] == []  # no longer scanned
    pid_file.write_text(real)
    agent.kill("r5", 1, grace_s=2)


def test_a_missing_attempt_is_reported_missing(agent):
    assert wait_for(agent, "nope", 3, "missing", timeout_s=0)["state"] == "missing"


def test_heartbeat_follows_output_growth(agent):
    agent.launch(spec("r6", 1, "--steps", "30", "--sleep", "0.1"))
    first = wait_for(agent, "r6", 1, "running")
    time.sleep(1.0)
    later = wait_for(agent, "r6", 1, "running")
    assert later["heartbeat_at"] > first["heartbeat_at"]
    wait_for(agent, "r6", 1, "exited")


def test_metrics_merge_the_latest_value_of_each_name(agent):
    agent.launch(spec("r7", 1, "--steps", "0"))
    wait_for(agent, "r7", 1, "exited")
    lines = [{"step": 1, "acc": 0.5}, {"step": 2, "loss": 0.1}, {"step": 3, "loss": 0.05}]
    (attempt_dir(agent, "r7", 1) / "metrics.jsonl").write_text(
        "".join(json.dumps(x) + "\n" for x in lines))
    assert wait_for(agent, "r7", 1, "exited")["metrics"] == {"step": 3, "acc": 0.5, "loss": 0.05}


def test_tail_returns_the_end_or_the_bytes_from_an_offset(agent):
    agent.launch(spec("r8", 1, "--steps", "3"))
    wait_for(agent, "r8", 1, "exited")
    whole = (attempt_dir(agent, "r8", 1) / "output.log").read_bytes()
    assert agent.tail("r8", 1, size=10) == whole[-10:]
    assert agent.tail("r8", 1, offset=5) == whole[5:]


def test_a_command_that_cannot_start_exits_127_with_the_reason_in_the_log(agent):
    bad = {**spec("r9", 1), "argv": ["/nonexistent/python"]}
    agent.launch(bad)
    assert wait_for(agent, "r9", 1, "exited")["exit_code"] == 127
    assert "could not start" in (attempt_dir(agent, "r9", 1) / "output.log").read_text()


def test_the_agent_is_uploaded_once_and_again_if_it_vanishes(agent):
    agent.probe(set())
    (path,) = (Path(agent.config.root) / "bin").iterdir()
    assert os.access(path, os.X_OK)
    counting = CountingTransport()
    restarted = HostAgent(agent.config, counting)  # a daemon started again
    restarted.probe(set())
    assert counting.puts == [] and counting.runs == 1  # this version is there: one call, no upload
    path.unlink()
    restarted.probe(set())  # finds it missing, uploads, runs again
    assert path.exists() and counting.puts == [str(path)]


class CountingTransport(LocalTransport):
    """The local transport, counting what goes through it (the same interface, no patching)."""

    def __init__(self):
        super().__init__("local")
        self.puts: list[str] = []
        self.runs = 0

    def run(self, argv, *, stdin=b"", timeout_s=30.0):
        self.runs += 1
        return super().run(argv, stdin=stdin, timeout_s=timeout_s)

    def put_file(self, path, data, mode=0o644):
        self.puts.append(path)
        super().put_file(path, data, mode)


def test_a_shared_checkpoint_root_reaches_the_job(agent, tmp_path):
    from sheetrunner.config import JobConfig
    from sheetrunner.model import Run, Status
    from sheetrunner.pool.hosts import launch_spec

    job = JobConfig("fake", (sys.executable, str(FAKE_JOB)), checkpoint_root=str(tmp_path / "nfs"))
    now = __import__("datetime").datetime.now()
    run = Run("r10", "k", "fake", (("steps", "1"),), 0, None, Status.LAUNCHING, now, now, attempt=1)
    spec = launch_spec(run, job, agent.config, None)
    assert spec["checkpoint_dir"] == f"{tmp_path}/nfs/r10"
    agent.launch(spec)
    wait_for(agent, "r10", 1, "exited")
    assert (tmp_path / "nfs" / "r10").is_dir()


def test_an_attempt_stopped_before_its_job_started_never_starts(agent, tmp_path):
    from sheetrunner.remote import agent_source

    path = attempt_dir(agent, "r11", 1)
    path.mkdir(parents=True)
    (path / "spec.json").write_text(json.dumps({**spec("r11", 1, "--echo", "started"),
                                                "checkpoint_dir": str(tmp_path / "ck")}))
    (path / "stop").write_text("now")
    script = tmp_path / "agent.py"
    script.write_bytes(agent_source())
    subprocess.run([sys.executable, str(script), "supervise", str(path)], check=True, timeout=30)
    assert (path / "exit_code").read_text() == "143"
    assert not (path / "output.log").exists()
