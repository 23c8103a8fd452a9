"""Shared GPUs on paper: free memory thresholds, sharing with others' processes, GPU claims
between sheets (placement, the refused launch, what `pool` says), and the claim files."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import pytest

from sheetrunner.config import HostConfig
from sheetrunner.config_checks import gpu_sharing
from sheetrunner.errors import ConfigError
from sheetrunner.model import Accelerator, HostObservation, Status
from sheetrunner.placement import Placement
from sheetrunner.pool.hosts import capacity
from sheetrunner.reconcile import Policy, plan
from sheetrunner.remote import gpu_claims
from sheetrunner.sheet.schema import parse_table
from sheetrunner.sheet.table import Table
from sheetrunner.views import holder_text
from tests.helpers import make_run

T0 = datetime(2026, 1, 1, tzinfo=UTC)
GIB = 1024
TOTAL = 80 * GIB
POLICY = Policy(retries=2, hang_timeout_s=60, backoff_s=10, backoff_max_s=100,
                launch_timeout_s=30, on_host_lost="wait", host_lost_timeout_s=120)


def gpu(index: str, used_gib: float = 0, **kw) -> Accelerator:
    return Accelerator(index, "H100", int(used_gib * GIB), TOTAL, 0, **kw)


def host(*gpus: Accelerator, **config) -> tuple[HostConfig, HostObservation]:
    return (HostConfig(name="a", accelerators="auto", **config),
            HostObservation("a", True, T0, accelerators=gpus))


def place(config: HostConfig, seen: HostObservation, gpus: int = 1,
          gpu_memory_mib: int | None = None) -> tuple[str, tuple[str, ...]] | str:
    run = make_run("abcdef01-x1", gpus=gpus, gpu_memory_mib=gpu_memory_mib)
    return Placement([capacity(config, seen)], []).take(run)


def test_a_gpu_without_the_hosts_min_free_memory_is_skipped():
    config, seen = host(gpu("0", used_gib=70), gpu("1", used_gib=10), min_free_memory_mib=20 * GIB)
    assert place(config, seen) == ("a", ("1",))
    assert place(config, seen, gpus=2) == "waiting for 2 free accelerators with 20GiB free memory"
    assert place(HostConfig(name="a", accelerators="auto"), seen, gpus=2) == ("a", ("0", "1"))


def test_the_rows_gpu_memory_is_its_need_and_the_hosts_floor_still_holds():
    config, seen = host(gpu("0", used_gib=50), gpu("1", used_gib=30))
    assert place(config, seen, gpu_memory_mib=40 * GIB) == ("a", ("1",))
    assert place(config, seen, gpu_memory_mib=60 * GIB) == (
        "waiting for 1 free accelerators with 60GiB free memory"
    )
    floor = HostConfig(name="a", accelerators="auto", min_free_memory_mib=55 * GIB)
    assert isinstance(place(floor, seen, gpu_memory_mib=10 * GIB), str)


def test_a_need_bigger_than_any_gpu_is_unplaceable_with_the_fix():
    config, seen = host(gpu("0"))
    cap = capacity(config, seen)
    run = make_run("abcdef01-x1", key="k", gpu_memory_mib=100 * GIB, in_sheet=True)
    p = plan(None, {run.run_id: run}, {"a": seen}, [cap], POLICY, T0)
    assert p.runs[run.run_id].status == Status.UNPLACEABLE
    assert "needs 100GiB free memory on each GPU" in p.runs[run.run_id].message
    assert "largest GPU of a matching host has 80GiB" in p.runs[run.run_id].message


def test_others_processes_make_a_gpu_busy_unless_sharing_leaves_enough_free():
    seen_light = host(gpu("0", used_gib=20, foreign=True))[1]
    seen_heavy = host(gpu("0", used_gib=70, foreign=True))[1]
    plain = HostConfig(name="a", accelerators="auto", min_free_memory_mib=20 * GIB)
    sharing = HostConfig(name="a", accelerators="auto", min_free_memory_mib=20 * GIB,
                         share_gpus=True)
    assert capacity(plain, seen_light).busy == ("0",)
    assert place(sharing, seen_light) == ("a", ("0",))
    assert isinstance(place(sharing, seen_heavy), str)
    unknown = HostObservation("a", True, T0, accelerators=(Accelerator("0", foreign=True),))
    assert capacity(sharing, unknown).busy == ("0",)  # memory not reported: never shared


def test_a_claimed_gpu_is_busy_whoever_claimed_it_even_when_sharing():
    claimed = gpu("0", claim_namespace="other-ns", claim_run="1a2b3c4d-x1")
    config, seen = host(claimed, gpu("1"), min_free_memory_mib=GIB, share_gpus=True)
    assert capacity(config, seen).busy == ("0",)
    assert place(config, seen) == ("a", ("1",))
    assert place(config, seen, gpus=2) == (
        "waiting for 2 free accelerators with 1GiB free memory (GPU 0 on a claimed by another "
        "sheet's run: sheetrunner pool)"
    )


def test_runs_of_one_shape_but_another_memory_need_are_placed_each_on_its_own():
    config, seen = host(gpu("0", used_gib=50), gpu("1", used_gib=70))
    placement = Placement([capacity(config, seen)], [])
    big = make_run("abcdef01-x1", gpu_memory_mib=40 * GIB)
    small = make_run("abcdef01-x2", gpu_memory_mib=5 * GIB)
    assert isinstance(placement.take(big), str)
    assert placement.take(small) == ("a", ("0",))


def test_a_refused_launch_waits_again_without_counting_a_crash():
    run = make_run("abcdef01-x1", key="k", status=Status.LAUNCHING, attempt=3, crashes=1,
                   host="a", accelerators=("0",), in_sheet=True, retries=2,
                   launch_refused="GPU 0 is claimed by run 9f8e7d6c-q1 of sheet other-ns")
    config, claimed = host(gpu("0", claim_namespace="other-ns", claim_run="9f8e7d6c-q1"), gpu("1"))
    p = plan(None, {run.run_id: run}, {"a": claimed}, [capacity(config, claimed)], POLICY, T0)
    again = p.runs[run.run_id]
    assert again.crashes == 1 and again.launch_refused == ""
    assert again.status == Status.LAUNCHING and again.attempt == 4 and again.accelerators == ("1",)
    # with no other GPU free, it waits (queued), no retry spent
    only = host(gpu("0", claim_namespace="other-ns", claim_run="9f8e7d6c-q1"))[1]
    p = plan(None, {run.run_id: run}, {"a": only}, [capacity(config, only)], POLICY, T0)
    assert p.runs[run.run_id].status == Status.QUEUED and p.runs[run.run_id].crashes == 1


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"min_free_memory": 20}, 'min_free_memory = "20GiB"'),
        ({"min_free_memory": "lots"}, "is not a size"),
        ({"share_gpus": True}, "share_gpus = true needs min_free_memory"),
        ({"gpu_claims": "claims"}, 'gpu_claims = "/tmp/sheetrunner-gpu-claims"'),
    ],
)
def test_bad_sharing_settings_fail_at_start_with_the_key_and_a_right_value(raw, fragment):
    with pytest.raises(ConfigError, match="hosts\\[a\\]") as caught:
        gpu_sharing("hosts[a]", raw)
    assert fragment in str(caught.value)


def test_gpu_memory_cells_are_sizes_with_units():
    table = Table(["job", "gpu_memory"], [["train", "20GiB"], ["train", "1.5 GB"], ["train", 20]])
    good, decimal, bare = parse_table(table, ["train"])
    assert (good.gpu_memory_mib, decimal.gpu_memory_mib) == (20480, 1431)
    assert good.error is None and "gpu_memory must be a size with its unit" in (bare.error or "")
    assert good.key == parse_table(Table(["job"], [["train"]]), ["train"])[0].key


def test_pool_says_who_holds_each_gpu():
    ours = gpu("0", claim_namespace="mine", claim_run="1a2b3c4d-x1")
    theirs = gpu("1", claim_namespace="theirs", claim_run="9f8e7d6c-q1", claim_user="bob")
    process = gpu("2", used_gib=30, foreign=True, foreign_users=("alice",))
    assert holder_text(ours, "1a2b3c4d-x1", "mine") == "1a2b3c4d-x1"
    assert holder_text(ours, None, "mine") == "run 1a2b3c4d-x1 of this sheet (claim)"
    assert holder_text(theirs, None, "mine") == "another sheet: run 9f8e7d6c-q1 (theirs, user bob)"
    assert holder_text(process, None, "mine") == "another user's process (alice)"
    assert holder_text(gpu("3"), None, "mine") == "free"


def test_a_claim_file_is_locked_by_one_holder_and_seen_held_until_closed(tmp_path):
    claims = gpu_claims.claim_dir(str(tmp_path / "claims"))
    assert os.stat(claims).st_mode & 0o7777 == 0o1777
    fd = gpu_claims._claim_one(claims, "0", "GPU-1")
    os.pwrite(fd, b'{"namespace": "ns1", "run_id": "1a2b3c4d-x1", "user": "bob"}', 0)
    assert os.stat(os.path.join(claims, "GPU-1")).st_mode & 0o777 == 0o666
    with pytest.raises(gpu_claims.GpuClaimed, match="GPU 0 is claimed by run 1a2b3c4d-x1 of sheet ns1"):
        gpu_claims._claim_one(claims, "0", "GPU-1")
    assert gpu_claims.read_claim(claims, "GPU-1", gpu_claims.ClaimLocks()) == {
        "namespace": "ns1", "run_id": "1a2b3c4d-x1", "user": "bob"}
    os.close(fd)  # the supervisor ended: the kernel drops the lock, the stale text means nothing
    assert gpu_claims.read_claim(claims, "GPU-1", gpu_claims.ClaimLocks()) is None
    os.close(gpu_claims._claim_one(claims, "0", "GPU-1"))


def test_a_claim_file_that_cannot_be_locked_is_a_host_problem_not_a_claim(tmp_path):
    claims = gpu_claims.claim_dir(str(tmp_path / "claims"))
    os.symlink(tmp_path / "elsewhere", os.path.join(claims, "GPU-2"))
    with pytest.raises(gpu_claims.ClaimRefused, match="mode 0666") as caught:
        gpu_claims._claim_one(claims, "0", "GPU-2")
    assert not isinstance(caught.value, gpu_claims.GpuClaimed)
    assert not (tmp_path / "elsewhere").exists()
