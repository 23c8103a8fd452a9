"""Each failure path of a run's lifecycle, through the real daemon, in milliseconds.

The daemon, its store, the core and the sheet contract are real; the hosts are
`tests.fakes.FakeHost`s scripted per test, the sheet is in memory and the clock
is moved by hand (no sleeps). Every test ends by checking the job-side guard:
no attempt of a row ever started while another of the same row was alive
(`FakePool.overlaps`), except where the README says two copies may run.
"""

from __future__ import annotations

import pytest

from tests.fakes import KILLED_EXIT, Rig, row


@pytest.fixture
def make_rig(tmp_path):
    rigs: list[Rig] = []

    def make(rows, **kwargs) -> Rig:
        where = tmp_path / f"rig{len(rigs)}"
        where.mkdir()
        rig = Rig(where, rows, **kwargs)
        rigs.append(rig)
        rig.start()
        return rig

    yield make
    for rig in rigs:
        rig.close()


# -- crashes ------------------------------------------------------------------------------------


def test_a_crash_is_retried_with_doubling_backoff_and_then_succeeds(make_rig):
    rig = make_rig([row("a")])
    rig.cycle(15)
    assert rig.status("a") == "running"
    rig.pool.exit("a", 1)
    rig.cycle(15)
    crash_seen = rig.clock()
    assert rig.status("a") == "retrying"
    assert rig.row("a")["message"].startswith("retry 1/2 in 30s after exit code 1 on attempt 1")
    rig.cycle(15)  # 15 s into a 30 s backoff: nothing starts
    assert len(rig.pool.attempts("a")) == 1
    rig.cycle_until("a", "running", step_s=5)
    assert 30 <= (rig.pool.latest("a").started - crash_seen).total_seconds() < 35
    rig.pool.exit("a", 1)
    rig.cycle(5)
    crash_seen = rig.clock()
    assert rig.row("a")["message"].startswith("retry 2/2 in 60s")
    rig.cycle_until("a", "running", step_s=5)
    assert 60 <= (rig.pool.latest("a").started - crash_seen).total_seconds() < 65
    rig.pool.exit("a", 0)
    rig.cycle(5)
    assert rig.status("a") == "succeeded"
    assert rig.row("a")["attempt"] == 3
    assert rig.pool.overlaps == []


def test_crashes_past_the_rows_retries_fail_it_with_the_reason(make_rig):
    rig = make_rig([row("a", retries=1)])
    rig.cycle(15)
    rig.pool.exit("a", 1, log="CUDA error: out of memory")
    rig.cycle(15)
    assert rig.status("a") == "retrying"
    rig.cycle_until("a", "running")
    rig.pool.exit("a", 1, log="CUDA error: out of memory")
    rig.cycle(15)
    shown = rig.row("a")
    assert shown["status"] == "failed"
    assert "no retries left (1 allowed)" in shown["message"]
    assert "exit code 1 on attempt 2" in shown["message"]
    assert "CUDA error: out of memory" in shown["message"]
    rig.run_for(600)
    assert len(rig.pool.attempts("a")) == 2  # nothing more starts
    assert rig.pool.overlaps == []


def test_an_exit_code_no_retry_can_fix_fails_at_once(make_rig):
    rig = make_rig([row("usage"), row("other")])
    rig.cycle(15)
    rig.pool.exit("usage", 2, log="error: unrecognized arguments: --lr")
    rig.pool.exit("other", 3)
    rig.cycle(15)
    assert rig.status("usage") == "failed"
    assert "exit code 2 on attempt 1, which is not retried" in rig.row("usage")["message"]
    assert "unrecognized arguments" in rig.row("usage")["message"]
    assert rig.status("other") == "retrying"  # any other code is a crash like any other
    rig.run_for(300)
    assert len(rig.pool.attempts("usage")) == 1
    assert len(rig.pool.attempts("other")) == 2


# -- hangs and kills that do not land ------------------------------------------------------------


def test_a_hung_job_is_stalled_killed_and_retried(make_rig):
    rig = make_rig([row("a")])  # hang_timeout 600 s
    rig.cycle(15)
    hung = rig.pool.hang("a")
    rig.run_for(585, step_s=15)
    assert rig.status("a") == "running"  # 585 s without a heartbeat is not yet a hang
    waited = rig.cycle_until("a", "stalled", step_s=15)
    assert waited <= 30  # the first cycle past 600 s without a heartbeat
    rig.cycle(15)
    assert rig.status("a") == "retrying"
    assert hung.state == "exited" and hung.exit_code == KILLED_EXIT
    assert rig.pool["local"].kills() == [(hung.run_id, 1)]
    assert "stalled: no heartbeat" in rig.row("a")["message"]
    rig.cycle_until("a", "running")
    assert rig.row("a")["attempt"] == 2
    assert rig.pool.overlaps == []


@pytest.mark.parametrize("fault", ["kill refused", "process frozen"])
def test_a_kill_that_does_not_land_is_sent_every_cycle_and_no_attempt_starts_meanwhile(
    make_rig, fault
):
    rig = make_rig([row("a")])
    rig.cycle(15)
    host = rig.pool["local"]
    hung = rig.pool.hang("a")
    if fault == "kill refused":
        host.refuse_kills = -1
    else:
        rig.pool.freeze("a")
    rig.cycle_until("a", "stalled", step_s=15)
    kills_before = len(host.kills())
    rig.run_for(600, step_s=15)  # ten minutes of cycles: the old process is still there
    assert len(host.kills()) - kills_before == 600 // 15  # sent again every cycle
    assert hung.alive
    assert rig.status("a") == "stalled"
    assert len(rig.pool.attempts("a")) == 1  # no next attempt while the old one is seen alive
    host.refuse_kills = 0
    rig.pool.thaw("a")
    rig.cycle(15)
    assert not hung.alive
    rig.cycle_until("a", "running")
    assert rig.row("a")["attempt"] == 2
    assert rig.pool.overlaps == []


def test_a_stopped_row_whose_kill_does_not_land_is_fenced_every_cycle(make_rig):
    rig = make_rig([row("a")])
    rig.cycle(15)
    host = rig.pool["local"]
    first = rig.pool.live("a")
    host.refuse_kills = -1
    rig.set_cell("a", "action", "stop")
    rig.cycle(15)
    assert rig.status("a") == "stopped"
    sent = len(host.kills())
    rig.run_for(150, step_s=15)
    assert len(host.kills()) - sent == 10 and first.alive
    host.refuse_kills = 0
    rig.cycle(15)
    assert not first.alive and first.exit_code == KILLED_EXIT
    assert len(rig.pool.attempts("a")) == 1


def test_a_rerun_waits_until_the_replaced_attempt_is_seen_gone(make_rig):
    rig = make_rig([row("a")])
    rig.cycle(15)
    old = rig.pool.live("a")
    rig.pool["local"].refuse_kills = -1
    rig.set_cell("a", "action", "rerun")
    rig.run_for(60)
    assert old.alive
    assert len(rig.pool.attempts("a")) == 1, "the rerun started beside the old process"
    rig.pool["local"].refuse_kills = 0
    rig.cycle(15)
    rig.cycle_until("a", "running")
    assert rig.pool.overlaps == []


# -- launches that fail -------------------------------------------------------------------------


def test_a_failed_launch_counts_as_a_crash_and_the_retry_goes_to_another_host(make_rig):
    rig = make_rig([], slots=2, others={"gpu-b": 1})  # a CPU row goes to `local` (most slots)
    rig.pool["local"].refuse_launches = -1
    rig.add_row(row("a"))
    rig.cycle(15)
    assert rig.pool["local"].launches() and not rig.pool.attempts("a")
    rig.cycle(15)
    shown = rig.row("a")
    assert shown["status"] == "retrying"
    assert "retry 1/2 in 30s after the launch on local failed" in shown["message"]
    waited = rig.cycle_until("a", "running", step_s=5)
    assert waited >= 30 - 5
    assert rig.row("a")["host"] == "gpu-b" and rig.row("a")["attempt"] == 2
    assert rig.pool.overlaps == []


def test_failed_launches_are_bounded_by_retries(make_rig):
    rig = make_rig([], others={"gpu-b": 1})
    for host in rig.pool.agents.values():
        host.refuse_launches = -1
    rig.add_row(row("a", retries=2))
    rig.cycle(15)
    rig.cycle_until("a", "failed")
    shown = rig.row("a")
    assert "no retries left (2 allowed)" in shown["message"]
    assert "launch on" in shown["message"]
    tried = [op for h in rig.pool.agents.values() for op in h.launches()]
    assert len(tried) == 3  # the first launch and two retries
    assert {h for h in rig.pool.agents if rig.pool[h].launches()} == {"local", "gpu-b"}
    rig.run_for(600)
    assert len([op for h in rig.pool.agents.values() for op in h.launches()]) == 3


def test_a_launch_whose_answer_was_lost_is_fenced_before_the_retry_starts(make_rig):
    rig = make_rig([], others={"gpu-b": 1})
    rig.pool["local"].lose_launch_answers = 1  # the job started; the daemon heard an error
    rig.add_row(row("a"))
    rig.cycle(15)
    straggler = rig.pool.live("a")
    rig.cycle(15)
    assert rig.status("a") == "retrying"
    rig.cycle_until("a", "running", step_s=5)
    assert not straggler.alive and straggler.exit_code == KILLED_EXIT
    assert rig.row("a")["attempt"] == 2
    assert rig.pool.overlaps == []


# -- hosts that go silent, reboot, or keep another time -----------------------------------------


def test_a_silent_host_with_wait_keeps_the_run_lost_and_adopts_it_when_it_returns(make_rig):
    rig = make_rig([row("a")], others={"gpu-b": 1})  # on_host_lost = "wait" (the default)
    rig.cycle(15)
    host = rig.row("a")["host"]
    job = rig.pool.live("a")
    rig.pool[host].go_silent()
    rig.cycle(15)
    assert rig.status("a") == "lost"
    assert f"host {host} unreachable" in rig.row("a")["message"]
    rig.run_for(3600, step_s=30)  # an hour: far past host_lost_timeout, which wait ignores
    assert rig.status("a") == "lost"
    assert len(rig.pool.attempts("a")) == 1  # never started elsewhere
    rig.pool[host].come_back()
    rig.cycle(15)
    shown = rig.row("a")
    assert shown["status"] == "running" and shown["attempt"] == 1 and shown["host"] == host
    assert shown["message"] == ""
    assert job.alive and rig.pool[host].kills() == []
    assert rig.pool.overlaps == []


def test_a_silent_host_with_requeue_moves_the_run_after_host_lost_timeout(make_rig):
    rig = make_rig([row("a")], slots=2, others={"gpu-b": 1},
                   daemon={"on_host_lost": "requeue", "host_lost_timeout_s": 300})
    rig.cycle(15)
    assert rig.row("a")["host"] == "local"
    old = rig.pool.live("a")
    rig.pool["local"].go_silent()
    rig.cycle(15)
    assert rig.status("a") == "lost"
    rig.run_for(270, step_s=15)
    assert rig.status("a") == "lost"  # 285 s: not yet
    moved = rig.cycle_until("a", "running", step_s=15)
    assert rig.row("a")["host"] == "gpu-b" and rig.row("a")["attempt"] == 2
    assert moved <= 30 + 30 + 15  # to the timeout, the backoff, a cycle to confirm
    # The README's stated exception: the old copy runs on until its host returns ...
    assert rig.pool.overlaps == [("a", old.run_id, 2)]
    rig.pool["local"].come_back()
    rig.cycle(15)
    # ... and is then fenced.
    assert not old.alive and rig.pool["local"].kills() == [(old.run_id, 1)]
    assert rig.status("a") == "running" and rig.pool.live("a").host == "gpu-b"


def test_a_host_back_with_a_new_boot_id_proves_its_runs_gone(make_rig):
    rig = make_rig([row("a")])
    rig.cycle(15)
    old = rig.pool.live("a")
    rig.pool["local"].go_silent()
    rig.run_for(1800, step_s=30)
    assert rig.status("a") == "lost"
    rig.pool["local"].come_back(new_boot=True)
    rig.cycle(15)
    assert old.state == "lost"
    assert rig.status("a") == "retrying"
    assert "lost: the process ended without an exit code" in rig.row("a")["message"]
    rig.cycle_until("a", "running")
    assert rig.row("a")["attempt"] == 2
    assert rig.pool.overlaps == []


@pytest.mark.parametrize("skew_s", [-3 * 3600, -700, 700, 3 * 3600, 86400 * 365])
def test_a_host_clock_far_off_never_makes_a_healthy_run_look_hung(make_rig, skew_s):
    rig = make_rig([row("a"), row("b")], slots=1, others={"gpu-b": 1})
    rig.pool["gpu-b"].skew_s = skew_s  # ages are measured on the host, on its own clock
    rig.cycle(15)
    assert {rig.row("a")["host"], rig.row("b")["host"]} == {"local", "gpu-b"}
    rig.run_for(2 * 3600, step_s=60)
    assert rig.status("a") == "running" and rig.status("b") == "running"
    assert all(h.kills() == [] for h in rig.pool.agents.values())
    assert len(rig.pool.starts) == 2


def test_a_host_clock_stepped_back_mid_run_does_not_stall_it(make_rig):
    rig = make_rig([row("a")])
    rig.cycle(15)
    rig.run_for(300, step_s=30)
    rig.pool["local"].skew_s = -2 * 3600  # NTP steps the host's clock back two hours
    rig.run_for(1800, step_s=30)
    assert rig.status("a") == "running"
    assert rig.pool["local"].kills() == []


# -- the sheet unreadable -----------------------------------------------------------------------


def test_while_the_sheet_is_unreadable_runs_go_on_and_nothing_is_claimed_or_stopped(make_rig):
    rig = make_rig([row("a"), row("b")], slots=3)
    rig.cycle(15)
    b = rig.pool.live("b")
    rig.sheet.down = True
    rig.add_row(row("c"))  # typed meanwhile
    rig.set_cell("b", "action", "stop")  # asked meanwhile
    rig.pool.exit("a", 1)
    writes = rig.sheet.writes
    for _ in range(8):  # 2 minutes, within the daemon's lease
        report = rig.cycle(15)
        assert report.acting and not report.sheet_ok
    assert rig.sheet.writes == writes  # nothing written
    assert rig.pool.attempts("c") == []  # nothing claimed
    assert b.alive and rig.pool["local"].kills() == []  # nothing stopped
    assert len(rig.pool.attempts("a")) == 2  # the crash was retried all the same
    assert rig.status("a") == "running" and rig.row("a")["attempt"] == 1  # not yet written
    rig.sheet.down = False
    rig.cycle(15)
    assert rig.row("a")["attempt"] == 2 and rig.status("a") == "running"
    assert rig.status("b") == "stopped" and not b.alive
    assert rig.row("c")["id"] and rig.pool.attempts("c")
    assert rig.pool.overlaps == []


def test_a_sheet_unreadable_past_the_lease_stops_nothing_and_resumes_when_back(make_rig):
    rig = make_rig([row("a"), row("b")], slots=3)
    rig.cycle(15)
    a, b = rig.pool.live("a"), rig.pool.live("b")
    rig.sheet.down = True
    rig.add_row(row("c"))
    rig.run_for(1800, step_s=15)  # half an hour: the lease ends meanwhile
    assert rig.pool.attempts("c") == []
    assert a.alive and b.alive and rig.pool["local"].kills() == []
    rig.sheet.down = False
    rig.cycle_until("c", "running")
    assert a.alive and b.alive and rig.status("a") == "running"
    assert rig.pool.overlaps == []
