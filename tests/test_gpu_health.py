"""Accelerator health in the probe, with a fake `nvidia-smi` first on PATH."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sheetrunner.config import HostConfig
from sheetrunner.pool.hosts import HostAgent
from sheetrunner.pool.local import LocalTransport

NS = "testns000004"
ECC = "ecc.errors.uncorrected.volatile.total"

FAKE = r'''#!{python} -I
import json, os, sys, time
state = json.load(open({state!r}))
with open({calls!r}, "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\n")
if state["mode"] == "hang":
    time.sleep(3600)
if state["mode"] == "fail":
    print("Unable to determine the device handle for GPU 0000:00:04.0: Unknown Error")
    sys.exit(15)
opts = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
if "--query-gpu" in opts:
    fields = opts["--query-gpu"].split(",")
    if {ecc!r} in fields and not state.get("ecc_field", True):
        print('Field "%s" is not a valid field to query.' % {ecc!r})
        sys.exit(2)
    for gpu in state["gpus"]:
        print(", ".join(gpu.get(f, "0") for f in fields))
elif "--query-compute-apps" in opts:
    for app in state["apps"]:
        print(", ".join(app))
'''


class FakeSmi:
    def __init__(self, directory: Path):
        self.state = directory / "state.json"
        self.calls = directory / "calls.log"
        self.calls.write_text("")
        self.set(mode="ok", gpus=[], apps=[])
        script = directory / "nvidia-smi"
        script.write_text(FAKE.format(python=sys.executable, state=str(self.state),
                                      calls=str(self.calls), ecc=ECC))
        script.chmod(0o755)

    def set(self, **state) -> None:
        self.state.write_text(json.dumps(state))

    def call_count(self) -> int:
        return len(self.calls.read_text().splitlines())


def gpu(index: int, ecc: str = "0", **fields: str) -> dict:
    row = {"index": str(index), "uuid": f"GPU-{index}", "name": "Fake H100", "memory.used": "3",
           "memory.total": "81559", "utilization.gpu": "0", ECC: ecc}
    row.update(fields)
    return row


@pytest.fixture
def smi(tmp_path: Path, monkeypatch) -> FakeSmi:
    directory = tmp_path / "smi"
    directory.mkdir()
    monkeypatch.setenv("PATH", f"{directory}{os.pathsep}{os.environ['PATH']}")
    return FakeSmi(directory)


@pytest.fixture
def agent(tmp_path: Path) -> HostAgent:
    host = HostConfig(name="local", local=True, root=str(tmp_path / "root"), python=sys.executable)
    return HostAgent(host, LocalTransport("local"), namespace=NS)


def probe(agent: HostAgent, smi: FakeSmi) -> dict:
    agent.probe(set())  # uploads the agent first
    before = smi.call_count()
    facts = agent.probe(set())
    calls = smi.calls.read_text().splitlines()[before:]
    # This fake knows only the CSV queries: the one `-q -x` call finds nothing, then the two.
    assert len([c for c in calls if c != "-q -x"]) <= 2 and len(calls) <= 3
    return facts


def test_healthy_gpus_say_so(agent, smi):
    smi.set(mode="ok", gpus=[gpu(0), gpu(1, ecc="[N/A]")], apps=[])
    facts = probe(agent, smi)
    assert facts["gpu_error"] == ""
    assert [(g["index"], g["healthy"], "health" in g) for g in facts["gpus"]] == [
        ("0", True, False), ("1", True, False)]


def test_a_lost_gpu_and_one_with_uncorrected_ecc_errors_are_not_healthy(agent, smi):
    lost = {f: "[GPU is lost]" for f in ("name", "memory.used", "memory.total", "utilization.gpu", ECC)}
    smi.set(mode="ok", apps=[], gpus=[gpu(0), gpu(1, **lost), gpu(2, ecc="3"),
                                      gpu(3, **{"utilization.gpu": "[Unknown Error]"})])
    facts = probe(agent, smi)
    health = {g["index"]: (g["healthy"], g.get("health", "")) for g in facts["gpus"]}
    assert health == {"0": (True, ""), "1": (False, "GPU is lost"),
                      "2": (False, "3 uncorrected ECC errors"),
                      "3": (False, "nvidia-smi: Unknown Error")}


def test_a_failing_nvidia_smi_is_a_gpu_error_with_the_reason(agent, smi):
    smi.set(mode="fail", gpus=[gpu(0)], apps=[])
    facts = probe(agent, smi)
    assert facts["gpus"] == []
    assert "exit status 15" in facts["gpu_error"] and "Unknown Error" in facts["gpu_error"]


def test_a_hanging_nvidia_smi_is_a_gpu_error_after_one_timeout(agent, smi):
    agent.probe(set())
    smi.set(mode="hang", gpus=[gpu(0)], apps=[])
    started = time.monotonic()
    facts = agent.probe(set())
    assert time.monotonic() - started < 25  # one timeout (15 s), not one per query
    assert facts["gpus"] == [] and "no answer within" in facts["gpu_error"]


def test_a_driver_without_the_ecc_field_still_reports_its_gpus(agent, smi):
    smi.set(mode="ok", gpus=[gpu(0)], apps=[], ecc_field=False)
    agent.probe(set())
    facts = agent.probe(set())
    assert facts["gpu_error"] == "" and facts["gpus"][0]["healthy"] is True


def test_gpu_processes_of_our_attempts_are_ours_even_outside_the_jobs_session(agent, smi, tmp_path):
    code = textwrap.dedent("""
        import os, subprocess, time
        child = subprocess.Popen(["setsid", "sleep", "600"])
        with open(os.environ["SHEETRUNNER_RUN_DIR"] + "/child.pid", "w") as f:
            f.write(str(child.pid))
        time.sleep(600)
    """)
    run_id = "00000001-gpuown"
    assert agent.launch({"run_id": run_id, "attempt": 1, "argv": [sys.executable, "-c", code],
                         "env": {}, "workdir": None, "accelerators": ["0"]}).launched
    child_file = Path(agent.config.root) / NS / "hosts" / "local" / "runs" / run_id / "1" / "child.pid"
    deadline = time.monotonic() + 15
    while not (child_file.exists() and child_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = child_file.read_text()
    assert os.getsid(int(child)) != os.getsid(os.getpid())
    try:
        smi.set(mode="ok", gpus=[gpu(0), gpu(1)],
                apps=[["GPU-0", child, "500"], ["GPU-1", str(os.getpid()), "500"]])
        facts = agent.probe({(run_id, 1)})
        assert {g["index"]: g["foreign"] for g in facts["gpus"]} == {"0": False, "1": True}
    finally:
        agent.kill(run_id, 1, grace_s=1)
