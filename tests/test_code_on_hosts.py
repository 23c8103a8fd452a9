"""Code, setups and disks on real sshd hosts: `sync`, `setup`, `env`, `gc`, `min_free_disk`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import openpyxl
import pytest
import tomli_w
from helpers import FAKE_JOB, cycle_until, kill_jobs_under, read_workbook, write_workbook

from sheetrunner import disk_gc, host_prep, views
from sheetrunner.config import load
from sheetrunner.daemon import Daemon, build
from sheetrunner.sheet.schema import OWNED_COLUMNS

try:
    from tests.sshd import FakeHost, SshdLab, sshd_lab_module  # noqa: F401  (a fixture)
except ImportError:
    from sshd import FakeHost, SshdLab, sshd_lab_module  # noqa: F401

pytestmark = pytest.mark.sshd

TRAIN = """\
import os, sys, time
wait_for = sys.argv[sys.argv.index("--wait") + 1]  # a file the test creates: no fixed sleep
while wait_for != "-" and not os.path.exists(wait_for):
    time.sleep(0.05)
with open(os.path.join(os.environ["SHEETRUNNER_RUN_DIR"], "ran.txt"), "w") as out:
    out.write(open("version.txt").read().strip() + " " + os.environ["FLAG"])
"""
COUNT = "import os, sys; open(sys.argv[1], 'a').write(os.path.basename(os.getcwd()) + chr(10))"
FAIL = "import sys; open(sys.argv[1], 'a').write('x' + chr(10)); print('boom: no such wheel'); sys.exit(3)"


@pytest.fixture(scope="module")
def host(sshd_lab_module: SshdLab) -> FakeHost:
    return sshd_lab_module.add_host("gpu-a", gpus=0)


def make_daemon(tmp: Path, lab: SshdLab, raw: dict) -> Daemon:
    fake = lab.hosts["gpu-a"]
    raw["hosts"] = [{
        "name": "gpu-a", "address": fake.address, "port": fake.port, "user": fake.user,
        "root": str(fake.root_dir), "identity": str(lab.client_key), "python": sys.executable,
        "accelerators": 0, "slots": 4, **raw.get("host", {}),
    }]
    raw.pop("host", None)
    raw["ssh"] = {"known_hosts": str(lab.known_hosts), "config_file": str(tmp / "no-ssh-config"),
                  "connect_timeout": 3, "keepalive": 2}
    raw["daemon"] = {"poll_interval": 1, "state_dir": "state"}
    raw["sheet"] = {"path": "experiments.xlsx"}
    raw["defaults"] = {"retries": 0, "launch_timeout": 20}
    (tmp / "sheetrunner.toml").write_text(tomli_w.dumps(raw))
    return build(load(tmp / "sheetrunner.toml"))


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True, env={**os.environ, "GIT_AUTHOR_NAME": "t",
                                           "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                                           "GIT_COMMITTER_EMAIL": "t@t"})
    return done.stdout.strip()


def add_row(path: Path, cells: dict) -> None:
    book = openpyxl.load_workbook(path)
    sheet = book.worksheets[0]
    header = [c.value for c in sheet[1]]
    sheet.append([cells.get(h) for h in header])
    book.save(path)


def by_job(rows: list[dict], job: str) -> list[dict]:
    return [r for r in rows if r["job"] == job]


def test_synced_code_setups_and_env_on_a_host(tmp_path, sshd_lab_module, host):
    code = tmp_path / "code"
    (code / "lib").mkdir(parents=True)
    (code / "train.py").write_text(TRAIN)
    (code / "version.txt").write_text("v1\n")
    (code / "lib" / "util.py").write_text("X = 1\n")
    (code / ".gitignore").write_text("big.bin\n")
    (code / "big.bin").write_bytes(b"\0" * 100_000)  # ignored: never uploaded
    git(code, "init", "-q")
    git(code, "add", ".")
    git(code, "commit", "-q", "-m", "first")
    commit = git(code, "rev-parse", "HEAD")
    setups, failures = tmp_path / "setups.log", tmp_path / "failures.log"
    release = tmp_path / "release"
    raw = {
        "jobs": {
            "train": {"command": ["{python}", "train.py"], "sync": "code",
                      "env": {"FLAG": "job"},
                      "setup": ["{python}", "-c", COUNT, str(setups)]},
            "broken": {"command": ["{python}", "train.py"],  # not synced: one setup key
                       "setup": [sys.executable, "-c", FAIL, str(failures)]},
        },
        "host": {"env": {"FLAG": "host"}},
    }
    write_workbook(tmp_path / "experiments.xlsx", ["job", "gpus", "--wait", "pin", *OWNED_COLUMNS],
                   [["train", 0, str(release)], ["broken", 0, "-"]])
    daemon = make_daemon(tmp_path, sshd_lab_module, raw)
    sheet = daemon.config.sheet.path
    try:
        rows = cycle_until(daemon, lambda rows: rows[0]["status"] == "running", 30)
        assert daemon.prep.uploader.uploaded["gpu-a"] == 4  # what git tracks, not big.bin
        assert rows[0]["code"] == commit[:7]
        assert setups.read_text().count("\n") == 1

        (code / "version.txt").write_text("v2\n")  # edited while row 1 runs: now dirty
        (code / "notes.txt").write_text("untracked, not ignored: uploaded\n")
        add_row(sheet, {"job": "train", "gpus": 0, "--wait": "-"})
        add_row(sheet, {"job": "train", "gpus": 0, "--wait": str(tmp_path), "pin": commit[:7]})
        daemon.cycle()
        release.write_text("")
        rows = cycle_until(daemon, lambda rows: rows[0]["status"] == "succeeded"
                           and rows[2]["status"] == rows[3]["status"] == "succeeded", 40)
        assert daemon.prep.uploader.uploaded["gpu-a"] == 6  # only the edited and the new file
        assert [rows[0]["code"], rows[2]["code"], rows[3]["code"]] == [
            commit[:7], commit[:7] + "+dirty", commit[:7]]
        runs = daemon.store.runs()
        ran = [(Path(runs[r["id"]].seen.log_path).parent / "ran.txt").read_text()
               for r in (rows[0], rows[2], rows[3])]
        # The running one kept its code, the new one got the edit, the one pinned to the first
        # commit ran the first version (the tree holds only v2 now); host env won.
        assert ran == ["v1 host", "v2 host", "v1 host"]
        agent = daemon.pool.agents["gpu-a"]  # a host that lost v1 gets it from the state dir
        ns_root = Path(agent.ns_root())
        v1 = daemon.prep.kept.find(commit[:7])
        subprocess.run(["rm", "-rf", str(ns_root / "code" / v1.hash), str(ns_root / "code" / "objects")],
                       check=True)
        daemon.prep.uploader.present.clear()
        rebuilt = daemon.prep.uploader.ensure(agent, v1, daemon.prep.source(daemon.config.jobs["train"], v1))
        assert (Path(rebuilt) / "version.txt").read_text() == "v1\n"
        assert daemon.prep.uploader.uploaded["gpu-a"] == 6 + 4
        spec = json.loads((Path(runs[rows[2]["id"]].seen.log_path).parent / "spec.json")
                          .read_text())
        assert spec["code"]["commit"] == commit and spec["code"]["dirty"] is True
        assert Path(spec["workdir"]).name == spec["code"]["hash"]
        assert not (Path(spec["workdir"]) / "big.bin").exists()
        assert (Path(spec["workdir"]) / "notes.txt").exists()
        listed = {e["id"]: e for e in views.ps_entries(runs.values(), [])}
        assert listed[rows[2]["id"]]["code"] == commit[:7] + "+dirty"
        assert setups.read_text().count("\n") == 2  # once per code version, not per launch

        broken = by_job(rows, "broken")[0]
        assert broken["status"] == "queued"
        assert "setup failed" in broken["message"] and "boom" in broken["message"]
        assert failures.read_text().count("\n") == 1  # not retried every cycle
        entries = views.pool_json(list(daemon.config.hosts), daemon.pool.last, list(runs.values()),
                                  {}, setups=host_prep.load(daemon.config.daemon.state_dir))
        states = {s["job"]: s["state"] for s in entries[0]["setups"]}
        assert states["broken"] == "failed"
        assert "setup of broken failed: boom" in views.pool_rows(entries)[1][1]

        host_prep.ask_retry(daemon.config.daemon.state_dir, ["gpu-a"])
        daemon.cycle()
        deadline = time.monotonic() + 10
        while failures.read_text().count("\n") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert failures.read_text().count("\n") == 2  # asked: tried again, once
    finally:
        daemon.close()


def test_gc_frees_what_it_says_and_a_full_disk_takes_no_runs(tmp_path, sshd_lab_module, host):
    code = tmp_path / "code"
    code.mkdir()
    (code / "job.py").write_bytes(FAKE_JOB.read_bytes())
    (code / ".sheetrunnerignore").write_text("data/\n*.tmp\n")
    (code / "data").mkdir()
    (code / "data" / "huge").write_bytes(b"\0" * 50_000)
    raw = {"jobs": {"fake": {"command": ["{python}", "job.py"], "sync": "code"}}}
    write_workbook(tmp_path / "experiments.xlsx", ["job", "gpus", "--steps", "--sleep", *OWNED_COLUMNS],
                   [["fake", 0, 1, 0], ["fake", 0, 2, 0], ["fake", 0, 200, 0.1]])
    daemon = make_daemon(tmp_path, sshd_lab_module, raw)
    try:
        rows = cycle_until(daemon, lambda rows: rows[0]["status"] == rows[1]["status"]
                           == "succeeded" and rows[2]["status"] == "running", 40)
        assert daemon.prep.uploader.uploaded["gpu-a"] == 2  # job.py, .sheetrunnerignore
        runs = daemon.store.runs()
        a, b, c = (runs[r["id"]] for r in rows)
        agent = daemon.pool.agents["gpu-a"]
        ns_root = Path(agent.ns_root())
        run_dir = {r.run_id: Path(r.seen.log_path).parent.parent for r in (a, b, c)}
        for run in (a, b):  # checkpoints the jobs could have left
            (ns_root / "checkpoints" / run.run_id).mkdir(parents=True, exist_ok=True)
            (ns_root / "checkpoints" / run.run_id / "step.pt").write_bytes(b"w" * 7000)
        b.link.released = True  # its row was deleted: its checkpoints may go
        daemon.store.save_runs([b], now=b.updated_at)
        v1 = daemon.versions["fake"].hash
        (code / "job.py").write_text("print('v2')\n")  # an unused version on the host
        v2 = daemon.prep.versions()["fake"]
        daemon.prep.uploader.ensure(agent, v2, daemon.prep.trees[code.resolve()])
        v2_dir = ns_root / "code" / v2.hash
        v2_blob = ns_root / "code" / "objects" / v2.files[1].blob
        assert v2.files[1].path == "job.py"

        expected = sum(size(p) for p in (run_dir[a.run_id], run_dir[b.run_id],
                                        ns_root / "checkpoints" / b.run_id, v2_dir, v2_blob))
        later = a.finished_at + timedelta(days=31)
        dry = disk_gc.collect(daemon.config, daemon.pool, daemon.store, daemon.archive, later,
                              current_code=[v1], dry_run=True)
        assert dry[0].freed_bytes == expected and run_dir[a.run_id].exists()
        done = disk_gc.collect(daemon.config, daemon.pool, daemon.store, daemon.archive, later,
                               current_code=[v1])
        assert done[0].freed_bytes == expected
        assert not run_dir[a.run_id].exists() and not run_dir[b.run_id].exists()
        assert not v2_dir.exists() and not v2_blob.exists()
        assert run_dir[c.run_id].exists()  # still running
        assert (ns_root / "checkpoints" / a.run_id).exists()  # the sheet still shows it
        assert (ns_root / "code" / v1).is_dir()
        assert daemon.archive.read(a.run_id, 1) is not None  # its log kept here first

        raw["jobs"]["fake"]["sync"] = "code"
        (code / "job.py").write_bytes(FAKE_JOB.read_bytes())
        config = tmp_path / "sheetrunner.toml"
        text = config.read_text().replace('slots = 4', 'slots = 4\nmin_free_disk = "100000TiB"')
        config.write_text(text)
        assert daemon.reload()
        add_row(daemon.config.sheet.path, {"job": "fake", "gpus": 0, "--steps": 3, "--sleep": 0})
        daemon.cycle()
        daemon.cycle()
        row = read_workbook(daemon.config.sheet.path)[3]
        assert row["status"] == "queued" and "min_free_disk" in row["message"]
        entries = views.pool_json(list(daemon.config.hosts), daemon.pool.last,
                                  list(daemon.store.runs().values()), {})
        assert "min_free_disk" in entries[0]["closed"]
    finally:
        kill_jobs_under(host.root_dir)
        daemon.close()


def size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
