"""Slurm: sbatch -> running latency and the cost of one status query at 1,000 jobs.

    python bench/run.py slurm

Starts the tests' real single-node Slurm (tests/slurm_cluster.py; needs root and
scripts/install-slurm.sh) and measures, through `SlurmAgent` as the daemon uses it:

- latency: submit one attempt (`launch_many`, the agent's `slurm-submit`) and probe every
  50 ms until the probe reports it `running` (baseline: a plain `sbatch --wrap` polled
  with `squeue` in the same run);
- submissions: 20 attempts in one `launch_many` call against one `sbatch --array=0-19`;
- the probe (`slurm-probe`: one squeue, parsing, the attempt files) with 0 and with
  1,000 of this namespace's jobs in the controller (real jobs, submitted held with
  `--hold`, so they stay listed; not simulated).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT), str(ROOT / "tests")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from sheetrunner.config_clusters import ClusterConfig  # noqa: E402
from sheetrunner.pool.local import LocalTransport  # noqa: E402
from sheetrunner.pool.slurm import SlurmAgent  # noqa: E402
from sheetrunner.remote.protocol import new_namespace, new_run_id  # noqa: E402

SPEC_ARGV = [sys.executable, "-c", "print('SHEETRUNNER {\"step\": 1}')"]


def _line(name: str, base: float, value: float, note: str = "") -> None:
    print(f"  {name:<44} {value * 1e3:9.2f} ms   x{value / base:6.2f} of baseline  {note}")


def _spec(run_id: str, attempt: int = 1) -> dict:
    return {
        "run_id": run_id,
        "attempt": attempt,
        "key": "0" * 16,
        "job": "bench",
        "params": [],
        "gpus": 1,
        "argv": SPEC_ARGV,
        "env": {},
        "workdir": "/tmp",
        "accelerators": [],
    }


def _until(check, timeout_s: float = 60.0, step_s: float = 0.05) -> float:
    start = time.perf_counter()
    while not check():
        if time.perf_counter() - start > timeout_s:
            raise TimeoutError("no answer from the test cluster")
        time.sleep(step_s)
    return time.perf_counter() - start


def bench_slurm() -> None:
    from slurm_cluster import SlurmCluster, slurm_installed

    if not slurm_installed() or os.geteuid() != 0:
        print("slurm: needs Slurm installed (scripts/install-slurm.sh) and root; skipped")
        return
    with tempfile.TemporaryDirectory() as tmp:
        cluster = SlurmCluster(Path(tmp) / "slurm")
        cluster.start()
        try:
            _measure(cluster, Path(tmp))
        finally:
            cluster.stop()


def _measure(cluster, tmp: Path) -> None:
    config = ClusterConfig(
        name="ci",
        partition="gpu",
        root=str(tmp / "shared"),
        local=True,
        python=sys.executable,
        slurm_conf=str(cluster.conf),
    )
    agent = SlurmAgent(config, LocalTransport("ci"))
    agent.namespace = new_namespace()
    agent.probe([], [])  # uploads the agent once
    print("slurm: a real single-node cluster (tests/slurm_cluster.py), 1 s scheduler passes")

    def plain_latency() -> float:
        job = cluster.run("sbatch", "--parsable", "--gres=gpu:1", "--wrap", "sleep 1").strip()
        took = _until(
            lambda: (
                cluster.run("squeue", "-h", "-j", job, "-o", "%T").strip()
                in ("RUNNING", "COMPLETING", "COMPLETED", "")
            )
        )
        cluster.run("scancel", job)
        return took

    def ours_latency() -> float:
        run_id = new_run_id("ab" * 8)
        start = time.perf_counter()
        agent.launch_many([(_spec(run_id), None)])

        def running() -> bool:
            seen = agent.probe([(run_id, 1)], [])["attempts"]
            return any(a["run_id"] == run_id and a["state"] in ("running", "exited") for a in seen)

        _until(running)
        return time.perf_counter() - start

    plain = statistics.median(plain_latency() for _ in range(5))
    ours = statistics.median(ours_latency() for _ in range(5))
    _line("sbatch -> RUNNING in squeue (baseline)", plain, plain, "median of 5")
    _line("launch_many -> probe says running", plain, ours, "median of 5, polled every 50 ms")

    ids = [new_run_id("cd" * 8) for _ in range(20)]
    start = time.perf_counter()
    agent.launch_many([(_spec(r), None) for r in ids])
    batched = time.perf_counter() - start
    start = time.perf_counter()
    cluster.run("sbatch", "--parsable", "--array=0-19", "--gres=gpu:1", "--wrap", "true")
    array = time.perf_counter() - start
    _line("20 submissions: one sbatch --array (baseline)", array, array)
    _line("20 submissions: one launch_many call", array, batched, "20 sbatch, files written")
    cluster.run("scancel", "--me")
    _until(lambda: not cluster.run("squeue", "-h", "-t", "PD,R,CG").strip(), 60)

    empty = statistics.median(_probe_time(agent) for _ in range(5))
    _line("probe, no jobs (baseline)", empty, empty)
    names = [f"--job-name=sr.{agent.namespace}.{new_run_id('ef' * 8)}.1" for _ in range(1000)]
    start = time.perf_counter()
    for name in names:
        cluster.run("sbatch", "--hold", "--parsable", name, "--wrap", "true")
    per_sbatch = (time.perf_counter() - start) / len(names)
    squeue = statistics.median(
        _timed(lambda: cluster.run("squeue", "--me", "-h", "-t", "all")) for _ in range(5)
    )
    full = statistics.median(_probe_time(agent) for _ in range(5))
    _line("squeue, 1,000 held jobs (real)", empty, squeue)
    _line(
        "probe, 1,000 held jobs of the sheet (real)",
        empty,
        full,
        f"one sbatch call: {per_sbatch * 1e3:.1f} ms",
    )
    cluster.run("scancel", "--me")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _probe_time(agent: SlurmAgent) -> float:
    return _timed(lambda: agent.probe([], []))
