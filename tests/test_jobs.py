"""The jobs in jobs/ as the launcher runs them: real subprocesses, the real environment contract.

Each run lives in a tmp directory laid out like a host's `<root>/runs/` (see
docs/remote-layout.md). The expensive runs are module-scoped and shared by
the tests that only look at their files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.torch

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "jobs" / "digits.py"
LOTTERY = REPO / "jobs" / "lottery.py"


class Run:
    """One run's directories on a pretend host; `attempt(n)` launches its n-th attempt."""

    def __init__(self, root: Path, run_id: str, script: Path, **env: str) -> None:
        self.root, self.run_id, self.script, self.env = root, run_id, script, env
        self.checkpoints = root / "runs" / run_id / "checkpoints"

    def attempt_dir(self, n: int) -> Path:
        return self.root / "runs" / self.run_id / str(n)

    def attempt(self, n: int, *args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(self.script), *args],
            cwd=self.root,
            env=self.environ(n, **env),
            capture_output=True,
            text=True,
            timeout=120,
        )

    def environ(self, n: int, **extra: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("SHEETRUNNER_")}
        attempt_dir = self.attempt_dir(n)
        attempt_dir.mkdir(parents=True)  # the launch lock, as the agent would take it
        return {
            **base,
            "CUDA_VISIBLE_DEVICES": "",
            "SHEETRUNNER_RUN_ID": self.run_id,
            "SHEETRUNNER_ATTEMPT": str(n),
            "SHEETRUNNER_RUN_DIR": str(attempt_dir),
            "SHEETRUNNER_CHECKPOINT_DIR": str(self.checkpoints),
            "SHEETRUNNER_METRICS_FILE": str(attempt_dir / "metrics.jsonl"),
            "SHEETRUNNER_HEARTBEAT_FILE": str(attempt_dir / "heartbeat"),
            "SHEETRUNNER_ACCELERATORS": "",
            "SHEETRUNNER_KEEP_CHECKPOINTS": "2",
            **self.env,
            **extra,
        }

    def metrics(self, n: int) -> list[dict]:
        path = self.attempt_dir(n) / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def epochs(self, n: int) -> list[dict]:
        return [r for r in self.metrics(n) if "epoch" in r]

    def checkpoint_steps(self) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in self.checkpoints.glob("ckpt-*.pt"))


def check(result: subprocess.CompletedProcess, code: int = 0) -> None:
    assert result.returncode == code, result.stdout + result.stderr


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory) -> Run:
    run = Run(tmp_path_factory.mktemp("host"), "digits-unbroken", DIGITS)
    check(run.attempt(1))
    return run


@pytest.fixture(scope="module")
def resumed(tmp_path_factory) -> Run:
    """Attempt 1 dies right after the checkpoint of epoch 2; attempt 2 finishes the run."""
    run = Run(tmp_path_factory.mktemp("host"), "digits-resumed", DIGITS)
    crash = {"SHEETRUNNER_TEST_CRASH_AT_EPOCH": "2"}
    check(run.attempt(1, **crash), code=3)
    check(run.attempt(2, **crash))
    return run


def test_digits_learns(unbroken: Run) -> None:
    epochs = unbroken.epochs(1)
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4, 5]
    assert epochs[-1]["acc"] > 0.8
    assert any("loss" in r for r in unbroken.metrics(1))
    assert (unbroken.attempt_dir(1) / "heartbeat").exists()


def test_digits_keeps_the_last_k_checkpoints(unbroken: Run) -> None:
    last_two = [r["step"] for r in unbroken.epochs(1)[-2:]]
    assert unbroken.checkpoint_steps() == last_two
    assert (unbroken.checkpoints / "DONE").exists()
    assert not list(unbroken.checkpoints.glob(".tmp*"))


def test_a_restarted_attempt_resumes_after_the_last_checkpoint(resumed: Run) -> None:
    first, second = resumed.epochs(1), resumed.epochs(2)
    assert [r["epoch"] for r in first] == [1, 2]
    assert [r["epoch"] for r in second] == [3, 4, 5]
    assert min(r["step"] for r in resumed.metrics(2)) > first[-1]["step"]


def test_a_resumed_run_ends_where_an_unbroken_one_does(unbroken: Run, resumed: Run) -> None:
    # Batch order and weights continue exactly: same steps and same accuracy per epoch.
    resumed_epochs = resumed.epochs(1) + resumed.epochs(2)
    assert [r["step"] for r in resumed_epochs] == [r["step"] for r in unbroken.epochs(1)]
    assert [r["acc"] for r in resumed_epochs] == pytest.approx(
        [r["acc"] for r in unbroken.epochs(1)], abs=1e-6
    )


def test_a_finished_run_restarted_exits_at_once(resumed: Run) -> None:
    before = resumed.checkpoint_steps()
    result = resumed.attempt(3)
    check(result)
    assert "already done" in result.stdout
    assert resumed.metrics(3) == []
    assert resumed.checkpoint_steps() == before


def sparsity_by_round(run: Run, *attempts: int) -> dict[int, float]:
    return {r["round"]: r["sparsity"] for n in attempts for r in run.metrics(n) if "round" in r}


def test_lottery_prunes_on_schedule(tmp_path: Path) -> None:
    run = Run(tmp_path, "lottery", LOTTERY)
    check(run.attempt(1, "--rounds", "3", "--prune-fraction", "0.2", "--rewind-step", "5"))
    sparsity = sparsity_by_round(run, 1)
    assert list(sparsity) == [0, 1, 2, 3]
    for round_, value in sparsity.items():
        assert value == pytest.approx(1 - 0.8**round_, abs=1e-3)
    accs = [r["acc"] for r in run.metrics(1) if "round" in r]
    assert len(accs) == 4 and all(0.3 < acc <= 1 for acc in accs)


def test_lottery_resumes_at_the_next_round(tmp_path: Path) -> None:
    run = Run(tmp_path, "lottery-resumed", LOTTERY)
    args = ("--arch", "mlp", "--width", "64", "--epochs", "1", "--rounds", "3")
    crash = {"SHEETRUNNER_TEST_CRASH_AT_ROUND": "1"}
    check(run.attempt(1, *args, **crash), code=3)
    check(run.attempt(2, *args, **crash))
    assert list(sparsity_by_round(run, 1)) == [0, 1]
    assert sparsity_by_round(run, 2) == pytest.approx({2: 1 - 0.8**2, 3: 1 - 0.8**3}, abs=1e-3)
