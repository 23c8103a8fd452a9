"""Shared GPUs and argv styles end to end, over real sshd hosts with fake GPUs: two sheets
with their own daemons never run on one GPU at once (checked from the job's side), a GPU
without enough free memory is skipped, and the argv styles reach the job as documented."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import tomli_w
from helpers import guard_report, read_workbook, write_workbook

from sheetrunner.config import load
from sheetrunner.daemon import Daemon, build
from sheetrunner.views import pool_json

try:
    from tests.sshd import SshdLab, sshd_lab_module  # noqa: F401  (a fixture)
except ImportError:
    from sshd import SshdLab, sshd_lab_module  # noqa: F401

pytestmark = pytest.mark.sshd
FAKE_JOB = Path(__file__).resolve().parent / "jobs" / "fake_job.py"


def sheet_daemon(dir: Path, lab: SshdLab, host: dict, header: list, rows: list[list],
                 env: dict | None = None) -> Daemon:
    """A sheet of its own (workbook, config, state directory) with one fake host."""
    dir.mkdir()
    write_workbook(dir / "experiments.xlsx", header, rows)
    fake = lab.hosts[host["name"]]
    host = {**host, "address": fake.address, "port": fake.port, "user": fake.user,
            "root": str(fake.root_dir), "identity": str(lab.client_key), "python": sys.executable}
    raw = {
        "sheet": {"path": "experiments.xlsx"},
        "daemon": {"poll_interval": 0.5, "state_dir": "state"},
        "defaults": {"retries": 0, "backoff": 0.5, "launch_timeout": 10},
        "jobs": {"fake": {"command": ["{python}", str(FAKE_JOB)], "env": env or {}}},
        "hosts": [host],
        "ssh": {"known_hosts": str(lab.known_hosts), "config_file": str(dir / "no-ssh-config"),
                "connect_timeout": 3},
    }
    (dir / "sheetrunner.toml").write_text(tomli_w.dumps(raw))
    return build(load(dir / "sheetrunner.toml"))


def until(daemon: Daemon, done, cycles: int = 100) -> None:
    for _ in range(cycles):
        daemon.cycle()
        if done():
            return
    raise AssertionError(f"not done after {cycles} cycles: {statuses(daemon)}")


def statuses(daemon: Daemon) -> list[str]:
    return [r.get("status") for r in read_workbook(daemon.config.sheet.path)]


def test_two_sheets_take_turns_on_one_gpu(tmp_path, sshd_lab_module):
    sshd_lab_module.add_host("one-gpu", gpus=1)
    host = {"name": "one-gpu", "accelerators": "auto", "gpu_claims": str(tmp_path / "claims")}
    guard = tmp_path / "guard"
    release = tmp_path / "release"  # a's job runs until the test has looked
    header = ["job", "--tag", "--steps", "--sleep", "--wait-for"]
    a, b = (sheet_daemon(tmp_path / name, sshd_lab_module, host, header,
                         [["fake", "gpu0", 1, 0.1, wait]], {"FAKE_GUARD_DIR": str(guard)})
            for name, wait in (("a", str(release)), ("b", None)))
    try:
        b.cycle()  # the first cycle only takes the sheet's lease
        until(a, lambda: statuses(a) == ["launching"])
        b.cycle()  # its probe shows a's claim: it waits
        assert statuses(a) == ["launching"] and statuses(b) == ["queued"]
        (first,) = a.store.runs().values()
        entry = pool_json(list(b.config.hosts), b.pool.last, [], {}, namespace=b.pool.namespace)
        (gpu,) = entry[0]["accelerators"]
        assert gpu["claim"] == {"namespace": a.pool.namespace, "run_id": first.run_id,
                                "user": sshd_lab_module.user, "this_sheet": False}
        assert gpu["holder"].startswith(f"another sheet: run {first.run_id}")

        # Both saw the GPU free in the same minute: the host refuses the second launch.
        agent = b.pool.agents["one-gpu"]
        spec = {"run_id": "0badc0de-zz9999", "attempt": 1, "argv": [sys.executable, "-c", "0"],
                "env": {}, "accelerators": ["0"], "gpu_claims": host["gpu_claims"]}
        refused = agent.launch(spec)
        assert refused.refused and f"GPU 0 is claimed by run {first.run_id}" in refused.detail
        assert not list(Path(agent.ns_root()).glob("hosts/*/runs/0badc0de-zz9999"))
        release.touch()

        for _ in range(200):
            a.cycle()
            b.cycle()
            if statuses(a) == statuses(b) == ["succeeded"]:
                break
        assert statuses(a) == statuses(b) == ["succeeded"]
        assert guard_report(guard) == ({"gpu0": 2}, [])  # both ran, never at once
        (first,), (second,) = a.store.runs().values(), b.store.runs().values()
        assert second.crashes == 0 and second.started_at > first.started_at
    finally:
        a.close()
        b.close()


def test_memory_thresholds_and_argv_styles_reach_the_job(tmp_path, sshd_lab_module):
    fake = sshd_lab_module.add_host("two-gpus", gpus=2)
    fake.set_gpu_memory_used(0, 70 * 1024)  # another user's, not listed: only memory tells
    host = {"name": "two-gpus", "accelerators": "auto", "min_free_memory": "20GiB",
            "gpu_claims": str(tmp_path / "claims")}
    header = ["job", "--steps", "--amp", "--quiet", "optimizer.lr=", "--milestones", "--echo",
              "gpu_memory"]
    rows = [["fake", 1, True, False, 0.1, '"30,60,90"', "x", None],
            ["fake", 1, None, None, None, None, None, "100GiB"]]
    daemon = sheet_daemon(tmp_path / "sheet", sshd_lab_module, host, header, rows)
    try:
        until(daemon, lambda: statuses(daemon)[0] == "succeeded")
        done, big = read_workbook(daemon.config.sheet.path)
        assert done["status"] == "succeeded"
        assert big["status"] == "unplaceable" and "needs 100GiB free memory" in big["message"]
        run = next(r for r in daemon.store.runs().values() if r.run_id == done["id"])
        assert run.accelerators == ("1",)  # GPU 0 has 10 GiB free: skipped
        log = Path(run.seen.log_path).read_text()
        echoed = json.loads(log.split("ECHO ", 1)[1].splitlines()[0])
        assert echoed["argv"] == ["--steps", "1", "--amp", "optimizer.lr=0.1",
                                  "--milestones", "30,60,90", "--echo", "x"]
    finally:
        daemon.close()
