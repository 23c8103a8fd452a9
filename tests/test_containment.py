"""Lifecycle on a host, with real processes through the agent's launch: kills that return at
once, processes contained by the attempt's token, facts instead of verdicts, a capped log."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sheetrunner.config import HostConfig
from sheetrunner.pool.hosts import HostAgent
from sheetrunner.pool.local import LocalTransport

NS = "testns000003"


def rid(tag: str) -> str:
    return f"0000000{len(tag) % 10}-{tag}"


@pytest.fixture
def agent(tmp_path: Path) -> HostAgent:
    host = HostConfig(name="local", local=True, root=str(tmp_path / "root"), python=sys.executable)
    return HostAgent(host, LocalTransport("local"), namespace=NS)


def launch(agent: HostAgent, run_id: str, code: str, **extra) -> Path:
    spec = {"run_id": run_id, "attempt": 1, "argv": [sys.executable, "-c", textwrap.dedent(code)],
            "env": {}, "workdir": None, "accelerators": [], **extra}
    assert agent.launch(spec).launched
    return Path(agent.config.root) / NS / "hosts" / agent.name / "runs" / run_id / "1"


def seen(agent: HostAgent, run_id: str) -> dict:
    return agent.probe({(run_id, 1)})["attempts"][0]


def wait(predicate, timeout_s: float = 20.0, every: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def wait_file(path: Path, timeout_s: float = 20.0) -> str:
    assert wait(path.exists, timeout_s), path
    return wait(lambda: path.read_text().strip(), 5) or ""


def job_pid(directory: Path) -> int:
    return int(wait_file(directory / "pid").split()[0])


# A job that ignores SIGTERM and sleeps: only SIGKILL ends it.
STUBBORN = """
    import signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ready", flush=True)
    while True:
        time.sleep(0.05)
"""


def test_kill_returns_at_once_and_a_stopped_job_is_gone_within_the_grace(agent):
    directory = launch(agent, rid("frozen"), STUBBORN)
    pid = job_pid(directory)
    assert wait(lambda: seen(agent, rid("frozen"))["state"] == "running")
    assert wait(lambda: b"ready" in (directory / "output.log").read_bytes())
    os.killpg(pid, signal.SIGSTOP)  # frozen: ignores SIGTERM until continued
    grace = 3.0
    started = time.monotonic()
    state = agent.kill(rid("frozen"), 1, grace_s=grace)
    took = time.monotonic() - started
    assert state == "running"
    assert took / grace < 0.5, took  # the kill did not wait out the grace
    assert (directory / "stop").read_text().split()[1] == "3.0"
    assert wait(lambda: gone(pid), grace + 10)
    ended_after = time.monotonic() - started
    assert ended_after >= grace * 0.8  # SIGTERM was ignored: it took the SIGKILL after the grace
    final = wait(lambda: (s := seen(agent, rid("frozen")))["state"] == "exited" and s)
    assert final["exit_code"] == 128 + signal.SIGKILL


SETSID_CHILD = """
    import subprocess
    subprocess.Popen(["setsid", "sleep", "600"])
    print("started the child", flush=True)
"""


def test_a_child_that_left_the_session_is_stopped_when_the_job_ends(agent):
    directory = launch(agent, rid("setsid"), SETSID_CHILD)
    final = wait(lambda: (s := seen(agent, rid("setsid")))["state"] == "exited" and s)
    assert final and final["exit_code"] == 0
    leftovers = (directory / "leftovers").read_text()
    assert "sleep 600" in leftovers
    child = int(next(line for line in leftovers.splitlines() if "sleep 600" in line).split()[0])
    assert wait(lambda: gone(child), 5)
    assert "sleep 600" in final["leftovers"] and len(final["leftovers"]) <= 500


DOUBLE_FORK = """
    import os, sys, time
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            with open(os.environ["SHEETRUNNER_RUN_DIR"] + "/daemon.pid", "w") as f:
                f.write(str(os.getpid()))
            while True:
                time.sleep(1)
        os._exit(0)
    os.wait()
    while True:
        time.sleep(0.1)
"""


def test_a_double_forked_daemon_is_stopped_with_its_attempt_by_kill(agent):
    directory = launch(agent, rid("daemon"), DOUBLE_FORK)
    pid = job_pid(directory)
    daemon = int(wait_file(directory / "daemon.pid"))
    assert os.getsid(daemon) != os.getsid(pid)  # outside the job's session and group
    agent.kill(rid("daemon"), 1, grace_s=5)
    assert wait(lambda: gone(pid) and gone(daemon), 10)
    final = wait(lambda: (s := seen(agent, rid("daemon")))["state"] == "exited" and s)
    assert final["exit_code"] == 128 + signal.SIGTERM


def test_the_job_carries_a_random_token_of_its_attempt(agent):
    code = """
        import os
        print("TOKEN", os.environ.get("SHEETRUNNER_ATTEMPT_TOKEN"), flush=True)
    """
    directory = launch(agent, rid("token"), code)
    assert wait(lambda: seen(agent, rid("token"))["state"] == "exited")
    token = (directory / "token").read_text()
    assert len(token) == 32 and f"TOKEN {token}" in (directory / "output.log").read_text()


def test_an_attempt_without_a_pid_stays_starting_however_old(agent):
    directory = Path(agent.config.root) / NS / "hosts" / "local" / "runs" / rid("old") / "1"
    agent.probe(set())
    directory.mkdir(parents=True)
    (directory / "spec.json").write_text("{}")
    old = time.time() - 3600
    os.utime(directory / "spec.json", (old, old))
    os.utime(directory, (old, old))
    found = seen(agent, rid("old"))
    assert found["state"] == "starting" and found["started_age_s"] >= 3590


def test_a_job_whose_supervisor_was_killed_runs_on_then_ends_lost(agent):
    directory = launch(agent, rid("orphan"), """
        import time
        time.sleep(1.5)
    """)
    pid = job_pid(directory)
    supervisor = int((directory / "pid").read_text().split()[3])
    os.kill(supervisor, signal.SIGKILL)
    found = wait(lambda: (s := seen(agent, rid("orphan"))).get("reason") and s, 5)
    assert found["state"] == "running" and found["reason"] == "supervisor gone"
    assert wait(lambda: gone(pid), 10)
    final = wait(lambda: (s := seen(agent, rid("orphan")))["state"] == "lost" and s)
    assert final["reason"] == "supervisor killed; outcome unknown"
    assert (directory / "lost").exists() and not (directory / "exit_code").exists()


def test_an_attempt_from_another_boot_is_lost_because_the_host_rebooted(agent):
    directory = launch(agent, rid("boot"), "print('done')")
    assert wait(lambda: seen(agent, rid("boot"))["state"] == "exited")
    parts = (directory / "pid").read_text().split()
    (directory / "exit_code").unlink()
    (directory / "pid").write_text(" ".join([parts[0], parts[1], "another-boot", *parts[3:]]))
    found = seen(agent, rid("boot"))
    assert (found["state"], found["reason"]) == ("lost", "host rebooted")


def test_kill_of_a_job_whose_supervisor_is_gone_still_escalates(agent):
    directory = launch(agent, rid("noparent"), STUBBORN)
    pid = job_pid(directory)
    assert wait(lambda: b"ready" in (directory / "output.log").read_bytes())  # no writes after
    supervisor = int((directory / "pid").read_text().split()[3])
    os.kill(supervisor, signal.SIGKILL)
    assert wait(lambda: seen(agent, rid("noparent")).get("reason") == "supervisor gone", 5)
    started = time.monotonic()
    agent.kill(rid("noparent"), 1, grace_s=1)
    assert time.monotonic() - started < 5
    assert wait(lambda: gone(pid), 10)


def test_output_is_capped_with_one_marker_and_metrics_still_count(agent):
    cap = 256 << 10
    code = """
        import sys
        out = sys.stdout
        out.write("FIRST LINE\\n")
        for i in range(4000):
            out.write("noise %05d %s\\n" % (i, "x" * 200))
            if i % 100 == 0:
                out.write('SHEETRUNNER {"step": %d, "loss": %f}\\n' % (i, 1.0 / (i + 1)))
        out.write('SHEETRUNNER {"step": 4000, "loss": 0.0001}\\n')
        out.write("LAST LINE\\n")
    """
    directory = launch(agent, rid("cap"), code, max_log_bytes=cap)
    final = wait(lambda: (s := seen(agent, rid("cap")))["state"] == "exited" and s)
    assert final["exit_code"] == 0
    log = (directory / "output.log").read_bytes()
    assert len(log) <= cap
    assert log.startswith(b"FIRST LINE\n") and log.endswith(b"LAST LINE\n")
    markers = [line for line in log.split(b"\n") if b"bytes of output dropped" in line]
    assert len(markers) == 1
    dropped = int(markers[0].split(b"[sheetrunner: ")[1].split()[0])
    written = len(b"FIRST LINE\n") + 4000 * len(b"noise 00000 " + b"x" * 200 + b"\n")
    assert dropped > written - cap
    assert final["metrics"] == {"step": 4000, "loss": 0.0001}
    assert final["summary"]["min"]["loss"] == 0.0001
    assert agent.tail(rid("cap"), 1, size=10) == log[-10:]
    history = agent.history(rid("cap"), 1)
    assert history[-1] == {"step": 4000, "loss": 0.0001} and history[0]["step"] == 0


def test_a_launch_with_a_cap_too_small_is_refused(agent):
    from sheetrunner.errors import TransportError

    with pytest.raises(TransportError, match="max_log_bytes"):
        launch(agent, rid("tiny"), "pass", max_log_bytes=100)

