"""The default root over SSH: `root` unset, as examples/ssh/sheetrunner.toml ships.

`~/.sheetrunner` used to be uploaded to over SFTP (which expands `~/`) and then
run as the quoted literal path '~/.sheetrunner/...', so every SSH host with the
default root stayed unreachable. Here the real sshd fake hosts of tests/sshd.py
run a row end to end with that root. They all log in as the current user and
share one home: the shared-home (NFS) case, where each host must keep to its
own attempts. Each test uses a fresh namespace and removes it afterwards.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import time
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import tomli_w

from sheetrunner.config import Config, JobConfig, load
from sheetrunner.model import AttemptState, Run, Status
from sheetrunner.pool.hosts import HostAgent, Pool, launch_spec
from sheetrunner.pool.ssh import SshTransport
from sheetrunner.remote import agent_name, version
from sheetrunner.remote.protocol import new_namespace, new_run_id
from tests.helpers import make_run

TESTS = Path(__file__).resolve().parents[1]
try:
    from tests.sshd import SshdLab, sshd_lab  # noqa: F401  (a fixture)
except ImportError:
    sys.path.insert(0, str(TESTS))
    from sshd import SshdLab, sshd_lab  # noqa: F401

pytestmark = pytest.mark.sshd
EXAMPLE = TESTS.parent / "examples" / "ssh"
DEFAULT_ROOT = ".sheetrunner"
REPORTING_JOB = (
    "import sheetrunner.job as job; print('LIB', job.__file__); job.report(1, acc=0.75)"
)
HANGING_JOB = "import time; time.sleep(600)"


def example_config(tmp_path: Path, lab: SshdLab) -> Config:
    """examples/ssh as shipped (no `root`), pointed at the lab's hosts of the same names."""
    raw = tomllib.loads((EXAMPLE / "sheetrunner.toml").read_text())
    for host in raw["hosts"]:
        fake = lab.hosts[host["name"]]
        host.update(address=fake.address, port=fake.port, user=fake.user,
                    identity=str(lab.client_key), python=sys.executable)
    raw["ssh"] = {**raw["ssh"], "known_hosts": str(lab.known_hosts),
                  "config_file": str(tmp_path / "no-ssh-config"), "connect_timeout": 3}
    shutil.copy(EXAMPLE / "experiments.xlsx", tmp_path / "experiments.xlsx")
    path = tmp_path / "sheetrunner.toml"
    path.write_text(tomli_w.dumps(raw))
    return load(path)


@pytest.fixture
def pool(tmp_path: Path, sshd_lab: SshdLab) -> Iterator[Pool]:
    """The example's two hosts over SSH with the default root, in a namespace of their own."""
    for name in ("gpu-a", "gpu-b"):
        sshd_lab.add_host(name, gpus=2)
    config = example_config(tmp_path, sshd_lab)
    assert [h.root for h in config.hosts] == ["~/" + DEFAULT_ROOT] * 2
    agents = [HostAgent(h, SshTransport(**sshd_lab.transport_kwargs(sshd_lab.hosts[h.name])))
              for h in config.hosts]
    pool = Pool(agents)
    pool.set_namespace(new_namespace())
    try:
        yield pool
    finally:
        pool.close()
        shutil.rmtree(sshd_lab.home / DEFAULT_ROOT / pool.namespace, ignore_errors=True)


def new_run(tag: str, gpus: int = 1) -> Run:
    key = hashlib.sha256(tag.encode()).hexdigest()
    now = datetime.now(UTC)
    return make_run(new_run_id(key), key, "probe", (("tag", tag),), gpus, None, Status.LAUNCHING,
               now, now, attempt=1, accelerators=tuple(str(i) for i in range(gpus)))


def launch(pool: Pool, host: str, run: Run, script: str) -> None:
    job = JobConfig("probe", ("{python}", "-c", script))
    agent = pool.agents[host]
    assert agent.launch(launch_spec(run, job, agent.config, None)).launched


def wait_for(pool: Pool, host: str, run: Run, state: AttemptState, timeout_s: float = 30):
    deadline = time.monotonic() + timeout_s
    while True:
        seen = pool.probe_all({host: {(run.run_id, 1)}}, datetime.now(UTC))[host]
        assert seen.reachable, seen.error
        found = seen.attempt(run.run_id, 1)
        if found is not None and found.state == state:
            return found
        assert time.monotonic() < deadline, found
        time.sleep(0.2)


def host_dir(lab: SshdLab, pool: Pool, host: str) -> Path:
    return lab.home / DEFAULT_ROOT / pool.namespace / "hosts" / host


def test_a_row_runs_to_exit_code_0_under_the_default_root(pool, sshd_lab):
    run = new_run("default-root")
    launch(pool, "gpu-a", run, REPORTING_JOB)
    seen = wait_for(pool, "gpu-a", run, AttemptState.EXITED)
    assert seen.exit_code == 0 and seen.metrics.get("acc") == 0.75
    assert (seen.key, seen.job, seen.params, seen.gpus, seen.accelerators) == (
        run.spec.key, "probe", (("tag", "default-root"),), 1, ("0",))
    where = host_dir(sshd_lab, pool, "gpu-a") / "runs" / run.run_id / "1"
    assert seen.log_path == str(where / "output.log")
    assert (where / "exit_code").read_text() == "0"
    lib = sshd_lab.home / DEFAULT_ROOT / "lib" / version()
    assert f"LIB {lib}/sheetrunner/job.py" in (where / "output.log").read_text()
    assert (sshd_lab.home / DEFAULT_ROOT / "bin" / agent_name()).is_file()
    assert (sshd_lab.home / DEFAULT_ROOT / pool.namespace / "checkpoints" / run.run_id).is_dir()


def test_hosts_sharing_the_default_root_never_report_each_others_attempts(pool, sshd_lab):
    run = new_run("shared-home")
    launch(pool, "gpu-a", run, HANGING_JOB)
    try:
        wait_for(pool, "gpu-a", run, AttemptState.RUNNING)
        seen = pool.probe_all({"gpu-b": {(run.run_id, 1)}}, datetime.now(UTC), runs=[run.run_id])
        assert [(a.run_id, a.state) for a in seen["gpu-a"].attempts] == [
            (run.run_id, AttemptState.RUNNING)]
        assert [(a.run_id, a.state) for a in seen["gpu-b"].attempts] == [
            (run.run_id, AttemptState.MISSING)]
        assert pool.agents["gpu-b"].kill(run.run_id, 1, grace_s=1) == "missing"
        assert not (host_dir(sshd_lab, pool, "gpu-b") / "runs" / run.run_id).exists()
        assert wait_for(pool, "gpu-a", run, AttemptState.RUNNING)
    finally:
        pool.agents["gpu-a"].kill(run.run_id, 1, grace_s=2)


def test_another_namespace_under_the_same_root_sees_nothing(pool, sshd_lab):
    run = new_run("other-sheet")
    launch(pool, "gpu-a", run, HANGING_JOB)
    try:
        wait_for(pool, "gpu-a", run, AttemptState.RUNNING)
        gpu_a = pool.agents["gpu-a"]
        other = HostAgent(gpu_a.config, gpu_a.transport, namespace=new_namespace())
        try:
            assert other.probe(set(), runs=[run.run_id])["attempts"] == []
        finally:
            shutil.rmtree(sshd_lab.home / DEFAULT_ROOT / other.namespace, ignore_errors=True)
    finally:
        pool.agents["gpu-a"].kill(run.run_id, 1, grace_s=2)
