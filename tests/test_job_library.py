"""sheetrunner.job, the library a job imports: reports, heartbeat, checkpoints, environment.

Reporting is tested through `Reporter` with a fake clock (time is a
parameter), the module-level functions in real subprocesses (they read the
environment once and flush at exit), and checkpoints on a real directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sheetrunner import job

REPO = Path(__file__).resolve().parents[1]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def read_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def reporter(tmp_path: Path, clock: FakeClock) -> job.Reporter:
    # The real timer would fire after an hour: in these tests only the fake clock flushes.
    return job.Reporter(
        tmp_path / "metrics.jsonl", tmp_path / "heartbeat", flush_interval_s=3600, clock=clock
    )


@pytest.fixture
def job_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean SHEETRUNNER_* environment whose checkpoint dir is tmp_path/checkpoints."""
    for name in list(os.environ):
        if name.startswith("SHEETRUNNER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SHEETRUNNER_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    return tmp_path / "checkpoints"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHEETRUNNER_")}
    env["PYTHONPATH"] = str(REPO)
    return {**env, **extra}


def run_python(code: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


# --- reports and heartbeat ------------------------------------------------------------


def test_report_writes_one_json_line_per_call(reporter: job.Reporter, tmp_path: Path) -> None:
    before = time.time()
    reporter.report(1, loss=0.5)
    reporter.report(2, loss=0.25, acc=0.9)
    reporter.flush()
    lines = read_lines(tmp_path / "metrics.jsonl")
    assert [(r["step"], r.get("acc")) for r in lines] == [(1, None), (2, 0.9)]
    assert lines[1]["loss"] == 0.25
    assert before <= lines[0]["time"] <= time.time()
    assert (tmp_path / "heartbeat").exists()


def test_reports_within_the_flush_interval_share_one_write(
    reporter: job.Reporter, clock: FakeClock, tmp_path: Path
) -> None:
    metrics = tmp_path / "metrics.jsonl"
    reporter.report(0, loss=1.0)  # the first report is written at once
    for step in range(1, 100):
        clock.now += 1
        reporter.report(step, loss=1.0)
    assert len(read_lines(metrics)) == 1
    clock.now += 3600
    reporter.report(100, loss=1.0)
    assert [r["step"] for r in read_lines(metrics)] == list(range(101))


def test_heartbeat_is_touched_by_the_writes_of_a_report(
    reporter: job.Reporter, clock: FakeClock, tmp_path: Path
) -> None:
    heartbeat = tmp_path / "heartbeat"
    reporter.report(0, loss=1.0)
    os.utime(heartbeat, (0, 0))
    clock.now += 3600
    reporter.report(1, loss=1.0)
    assert time.time() - heartbeat.stat().st_mtime < 60


def test_a_buffered_report_lands_without_another_call(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    reporter = job.Reporter(metrics, tmp_path / "heartbeat", flush_interval_s=0.1)
    reporter.report(1, loss=1.0)
    reporter.report(2, loss=0.5)  # buffered: the last report before a long quiet spell
    deadline = time.monotonic() + 5
    while len(read_lines(metrics)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [r["step"] for r in read_lines(metrics)] == [1, 2]


def test_numpy_scalars_become_plain_numbers(reporter: job.Reporter, tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    reporter.report(np.int64(3), loss=np.float32(0.5), n=np.int64(7))
    reporter.flush()
    assert read_lines(tmp_path / "metrics.jsonl")[0] | {"time": 0} == {
        "step": 3, "time": 0, "loss": 0.5, "n": 7
    }  # fmt: skip


def test_a_metric_that_is_not_a_number_is_refused(reporter: job.Reporter) -> None:
    with pytest.raises(TypeError, match="'loss'"):
        reporter.report(1, loss=[1, 2])
    with pytest.raises(ValueError, match="time"):
        reporter.report(1, time=3)


def test_module_report_flushes_at_exit(tmp_path: Path) -> None:
    env = clean_env(
        SHEETRUNNER_METRICS_FILE=str(tmp_path / "m.jsonl"),
        SHEETRUNNER_HEARTBEAT_FILE=str(tmp_path / "hb"),
    )
    code = "from sheetrunner import job\nfor i in range(500): job.report(i, loss=1 / (i + 1))"
    run_python(code, tmp_path, env).check_returncode()
    assert [r["step"] for r in read_lines(tmp_path / "m.jsonl")] == list(range(500))
    assert (tmp_path / "hb").exists()


def test_run_by_hand_falls_back_to_a_local_directory(tmp_path: Path) -> None:
    code = (
        "from sheetrunner import job\njob.report(1, loss=0.5)\nprint(job.run_id(), job.attempt())"
    )
    result = run_python(code, tmp_path, clean_env())
    assert result.stdout.split() == ["local", "1"]
    local = tmp_path / "sheetrunner-local"
    assert read_lines(local / "metrics.jsonl")[0]["loss"] == 0.5
    assert (local / "heartbeat").exists()


def test_importing_the_library_does_not_import_torch(tmp_path: Path) -> None:
    code = "import sys\nimport sheetrunner.job\nprint('torch' in sys.modules)"
    assert run_python(code, tmp_path, clean_env()).stdout.strip() == "False"


def test_log_line_is_what_the_launcher_parses() -> None:
    assert job.log_line(10, loss=0.3) == 'SHEETRUNNER {"step": 10, "loss": 0.3}'


# --- context ---------------------------------------------------------------------


def test_context_reads_the_launcher_environment(tmp_path: Path) -> None:
    ctx = job.context({
        "SHEETRUNNER_RUN_ID": "r1",
        "SHEETRUNNER_ATTEMPT": "3",
        "SHEETRUNNER_ACCELERATORS": "0,1",
        "SHEETRUNNER_RUN_DIR": str(tmp_path / "3"),
        "SHEETRUNNER_CHECKPOINT_DIR": str(tmp_path / "ck"),
        "SHEETRUNNER_KEEP_CHECKPOINTS": "4",
        "SHEETRUNNER_BEST_METRIC": "loss",
        "SHEETRUNNER_BEST_MODE": "min",
    })  # fmt: skip
    assert (ctx.run_id, ctx.attempt, ctx.accelerators) == ("r1", 3, ["0", "1"])
    assert ctx.checkpoint_dir == tmp_path / "ck"
    assert ctx.metrics_file == tmp_path / "3" / "metrics.jsonl"
    assert (ctx.keep_checkpoints, ctx.best_metric, ctx.best_mode) == (4, "loss", "min")


def test_context_without_environment_is_local(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    ctx = job.context({})
    assert (ctx.run_id, ctx.attempt, ctx.accelerators) == ("local", 1, [])
    assert ctx.checkpoint_dir == tmp_path / "sheetrunner-local" / "checkpoints"
    assert (ctx.keep_checkpoints, ctx.best_metric, ctx.best_mode) == (2, None, "max")


@pytest.mark.parametrize(
    ("name", "value"),
    [("SHEETRUNNER_ATTEMPT", "x"), ("SHEETRUNNER_KEEP_CHECKPOINTS", "-1"),
     ("SHEETRUNNER_BEST_MODE", "maximum")],
)  # fmt: skip
def test_a_bad_variable_is_named_in_the_error(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        job.context({name: value})


# --- checkpoints -------------------------------------------------------------------

torch_mark = pytest.mark.torch


def ckpt_steps(directory: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in directory.glob("ckpt-*.pt"))


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(".tmp")]


@torch_mark
@pytest.mark.parametrize("mode", ["max", "min"])
def test_retention_keeps_the_last_k_and_the_best(job_env: Path, monkeypatch, mode: str) -> None:
    monkeypatch.setenv("SHEETRUNNER_KEEP_CHECKPOINTS", "3")
    monkeypatch.setenv("SHEETRUNNER_BEST_METRIC", "acc")
    monkeypatch.setenv("SHEETRUNNER_BEST_MODE", mode)
    for step in range(50):
        acc = 1 - abs(step - 7) / 50  # peaks at step 7
        job.save({"step": step}, step, metrics={"acc": acc if mode == "max" else -acc})
    assert ckpt_steps(job_env) == [7, 47, 48, 49]
    index = json.loads((job_env / "index.json").read_text())
    assert [e["step"] for e in index["checkpoints"]] == [7, 47, 48, 49]
    assert index["best_step"] == 7
    assert leftovers(job_env) == []


@torch_mark
def test_without_a_best_metric_exactly_k_remain(job_env: Path) -> None:
    for step in range(0, 500, 10):
        job.save({"step": step}, step, metrics={"acc": 0.5})
    assert ckpt_steps(job_env) == [480, 490]


@torch_mark
def test_keep_zero_still_keeps_the_resume_point(job_env: Path, monkeypatch) -> None:
    monkeypatch.setenv("SHEETRUNNER_KEEP_CHECKPOINTS", "0")
    for step in range(5):
        job.save({"step": step}, step)
    assert ckpt_steps(job_env) == [4]


@torch_mark
def test_latest_returns_the_newest_state_after_a_restart(job_env: Path) -> None:
    import torch

    assert job.latest() is None
    job.save({"w": torch.zeros(3)}, 10)
    job.save({"w": torch.ones(3), "epoch": 2}, 20)
    step, state = job.latest()  # stateless: reads the directory, as a new attempt would
    assert step == 20
    assert state["epoch"] == 2 and torch.equal(state["w"], torch.ones(3))
    assert job.load(job_env / "ckpt-00000020.pt")["epoch"] == 2


@torch_mark
def test_a_failed_save_leaves_no_temp_file_and_keeps_the_old_checkpoint(job_env: Path) -> None:
    job.save({"epoch": 1}, 1)
    with pytest.raises(Exception):  # noqa: B017 - whatever pickle raises for a lambda
        job.save({"epoch": 2, "bad": lambda: None}, 2)
    assert leftovers(job_env) == []
    assert job.latest() == (1, {"epoch": 1})


@torch_mark
def test_an_orphan_checkpoint_from_a_crash_is_cleaned_up(job_env: Path) -> None:
    for step in (1, 2):
        job.save({}, step)
    (job_env / "ckpt-00000000.pt").write_bytes(b"written before a crash lost its index entry")
    (job_env / ".tmp-ckpt-00000003.pt.123.abcd").write_bytes(b"half a save")
    job.save({}, 3)
    assert ckpt_steps(job_env) == [2, 3]
    assert leftovers(job_env) == []


def test_mark_done_is_seen_by_is_done(job_env: Path) -> None:
    assert not job.is_done()
    job.mark_done(epochs=5)
    assert job.is_done()
    assert json.loads((job_env / "DONE").read_text())["epochs"] == 5


def test_a_report_too_big_for_the_agent_is_trimmed_with_a_warning_in_the_log(
    reporter: job.Reporter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sheetrunner.remote.protocol import MAX_REPORT_KEYS, REPORT_LINE_BYTES

    reporter.report(1, loss=0.5, blob="x" * (REPORT_LINE_BYTES + 10), acc=0.9)
    reporter.report(2, **{f"m{i}": i for i in range(MAX_REPORT_KEYS + 50)})
    reporter.report(3, loss=0.25)
    reporter.flush()
    raw = (tmp_path / "metrics.jsonl").read_bytes().splitlines()
    assert all(len(line) <= REPORT_LINE_BYTES for line in raw)
    first, second, third = read_lines(tmp_path / "metrics.jsonl")
    assert (first["loss"], first["acc"], "blob" in first) == (0.5, 0.9, False)
    assert len(second) == MAX_REPORT_KEYS and second["step"] == 2 and "m0" in second
    assert third["loss"] == 0.25
    err = capsys.readouterr().err
    assert "step 1: 1 metric(s) left out ('blob')" in err
    assert "step 2: 52 metric(s) left out" in err and "step 3" not in err


def test_trim_warnings_stop_after_a_few(reporter: job.Reporter, capsys: pytest.CaptureFixture[str]) -> None:
    for step in range(10):
        reporter.report(step, blob="x" * 70000)
    assert capsys.readouterr().err.count("sheetrunner.job: report at step") == job.TRIM_WARNINGS
