"""The agent script on a host, driven through the local transport with real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import FAKE_JOB, make_run

from sheetrunner.config import HostConfig
from sheetrunner.pool.hosts import HostAgent
from sheetrunner.pool.local import LocalTransport

NS = "testns000001"


def rid(tag: str) -> str:
    """A run id in the protocol's format, readable in a failure."""
    return f"0000000{len(tag) % 10}-{tag}"


@pytest.fixture
def agent(tmp_path: Path) -> HostAgent:
    host = HostConfig(name="local", local=True, root=str(tmp_path / "root"), python=sys.executable)
    return HostAgent(host, LocalTransport("local"), namespace=NS)


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
    return Path(agent.config.root) / NS / "hosts" / agent.name / "runs" / run_id / str(attempt)


def test_a_launched_job_runs_detached_and_its_exit_code_is_recorded(agent):
    assert agent.launch(spec(rid("r1"), 1, "--steps", "2", "--exit", "7")).launched
    seen = wait_for(agent, rid("r1"), 1, "exited")
    assert seen["state"] == "exited" and seen["exit_code"] == 7
    assert seen["metrics"] == {"step": 2, "loss": 0.5}
    pid, ticks, boot, *_ = (attempt_dir(agent, rid("r1"), 1) / "pid").read_text().split()
    assert int(pid) > 0 and ticks.isdigit() and boot == Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def test_the_attempt_directory_is_the_launch_lock(agent):
    assert agent.launch(spec(rid("r1"), 1, "--steps", "20")).launched
    second = agent.launch(spec(rid("r1"), 1, "--steps", "20"))
    assert not second.launched and "already exists" in second.detail
    wait_for(agent, rid("r1"), 1, "running")
    agent.kill(rid("r1"), 1, grace_s=2)


def test_the_job_gets_its_environment_and_argv_items_verbatim(agent, tmp_path):
    hostile = ["; rm -rf ~", "$(id)", "`touch /tmp/pwned`", "a b 'c' \"d\"", "=1+1"]
    args = [item for value in hostile for item in ("--echo", value)]
    agent.launch(spec(rid("r2"), 1, *args, "--steps", "0", workdir=str(tmp_path)))
    wait_for(agent, rid("r2"), 1, "exited")
    log = (attempt_dir(agent, rid("r2"), 1) / "output.log").read_text()
    echoed = json.loads(log.split("ECHO ", 1)[1].splitlines()[0])
    assert echoed["argv"] == args + ["--steps", "0"]
    assert not Path("/tmp/pwned").exists()


def test_kill_stops_the_whole_process_group(agent):
    agent.launch(spec(rid("r3"), 1, "--hang", "1"))
    wait_for(agent, rid("r3"), 1, "running")
    pid = int((attempt_dir(agent, rid("r3"), 1) / "pid").read_text().split()[0])
    assert agent.kill(rid("r3"), 1, grace_s=2) in ("running", "exited")  # returns at once
    assert (attempt_dir(agent, rid("r3"), 1) / "stop").exists()
    assert wait_for(agent, rid("r3"), 1, "exited")["exit_code"] == 128 + 15
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_probe_reports_unfinished_attempts_nobody_asked_about(agent):
    agent.launch(spec(rid("r4"), 1, "--hang", "1"))
    wait_for(agent, rid("r4"), 1, "running")
    seen = agent.probe(set())["attempts"]
    assert [(a["run_id"], a["attempt"], a["state"]) for a in seen] == [(rid("r4"), 1, "running")]
    agent.kill(rid("r4"), 1, grace_s=2)


def test_a_recorded_pid_from_another_boot_is_lost_not_running(agent):
    agent.launch(spec(rid("r5"), 1, "--hang", "1"))
    wait_for(agent, rid("r5"), 1, "running")
    pid_file = attempt_dir(agent, rid("r5"), 1) / "pid"
    real = pid_file.read_text()
    parts = real.split()
    pid_file.write_text(" ".join([parts[0], parts[1], "another-boot", "1", "0"]))
    assert wait_for(agent, rid("r5"), 1, "lost", timeout_s=1)["state"] == "lost"
    assert [a["run_id"] for a in agent.probe(set())["attempts"]] == []  # no longer scanned
    pid_file.write_text(real)
    agent.kill(rid("r5"), 1, grace_s=2)


def test_a_missing_attempt_is_reported_missing(agent):
    assert wait_for(agent, rid("nope"), 3, "missing", timeout_s=0)["state"] == "missing"


def test_heartbeat_follows_output_growth(agent):
    agent.launch(spec(rid("r6"), 1, "--steps", "30", "--sleep", "0.1"))
    first = time.time() - wait_for(agent, rid("r6"), 1, "running")["heartbeat_age_s"]
    time.sleep(1.0)
    later = time.time() - wait_for(agent, rid("r6"), 1, "running")["heartbeat_age_s"]
    assert later > first + 0.5
    wait_for(agent, rid("r6"), 1, "exited")


def test_metrics_merge_the_latest_value_of_each_name(agent):
    agent.launch(spec(rid("r7"), 1, "--steps", "0"))
    wait_for(agent, rid("r7"), 1, "exited")
    lines = [{"step": 1, "acc": 0.5}, {"step": 2, "loss": 0.1}, {"step": 3, "loss": 0.05}]
    (attempt_dir(agent, rid("r7"), 1) / "metrics.jsonl").write_text(
        "".join(json.dumps(x) + "\n" for x in lines))
    assert wait_for(agent, rid("r7"), 1, "exited")["metrics"] == {"step": 3, "acc": 0.5, "loss": 0.05}


def test_tail_returns_the_end_or_the_bytes_from_an_offset(agent):
    agent.launch(spec(rid("r8"), 1, "--steps", "3"))
    wait_for(agent, rid("r8"), 1, "exited")
    whole = (attempt_dir(agent, rid("r8"), 1) / "output.log").read_bytes()
    assert agent.tail(rid("r8"), 1, size=10) == whole[-10:]
    assert agent.tail(rid("r8"), 1, offset=5) == whole[5:]


def test_a_command_that_cannot_start_exits_127_with_the_reason_in_the_log(agent):
    bad = {**spec(rid("r9"), 1), "argv": ["/nonexistent/python"]}
    agent.launch(bad)
    assert wait_for(agent, rid("r9"), 1, "exited")["exit_code"] == 127
    assert "could not start" in (attempt_dir(agent, rid("r9"), 1) / "output.log").read_text()


def test_the_agent_is_uploaded_once_and_again_if_it_vanishes(agent):
    agent.probe(set())
    (path,) = (Path(agent.config.root) / "bin").iterdir()
    assert os.access(path, os.X_OK)
    counting = CountingTransport()
    restarted = HostAgent(agent.config, counting, namespace=NS)  # a daemon started again
    restarted.probe(set())
    assert counting.puts == [] and counting.runs == 1  # this version is there: one call, no upload
    path.unlink()
    restarted.probe(set())  # finds it missing, uploads (the job library first), runs again
    assert path.exists() and counting.puts[-1] == str(path)
    assert all("/lib/" in p for p in counting.puts[:-1]) and len(counting.puts) > 1


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
    from sheetrunner.model import Status
    from sheetrunner.pool.hosts import launch_spec

    job = JobConfig("fake", (sys.executable, str(FAKE_JOB)), checkpoint_root=str(tmp_path / "nfs"))
    now = __import__("datetime").datetime.now()
    run = make_run(rid("r10"), "k", "fake", (("steps", "1"),), 0, None, Status.LAUNCHING, now, now, attempt=1)
    spec = launch_spec(run, job, agent.config, None)
    assert spec["checkpoint_dir"] == f"{tmp_path}/nfs/{rid('r10')}"
    agent.launch(spec)
    wait_for(agent, rid("r10"), 1, "exited")
    assert (tmp_path / "nfs" / rid("r10")).is_dir()


def test_an_attempt_stopped_before_its_job_started_never_starts(agent, tmp_path):
    from sheetrunner.remote import agent_zipapp

    path = attempt_dir(agent, rid("r11"), 1)
    path.mkdir(parents=True)
    (path / "spec.json").write_text(json.dumps({**spec(rid("r11"), 1, "--echo", "started"),
                                                "checkpoint_dir": str(tmp_path / "ck")}))
    (path / "stop").write_text("now")
    script = tmp_path / "agent.pyz"
    script.write_bytes(agent_zipapp())
    subprocess.run([sys.executable, str(script), "supervise", str(path)], check=True, timeout=30)
    assert (path / "exit_code").read_text() == "143"
    assert not (path / "output.log").exists()


def run_agent(agent: HostAgent, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    """The agent binary itself, with arguments no HostAgent would send."""
    agent.probe(set())  # uploads it
    return subprocess.run(agent.argv(list(args)), input=stdin, capture_output=True, timeout=30)


def tree(top: Path) -> set[Path]:
    return set(top.rglob("*"))


@pytest.mark.parametrize("run_id, attempt", [("../../escaped", 1), (rid("ok"), "../../escaped"),
                                             (rid("ok"), 0), (rid("ok"), "1/../../2"),
                                             (rid("ok") + "\n", 1)])
def test_a_malformed_run_id_or_attempt_is_refused_before_any_file_is_touched(agent, tmp_path,
                                                                            run_id, attempt):
    agent.probe(set())
    before = tree(tmp_path)
    ns_root, host = agent.ns_root(), agent.name
    calls = [
        (["launch", ns_root, host], json.dumps(spec(run_id, attempt, "--steps", "0")).encode()),
        (["probe", ns_root, host], json.dumps({"attempts": [[run_id, attempt]]}).encode()),
        (["kill", ns_root, host, run_id, str(attempt), "1"], b""),
        (["tail", ns_root, host, run_id, str(attempt), "100"], b""),
        (["history", ns_root, host, run_id, str(attempt), "10"], b""),
    ]
    for args, stdin in calls:
        done = run_agent(agent, *args, stdin=stdin)
        assert done.returncode == 3 and done.stderr.startswith(b"refused:"), (args, done)
    assert tree(tmp_path) == before
    assert not [p for p in tmp_path.rglob("*") if "escaped" in p.name]


def test_a_bad_namespace_root_host_name_or_probe_request_is_refused(agent):
    ns_root = agent.ns_root()
    for args, stdin in [(["probe", ns_root.rsplit("/", 1)[0] + "/..", "local"], b"{}"),
                        (["probe", ns_root, "../other"], b"{}"),
                        (["probe", ns_root, "local"], b'{"runs": ["../../x"]}'),
                        (["probe", ns_root, "local"], b"[1, 2]"),
                        (["launch", ns_root, "local"], json.dumps({**spec(rid("a"), 1), "argv": "ls"}).encode())]:
        done = run_agent(agent, *args, stdin=stdin)
        assert done.returncode == 3 and done.stderr.startswith(b"refused:"), (args, done)


def test_host_agent_reports_a_refusal_and_skips_malformed_ids_in_a_probe(agent, tmp_path):
    from sheetrunner.errors import TransportError

    with pytest.raises(TransportError, match="refused: not a run id"):
        agent.launch(spec("../../escaped", 1))
    seen = agent.probe({("../../escaped", 1), (rid("fine"), "x"), (rid("fine"), 1)}, runs={"../x"})
    assert [(a["run_id"], a["attempt"], a["state"]) for a in seen["attempts"]] == [
        (rid("fine"), 1, "missing")]
    assert not [p for p in tmp_path.rglob("*") if "escaped" in p.name]


def test_no_namespace_no_agent_call(tmp_path):
    from sheetrunner.errors import TransportError

    host = HostConfig(name="local", local=True, root=str(tmp_path / "root"), python=sys.executable)
    with pytest.raises(TransportError, match="no namespace yet"):
        HostAgent(host, LocalTransport("local")).probe(set())
    assert not (tmp_path / "root").exists()


def test_junk_a_job_writes_into_its_attempt_directory_never_breaks_the_probe(agent):
    agent.launch(spec(rid("junk"), 1, "--hang", "1"))
    wait_for(agent, rid("junk"), 1, "running")
    path = attempt_dir(agent, rid("junk"), 1)
    real_pid = (path / "pid").read_text()
    for name, junk in [("pid", b"garbage"), ("metrics.summary.json", b"[]"),
                       ("spec.json", b"\xff{not json"), ("metrics.jsonl", b"[1]\n\xff\n{}\n")]:
        (path / name).write_bytes(junk)
    (path.parent / "07").mkdir()  # not an attempt number as the agent writes them
    (path.parent.parent / "not-a-run").mkdir()
    facts = agent.probe({(rid("junk"), 1)})
    (seen,) = facts["attempts"]
    # a damaged pid file while the supervisor lives: the job runs (facts, not a timeout)
    assert seen["state"] == "running" and seen["summary"]["min"] == {}
    assert seen["spec"] == {"key": "", "job": "", "params": [], "gpus": 0, "accelerators": []}
    (path / "metrics.summary.json").write_text('{"source": 3, "offset": "x"}')
    (path / "exit_code").write_text("not a number")
    assert agent.probe({(rid("junk"), 1)})["attempts"][0]["state"] == "exited"
    (path / "exit_code").unlink()
    (path / "lost").unlink(missing_ok=True)
    (path / "pid").write_text(real_pid)
    agent.kill(rid("junk"), 1, grace_s=2)


def test_the_probe_reports_the_newest_attempt_of_a_run_asked_for_by_id(agent):
    for attempt in (1, 2):
        agent.launch(spec(rid("newest"), attempt, "--steps", "0"))
        wait_for(agent, rid("newest"), attempt, "exited")
    facts = agent.probe(set(), runs={rid("newest"), rid("absent")})
    assert [(a["run_id"], a["attempt"]) for a in facts["attempts"]] == [(rid("newest"), 2)]


def test_an_attempt_reports_its_spec_and_ages_measured_on_the_host(agent):
    from datetime import UTC, datetime, timedelta

    from sheetrunner.config import JobConfig
    from sheetrunner.model import Status
    from sheetrunner.pool.hosts import launch_spec, observation_from_probe

    job = JobConfig("fake", (sys.executable, str(FAKE_JOB)))
    now = datetime.now(UTC)
    run = make_run(rid("spec"), "k" * 64, "fake", (("steps", "1"), ("lr", "0.1")), 0, None,
              Status.LAUNCHING, now, now, attempt=1)
    agent.launch(launch_spec(run, job, agent.config, None))
    seen = wait_for(agent, rid("spec"), 1, "exited")
    assert seen["spec"] == {"key": "k" * 64, "job": "fake", "params": [["steps", "1"], ["lr", "0.1"]],
                            "gpus": 0, "accelerators": []}
    assert "heartbeat_at" not in seen and 0 <= seen["heartbeat_age_s"] <= seen["started_age_s"] < 30
    later = now + timedelta(days=3)  # the daemon's clock, whatever the host's says
    facts = agent.probe({(rid("spec"), 1)})
    facts["attempts"][0].update(heartbeat_age_s=12.5, started_age_s=60)
    (obs,) = observation_from_probe("local", facts, later).attempts
    assert obs.heartbeat_at == later - timedelta(seconds=12.5)
    assert obs.started_at == later - timedelta(seconds=60)
    assert (obs.key, obs.job, obs.params, obs.gpus, obs.accelerators) == (
        "k" * 64, "fake", (("steps", "1"), ("lr", "0.1")), 0, ())


def test_the_default_checkpoint_dir_is_the_runs_own_in_the_namespace(agent, tmp_path):
    agent.launch(spec(rid("ckpt"), 1, "--steps", "0"))
    wait_for(agent, rid("ckpt"), 1, "exited")
    written = json.loads((attempt_dir(agent, rid("ckpt"), 1) / "spec.json").read_text())
    assert written["checkpoint_dir"] == str(tmp_path / "root" / NS / "checkpoints" / rid("ckpt"))
    assert (tmp_path / "root" / NS / "checkpoints" / rid("ckpt")).is_dir()


def test_namespaces_and_host_names_sharing_a_root_never_see_each_others_attempts(agent):
    agent.launch(spec(rid("mine"), 1, "--hang", "1"))
    wait_for(agent, rid("mine"), 1, "running")
    other_ns = HostAgent(agent.config, LocalTransport("local"), namespace="testns000002")
    other_host = HostAgent(replace(agent.config, name="other"), LocalTransport("other"), namespace=NS)
    for other in (other_ns, other_host):
        assert other.probe(set(), runs={rid("mine")})["attempts"] == []
        assert other.probe({(rid("mine"), 1)})["attempts"][0]["state"] == "missing"
    agent.kill(rid("mine"), 1, grace_s=2)


def test_paths_starting_with_a_tilde_are_expanded_on_the_host(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    host = HostConfig(name="local", local=True, root="~/.sheetrunner", python=sys.executable)
    agent = HostAgent(host, LocalTransport("local"), namespace=NS)
    lib = home / "lib"
    lib.mkdir()
    agent.launch({**spec(rid("tilde"), 1, "--steps", "0"), "lib_dir": "~/lib",
                  "workdir": "~", "checkpoint_dir": "~/ck"})
    seen = wait_for(agent, rid("tilde"), 1, "exited")
    assert seen["exit_code"] == 0
    where = home / ".sheetrunner" / NS / "hosts" / "local" / "runs" / rid("tilde") / "1"
    assert seen["log_path"] == str(where / "output.log")
    written = json.loads((where / "spec.json").read_text())
    assert (written["lib_dir"], written["workdir"], written["checkpoint_dir"]) == (
        str(lib), str(home), str(home / "ck"))


def test_the_zipapp_is_the_same_bytes_on_every_build():
    import zipfile
    from io import BytesIO

    from sheetrunner.remote import agent_name, agent_zipapp, version

    first, second = agent_zipapp.__wrapped__(), agent_zipapp.__wrapped__()
    assert first == second
    names = zipfile.ZipFile(BytesIO(first)).namelist()
    assert "__main__.py" in names and "sheetrunner/remote/protocol.py" in names
    assert agent_name() == f"agent-{version()}.pyz"


def test_host_facts_need_no_namespace(tmp_path):
    host = HostConfig(name="local", local=True, root=str(tmp_path / "root"), python=sys.executable)
    facts = HostAgent(host, LocalTransport("local")).facts()
    assert facts["boot_id"] and facts["disk_free_bytes"] > 0 and "attempts" not in facts


@pytest.mark.parametrize("change", [
    {"argv": [sys.executable, "-c", "pass", "a\0b"]},
    {"env": {"X": "a\0b"}},
    {"env": {"A=B": "1"}},
    {"env": {"X": 3}},
    {"argv": [sys.executable, "\ud800"]},
    {"workdir": "/tmp/a\0b"},
    {"accelerators": ["0\0"]},
])
def test_a_launch_spec_an_exec_cannot_carry_is_refused_before_anything_is_created(agent, tmp_path,
                                                                                change):
    agent.probe(set())
    before = tree(tmp_path)
    done = run_agent(agent, "launch", agent.ns_root(), agent.name,
                     stdin=json.dumps({**spec(rid("nul"), 1), **change}).encode())
    assert done.returncode == 3 and done.stderr.startswith(b"refused:"), done
    assert tree(tmp_path) == before


def test_modes_are_private_whatever_the_umask(tmp_path):
    host = HostConfig(name="local", local=True, root=str(tmp_path / "root"), python=sys.executable)
    agent = HostAgent(host, LocalTransport("local"), namespace=NS)
    old = os.umask(0)
    try:
        agent.launch(spec(rid("modes"), 1, "--steps", "1", "--exit", "2"))
        seen = wait_for(agent, rid("modes"), 1, "exited")
    finally:
        os.umask(old)
    assert seen["exit_code"] == 2
    root = tmp_path / "root"
    (agent_file,) = (root / "bin").iterdir()
    assert agent_file.stat().st_mode & 0o777 == 0o700
    dirs = [root, root / "bin", *[p for p in (root / NS).rglob("*") if p.is_dir()], root / NS]
    assert {oct(d.stat().st_mode & 0o777) for d in dirs} == {oct(0o700)}, dirs
    files = [p for p in (root / NS).rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"spec.json", "pid", "output.log", "exit_code",
                                       "metrics.summary.json"}
    assert {(p.name, oct(p.stat().st_mode & 0o777)) for p in files} == {
        (p.name, oct(0o600)) for p in files}


def test_the_agent_directory_is_made_private_even_when_it_was_not(tmp_path):
    host = HostConfig(name="local", local=True, root=str(tmp_path / "root"), python=sys.executable)
    (tmp_path / "root" / "bin").mkdir(parents=True)
    (tmp_path / "root" / "bin").chmod(0o777)
    HostAgent(host, LocalTransport("local"), namespace=NS).probe(set())
    assert (tmp_path / "root" / "bin").stat().st_mode & 0o777 == 0o700
