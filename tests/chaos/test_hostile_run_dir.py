"""A job may write anything into its attempt directory: the probe of its host must not care.

Two live attempts on one host (real `sleep` jobs started through the agent's launch); the
files of ONE of them are replaced at random, round after round, by random bytes, empty
files, huge sparse files, long lines, deep JSON, directories, FIFOs and symlinks to files
outside the root. After every round the probe exits 0, answers for the other attempt
(running), stays small, leaks nothing a symlink points at, and nothing outside the root
changed. Fixed seed; CI-sized by default, `SHEETRUNNER_FUZZ=1` (or a number of rounds)
for a long run.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sheetrunner.config import HostConfig
from sheetrunner.pool.hosts import HostAgent, observation_from_probe
from sheetrunner.pool.local import LocalTransport

NS = "testns000004"
FILES = (
    "pid",
    "exit_code",
    "spec.json",
    "heartbeat",
    "metrics.jsonl",
    "metrics.summary.json",
    "output.log",
    "stop",
    "lost",
)
SECRET = "s3cr3t-outside-the-root"
ANSWER_BOUND = 256 * 1024
SEED = 20240611


def rounds() -> int:
    raw = os.environ.get("SHEETRUNNER_FUZZ", "")
    if not raw:
        return 30
    return 1000 if raw == "1" else int(raw)


def rid(tag: str) -> str:
    return f"0000000{len(tag) % 10}-{tag}"


@pytest.fixture
def agent(tmp_path: Path) -> HostAgent:
    host = HostConfig(name="local", local=True, root=str(tmp_path / "root"), python=sys.executable)
    return HostAgent(host, LocalTransport("local"), namespace=NS)


def attempt_dir(agent: HostAgent, run_id: str) -> Path:
    return Path(agent.config.root) / NS / "hosts" / agent.name / "runs" / run_id / "1"


def start_sleeper(agent: HostAgent, run_id: str) -> int:
    """A job that writes nothing (it must not itself write through what the test plants);
    returns its pid once the agent reports it running."""
    spec = {
        "run_id": run_id,
        "attempt": 1,
        "argv": ["sleep", "600"],
        "env": {},
        "workdir": None,
        "accelerators": [],
    }
    assert agent.launch(spec).launched
    deadline = time.monotonic() + 15
    while state_of(agent.probe({(run_id, 1)}), run_id) != "running":
        assert time.monotonic() < deadline, "the job never ran"
        time.sleep(0.05)
    return int((attempt_dir(agent, run_id) / "pid").read_text().split()[0])


def state_of(answer: dict, run_id: str) -> str | None:
    found = [a["state"] for a in answer["attempts"] if a["run_id"] == run_id]
    return found[0] if found else None


def outside_snapshot(tmp_path: Path) -> dict:
    """Everything under tmp_path but the root, and /etc/passwd: what a symlink could reach."""
    seen = {}
    for path in [*tmp_path.rglob("*"), Path("/etc/passwd")]:
        if path.is_relative_to(tmp_path / "root"):
            continue
        info = path.lstat()
        content = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        seen[str(path)] = (info.st_mode, info.st_size, info.st_mtime_ns, content)
    return seen


def decoys(tmp_path: Path) -> dict[str, Path]:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET + "\n")
    (outside / "summary.json").write_text(json.dumps({"source": SECRET}))
    (outside / "dir").mkdir()
    (outside / "dir" / "inside").write_text(SECRET)
    return {
        "secret": outside / "secret.txt",
        "summary": outside / "summary.json",
        "dir": outside / "dir",
        "passwd": Path("/etc/passwd"),
        "dangling": outside / "nothing-here",
    }


def clear(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def random_json(rng: random.Random, depth: int = 0):
    kinds = ["int", "float", "str", "null", "bool"] + (["list", "dict"] if depth < 4 else [])
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.choice([0, -1, 1, 2**31, -(2**63), 10**30])
    if kind == "float":
        return rng.choice([0.5, -1e308, 1e308, float("inf"), float("nan")])
    if kind == "str":
        return rng.choice(["", "running", "x" * rng.randint(0, 5000), "\u0000\udcff", "../.."])
    if kind in ("null", "bool"):
        return rng.choice([None, True, False])
    if kind == "list":
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    return {
        rng.choice(
            [
                "source",
                "offset",
                "min",
                "max",
                "history",
                "stride",
                "seen",
                "skipped",
                "skipping",
                "argv",
                "params",
                "key",
            ]
        ): random_json(rng, depth + 1)
        for _ in range(rng.randint(0, 8))
    }


def plant(rng: random.Random, path: Path, targets: dict[str, Path]) -> str:
    """Replace one file of the hostile attempt; returns what was planted, for a failure."""
    clear(path)
    kind = rng.choice(
        [
            "bytes",
            "empty",
            "sparse",
            "lines",
            "deep",
            "json",
            "directory",
            "fifo",
            "symlink",
            "long-line",
            "pid-like",
        ]
    )
    if kind == "bytes":
        path.write_bytes(rng.randbytes(rng.randint(1, 4096)))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "sparse":
        with open(path, "wb") as f:
            f.truncate(rng.choice([65537, 5 << 20, 3 << 30]))
    elif kind == "lines":
        line = json.dumps({f"k{i}": rng.random() for i in range(rng.choice([3, 300, 3000]))})
        path.write_text((line + "\n") * rng.randint(1, 200))
    elif kind == "deep":
        path.write_text("[" * rng.randint(1000, 200_000))
    elif kind == "json":
        path.write_text(json.dumps(random_json(rng)))
    elif kind == "directory":
        path.mkdir()
        (path / "x").write_text("inside")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        name = rng.choice(sorted(targets))
        path.symlink_to(targets[name])
        kind += "->" + name
    elif kind == "long-line":
        path.write_bytes(b'SHEETRUNNER {"a": "' + b"z" * rng.choice([70_000, 2_000_000]))
    else:
        path.write_text(
            " ".join(
                str(rng.choice([os.getpid(), 1, 0, -5, 2**70, "None", "x"]))
                for _ in range(rng.randint(1, 6))
            )
        )
    return kind


def probe(agent: HostAgent, wanted: list[list]) -> subprocess.CompletedProcess:
    args = agent.argv(["probe", agent.ns_root(), agent.name])
    return subprocess.run(
        args, input=json.dumps({"attempts": wanted}).encode(), capture_output=True, timeout=60
    )


def check_round(agent, wanted, before, tmp_path, what) -> dict:
    done = probe(agent, wanted)
    assert done.returncode == 0, (what, done.stderr[-2000:])
    assert len(done.stdout) < ANSWER_BOUND, (what, len(done.stdout))
    assert SECRET.encode() not in done.stdout, what
    answer = json.loads(done.stdout)
    assert state_of(answer, rid("calm")) == "running", (what, answer)
    assert outside_snapshot(tmp_path) == before, what
    observation_from_probe("local", answer, __import__("datetime").datetime.now())
    return answer


def test_random_junk_in_one_attempt_never_breaks_the_probe_or_the_other_attempt(agent, tmp_path):
    targets = decoys(tmp_path)
    calm_pid = start_sleeper(agent, rid("calm"))
    wild_pid = start_sleeper(agent, rid("wild"))
    wild = attempt_dir(agent, rid("wild"))
    wanted = [[rid("calm"), 1], [rid("wild"), 1]]
    before = outside_snapshot(tmp_path)
    rng = random.Random(SEED)
    try:
        for number in range(rounds()):
            planted = [
                (name, plant(rng, wild / name, targets))
                for name in rng.sample(FILES, rng.randint(1, 4))
            ]
            answer = check_round(agent, wanted, before, tmp_path, (number, planted))
            assert state_of(answer, rid("wild")) in ("starting", "running", "exited", "lost")
    finally:
        for pid in (wild_pid, calm_pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass


def test_planted_symlinks_are_neither_read_nor_written_through(agent, tmp_path):
    targets = decoys(tmp_path)
    start_sleeper(agent, rid("calm"))
    wild_pid = start_sleeper(agent, rid("wild"))
    wild = attempt_dir(agent, rid("wild"))
    before = outside_snapshot(tmp_path)
    try:
        for name, target in [
            ("pid", "passwd"),
            ("output.log", "secret"),
            ("lost", "dangling"),
            ("metrics.summary.json", "summary"),
            ("metrics.jsonl", "secret"),
            ("spec.json", "summary"),
            ("stop", "dangling"),
        ]:
            clear(wild / name)
            (wild / name).symlink_to(targets[target])
        answer = check_round(agent, [[rid("calm"), 1], [rid("wild"), 1]], before, tmp_path, "links")
        (seen,) = [a for a in answer["attempts"] if a["run_id"] == rid("wild")]
        # (the pid file is read only when the supervisor is gone: here it still watches the job)
        assert (
            "spec.json is a symlink" in seen["damaged"]
            and "output.log is a symlink" in seen["damaged"]
        )
        # whatever the job did to its own attempt (a planted `stop` ends it), it is only its own
        assert seen["state"] in ("starting", "lost", "running", "exited")
        assert seen["summary"]["min"] == {}
        if seen["state"] == "lost":
            assert "damaged: " in seen["log_tail"]
        clear(wild / "exit_code")
        (wild / "exit_code").symlink_to(targets["passwd"])
        agent.kill(rid("wild"), 1, grace_s=1)  # writes `stop`: over the link, never through it
        check_round(agent, [[rid("calm"), 1], [rid("wild"), 1]], before, tmp_path, "exit_code")
        assert not (wild / "stop").is_symlink()
    finally:
        try:
            os.killpg(wild_pid, signal.SIGKILL)
        except OSError:
            pass  # already ended by the kill above
        agent.kill(rid("calm"), 1, grace_s=1)
