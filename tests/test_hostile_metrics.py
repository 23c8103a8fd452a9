"""Metrics a job writes are bounded: a huge line, a report with thousands of keys or
hundreds of thousands of metric names never make a probe slow or its answer big, and
what was left out is said once, in the attempt's `metrics_note`.

Real agent, real processes, through the local transport (as tests/test_agent.py).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import FAKE_JOB

from sheetrunner.config import HostConfig
from sheetrunner.pool.hosts import HostAgent, observation_from_probe
from sheetrunner.pool.local import LocalTransport
from sheetrunner.remote.protocol import MAX_REPORT_KEYS, REPORT_LINE_BYTES

NS = "testns000003"
ANSWER_BOUND = 256 * 1024  # the whole probe's answer, with one hostile attempt in it
TIME_RATIO = 5.0  # a hostile attempt's probe against a clean one's, same machine, same test


def rid(tag: str) -> str:
    return f"0000000{len(tag) % 10}-{tag}"


@pytest.fixture
def agent(tmp_path: Path) -> HostAgent:
    host = HostConfig(name="local", local=True, root=str(tmp_path / "root"), python=sys.executable)
    return HostAgent(host, LocalTransport("local"), namespace=NS)


def attempt_dir(agent: HostAgent, run_id: str, attempt: int = 1) -> Path:
    return Path(agent.config.root) / NS / "hosts" / agent.name / "runs" / run_id / str(attempt)


def ended_attempt(agent: HostAgent, run_id: str) -> Path:
    """An attempt whose job ran and exited 0; its files are then the test's to write."""
    spec = {"run_id": run_id, "attempt": 1, "argv": [sys.executable, str(FAKE_JOB), "--steps", "0"],
            "env": {}, "workdir": None, "accelerators": []}
    assert agent.launch(spec).launched
    deadline = time.monotonic() + 15
    while probe_one(agent, run_id)["state"] != "exited":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return attempt_dir(agent, run_id)


def probe_one(agent: HostAgent, run_id: str) -> dict:
    (seen,) = [a for a in agent.probe({(run_id, 1)})["attempts"] if a["run_id"] == run_id]
    return seen


def lines(*reports: dict | str) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in reports)


def test_a_report_line_over_the_limit_is_skipped_and_counted_once(agent):
    path = ended_attempt(agent, rid("long"))
    huge = {"step": 2, "blob": "x" * REPORT_LINE_BYTES}
    wide = {"step": 3, **{f"k{i:03d}": i for i in range(MAX_REPORT_KEYS + 100)}}
    (path / "metrics.jsonl").write_text(lines({"step": 1, "k000": 1.0}, huge, huge, wide,
                                              {"step": 4, "k000": -1}))
    for _ in range(2):  # counted when read, not again on the next probe
        seen = probe_one(agent, rid("long"))
        assert seen["metrics_note"] == (
            "2 report lines over 64 KiB skipped; 1 report cut to 200 keys")
    assert "blob" not in seen["metrics"] and seen["metrics"]["k000"] == -1
    assert len(seen["metrics"]) == MAX_REPORT_KEYS  # step and the first 199 of the wide report
    assert "k198" in seen["metrics"] and "k199" not in seen["metrics"]
    assert seen["summary"]["min"]["k000"] == -1 and "k199" not in seen["summary"]["min"]
    history = json.loads(agent._call([*agent._where("history"), rid("long"), "1", "100"]))
    assert [r["step"] for r in history] == [1, 3, 4]


def test_the_summary_keeps_at_most_200_metric_names(agent):
    path = ended_attempt(agent, rid("names"))
    reports = [{f"r{r}m{i}": float(i) for i in range(150)} for r in range(4)]
    (path / "metrics.jsonl").write_text(lines(*reports))
    seen = probe_one(agent, rid("names"))
    assert len(seen["summary"]["min"]) == 200 and len(seen["summary"]["history"]) == 200
    assert len(seen["metrics"]) <= 200
    assert seen["metrics_note"] == "400 values of metrics beyond the first 200 names not summarised"


def test_a_line_longer_than_a_probe_reads_is_skipped_across_probes(agent):
    path = ended_attempt(agent, rid("span"))
    (path / "metrics.jsonl").write_text(
        lines({"step": 1, "a": 1}, {"step": 2, "blob": "y" * (3 << 20)}, {"step": 3, "a": 3}))
    for _ in range(5):
        seen = probe_one(agent, rid("span"))
    assert seen["summary"]["history"]["a"] == [1, 3]
    assert seen["metrics_note"] == "1 report line over 64 KiB skipped"


def test_deeply_nested_or_odd_json_in_a_report_is_only_that_report(agent):
    path = ended_attempt(agent, rid("odd"))
    (path / "metrics.jsonl").write_text(lines(
        "[" * 50000, '{"a": ' + "[" * 20000 + "]" * 20000 + "}", '{"n": 1' + "0" * 5000 + "}",
        '{"s": "' + "z" * 1000 + '", "ok": 1}', '{"' + "n" * 500 + '": 1, "ok": 2}'))
    seen = probe_one(agent, rid("odd"))
    assert seen["metrics"]["ok"] == 2 and len(seen["metrics"]["s"]) == 256
    assert not any(len(name) > 128 for name in seen["metrics"])


def hostile_files(path: Path) -> None:
    """200,000 metric keys (one line of them, and spread over a thousand reports) and a
    10 MB log line, the line a report prefix and all."""
    one_line = json.dumps({f"key{i}": i for i in range(200_000)})
    spread = (json.dumps({f"s{r}k{i}": 0.5 for i in range(200)}) for r in range(1000))
    with open(path / "metrics.jsonl", "w") as f:
        f.write(one_line + "\n")
        f.writelines(line + "\n" for line in spread)
    with open(path / "output.log", "w") as f:
        f.write("SHEETRUNNER " + json.dumps({"blob": "q" * 10_000_000}) + "\n")
        f.write("x" * 10_000_000)  # and one without its newline


def timed_probe(agent: HostAgent, run_id: str) -> tuple[float, int, dict]:
    args = agent.argv(["probe", agent.ns_root(), agent.name])
    request = json.dumps({"attempts": [[run_id, 1]]}).encode()
    start = time.perf_counter()
    done = subprocess.run(args, input=request, capture_output=True, timeout=60, check=True)
    return time.perf_counter() - start, len(done.stdout), json.loads(done.stdout)


def test_hostile_metrics_keep_the_probe_small_and_about_as_fast_as_a_clean_one(agent, capsys):
    clean = ended_attempt(agent, rid("clean"))
    (clean / "metrics.jsonl").write_text(lines(*({"step": s, "loss": 1 / s} for s in range(1, 200))))
    hostile = ended_attempt(agent, rid("hostile"))
    hostile_files(hostile)
    clean_runs = [timed_probe(agent, rid("clean")) for _ in range(7)]
    hostile_runs = [timed_probe(agent, rid("hostile")) for _ in range(7)]  # catching up, 1 MiB a probe
    both = agent.probe({(rid("clean"), 1), (rid("hostile"), 1)})
    size_both = len(json.dumps(both))
    assert size_both < ANSWER_BOUND
    assert max(size for _, size, _ in hostile_runs) < ANSWER_BOUND
    base = statistics.median(t for t, _, _ in clean_runs)
    worst = max(t for t, _, _ in hostile_runs)
    median = statistics.median(t for t, _, _ in hostile_runs)
    with capsys.disabled():
        print(f"\nprobe: clean median {base * 1000:.0f} ms; hostile median {median * 1000:.0f} ms, "
              f"worst {worst * 1000:.0f} ms (ratio {worst / base:.2f}); answer with both "
              f"{size_both} bytes, hostile alone at most "
              f"{max(s for _, s, _ in hostile_runs)} bytes")
    assert worst < TIME_RATIO * base
    (seen,) = [a for a in both["attempts"] if a["run_id"] == rid("hostile")]
    assert "report line" in seen["metrics_note"]
    assert len(seen["summary"]["min"]) <= 200
    observation_from_probe("local", both, __import__("datetime").datetime.now())  # still parses
