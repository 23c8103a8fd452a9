"""The pure core, without any IO: each behaviour is a small scenario driven cycle by cycle."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sheetrunner.model import (
    Action,
    AttemptObservation,
    AttemptState,
    Experiment,
    HostObservation,
    Run,
    Status,
)
from sheetrunner.reconcile import HostCapacity, Plan, Policy, plan
from sheetrunner.sheet.schema import experiment_key
from tests.helpers import make_run

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = Policy(retries=2, hang_timeout_s=60, backoff_s=10, backoff_max_s=100,
                launch_timeout_s=30, on_host_lost="wait", host_lost_timeout_s=120)


def exp(row: int = 2, run_id: str | None = None, lr: str = "0.1", gpus: int = 1,
        action: Action = Action.RUN, **kw) -> Experiment:
    params = (("lr", lr),)
    return Experiment(row=row, run_id=run_id, job="train", params=params,
                      key=experiment_key("train", params), gpus=gpus, action=action, **kw)


def gpu_host(name: str = "a", n: int = 2, **kw) -> HostCapacity:
    return HostCapacity(name=name, accelerators=tuple(str(i) for i in range(n)), **kw)


class World:
    """Carries plans out on paper: the store is a dict, the hosts are dicts of attempts."""

    def __init__(self, hosts: list[HostCapacity], policy: Policy = POLICY):
        self.hosts = hosts
        self.policy = policy
        self.runs: dict[str, Run] = {}
        self.alive: dict[tuple[str, int], str] = {}  # (run, attempt) -> host
        self.outcome: dict[tuple[str, int], AttemptObservation] = {}
        self.heartbeat: dict[tuple[str, int], datetime] = {}
        self.down: set[str] = set()
        self.now = T0
        self.last = Plan()

    def step(self, experiments: list[Experiment] | None, advance_s: float = 5) -> Plan:
        self.now += timedelta(seconds=advance_s)
        hosts = [HostCapacity(h.name, h.labels, h.accelerators, h.busy, h.slots,
                              h.name not in self.down, h.draining, h.known) for h in self.hosts]
        self.last = plan(experiments, self.runs, self.observe(), hosts, self.policy, self.now)
        self.runs.update(self.last.runs)
        for kill in self.last.kills:
            key = (kill.run_id, kill.attempt)
            if self.alive.get(key) == kill.host and kill.host not in self.down:
                del self.alive[key]
                self.outcome[key] = AttemptObservation(*key, AttemptState.EXITED, exit_code=143)
        for launch in self.last.launches:
            self.alive[(launch.run_id, launch.attempt)] = launch.host
            self.heartbeat[(launch.run_id, launch.attempt)] = self.now
        return self.last

    def observe(self) -> dict[str, HostObservation]:
        seen = {}
        for host in self.hosts:
            if host.name in self.down:
                seen[host.name] = HostObservation(host.name, False, self.now, error="down",
                                                  down_since=self.now - timedelta(seconds=500))
                continue
            attempts = [AttemptObservation(r, a, AttemptState.RUNNING,
                                           heartbeat_at=self.heartbeat.get((r, a)))
                        for (r, a), h in self.alive.items() if h == host.name]
            attempts += [o for k, o in self.outcome.items() if k not in self.alive]
            seen[host.name] = HostObservation(host.name, True, self.now, attempts=tuple(attempts))
        return seen

    def finish(self, run_id: str, code: int) -> None:
        key = (run_id, self.runs[run_id].attempt)
        del self.alive[key]
        self.outcome[key] = AttemptObservation(*key, AttemptState.EXITED, exit_code=code)

    def beat(self, run_id: str) -> None:
        self.heartbeat[(run_id, self.runs[run_id].attempt)] = self.now

    def status(self, row_exp: Experiment) -> Status:
        return self.runs[self.last.rows[row_exp.row]].status

    def only_run(self) -> Run:
        (run,) = self.runs.values()
        return run


def claimed(world: World, e: Experiment) -> Experiment:
    """The same row as the sheet shows it once its id was written."""
    return Experiment(**{**e.__dict__, "run_id": world.last.rows[e.row]})


def test_a_new_row_is_claimed_and_launched_on_a_free_accelerator():
    world = World([gpu_host()])
    p = world.step([exp()])
    run = world.only_run()
    assert p.rows == {2: run.run_id}
    assert run.status == Status.LAUNCHING and run.attempt == 1 and run.host == "a"
    assert [(launch.run_id, launch.accelerators) for launch in p.launches] == [(run.run_id, ("0",))]


def test_a_launched_attempt_seen_alive_is_running_then_succeeds():
    world = World([gpu_host()])
    e = exp()
    world.step([e])
    e = claimed(world, e)
    world.step([e])
    assert world.only_run().status == Status.RUNNING
    world.finish(world.only_run().run_id, 0)
    world.step([e])
    assert world.only_run().status == Status.SUCCEEDED
    assert world.only_run().finished_at == world.now


def test_a_claim_whose_id_never_reached_the_sheet_is_not_claimed_twice():
    world = World([gpu_host()])
    world.step([exp()])
    world.step([exp()])  # the write failed: the row still shows no id
    assert len(world.runs) == 1
    assert len(world.alive) == 1


def test_a_crash_retries_with_exponential_backoff_until_retries_are_spent():
    world = World([gpu_host()])
    e = exp()
    world.step([e])
    e = claimed(world, e)
    delays = []
    for _ in range(3):
        world.finish(world.only_run().run_id, 1)
        world.step([e], advance_s=1)
        run = world.only_run()
        if run.status == Status.RETRYING:
            delays.append((run.next_attempt_at - world.now).total_seconds())
            world.step([e], advance_s=delays[-1])
            assert world.only_run().status == Status.LAUNCHING
    assert delays == [10, 20]
    assert world.only_run().status == Status.FAILED
    assert "no retries left" in world.only_run().message
    assert world.only_run().attempt == 3


def test_a_retrying_run_waits_for_its_backoff():
    world = World([gpu_host()])
    e = exp()
    world.step([e])
    e = claimed(world, e)
    world.finish(world.only_run().run_id, 1)
    world.step([e], advance_s=1)
    p = world.step([e], advance_s=5)
    assert p.launches == [] and world.only_run().status == Status.RETRYING


def test_a_silent_run_is_stalled_killed_and_counted_as_a_crash():
    world = World([gpu_host()])
    e = exp()
    world.step([e])
    e = claimed(world, e)
    world.step([e], advance_s=30)
    p = world.step([e], advance_s=61)
    assert world.only_run().status == Status.STALLED
    assert [k.reason for k in p.kills] == ["no heartbeat"]
    world.step([e])
    assert world.only_run().status == Status.RETRYING
    assert world.only_run().crashes == 1


def test_a_heartbeat_keeps_a_long_run_alive():
    world = World([gpu_host()])
    e = exp()
    world.step([e])
    e = claimed(world, e)
    for _ in range(10):
        world.beat(world.only_run().run_id)
        world.step([e], advance_s=50)
    assert world.only_run().status == Status.RUNNING


@pytest.mark.parametrize(
    ("action", "expected", "killed"),
    [
        (Action.STOP, Status.STOPPED, True),
        (Action.HOLD, Status.RUNNING, False),  # hold applies before launch only
        (Action.RUN, Status.RUNNING, False),
    ],
)
def test_actions_on_a_running_row(action, expected, killed):
    world = World([gpu_host()])
    e = exp()
    world.step([e])
    e = claimed(world, e)
    world.step([e])
    p = world.step([Experiment(**{**e.__dict__, "action": action})])
    assert world.only_run().status == expected
    assert bool(p.kills) == killed


def test_hold_keeps_a_row_from_launching_until_released():
    world = World([gpu_host()])
    e = exp(action=Action.HOLD)
    p = world.step([e])
    assert p.launches == [] and world.only_run().status == Status.HELD
    e = Experiment(**{**claimed(world, e).__dict__, "action": Action.RUN})
    p = world.step([e])
    assert len(p.launches) == 1


def test_rerun_starts_a_fresh_run_once_and_the_row_shows_it():
    world = World([gpu_host()])
    e = exp()
    world.step([e])
    e = claimed(world, e)
    old = world.only_run().run_id
    world.finish(old, 0)
    world.step([e])
    e = Experiment(**{**e.__dict__, "action": Action.RERUN})
    p = world.step([e])
    new = p.rows[2]
    assert new != old and world.runs[new].status == Status.LAUNCHING
    world.step([e])  # the action still says rerun: no third run
    world.step([Experiment(**{**e.__dict__, "run_id": new})])
    assert len(world.runs) == 2


def test_an_identical_row_after_success_is_a_duplicate_not_a_second_run():
    world = World([gpu_host()])
    e = exp()
    world.step([e])
    e = claimed(world, e)
    world.finish(world.only_run().run_id, 0)
    world.step([e])
    p = world.step([e, exp(row=3)])
    dup = world.runs[p.rows[3]]
    assert dup.status == Status.DUPLICATE and dup.link.duplicate_of == e.run_id
    assert p.launches == []


def test_a_deleted_row_stops_its_run():
    world = World([gpu_host()])
    e = exp()
    world.step([e])
    world.step([claimed(world, e)])
    p = world.step([])
    assert world.only_run().status == Status.STOPPED
    assert "deleted" in world.only_run().message and len(p.kills) == 1


def test_an_unreadable_sheet_stops_nothing_and_claims_nothing():
    world = World([gpu_host()])
    e = exp()
    world.step([e])
    world.step(None)
    assert world.only_run().status == Status.RUNNING
    world.finish(world.only_run().run_id, 0)
    world.step(None)
    assert world.only_run().status == Status.SUCCEEDED


def test_an_invalid_row_gets_a_note_and_no_run():
    world = World([gpu_host()])
    p = world.step([exp(error="unknown job 'x'")])
    assert world.runs == {}
    assert p.notes == {2: (Status.INVALID, "unknown job 'x'")}


def test_placement_never_hands_out_more_accelerators_than_exist():
    world = World([gpu_host(n=2)])
    p = world.step([exp(row=r, lr=str(r), gpus=1) for r in range(2, 6)])
    given = [a for launch in p.launches for a in launch.accelerators]
    assert sorted(given) == ["0", "1"]
    waiting = [r for r in world.runs.values() if r.status == Status.QUEUED]
    assert len(waiting) == 2 and all("waiting for 1 free" in r.message for r in waiting)


def test_placement_packs_onto_the_fullest_host_that_fits_and_respects_where():
    world = World([gpu_host("big", 8), gpu_host("small", 2)])
    p = world.step([exp(row=2, lr="1", gpus=2), exp(row=3, lr="2", gpus=4),
                    exp(row=4, lr="3", gpus=1, where="big")])
    hosts = {world.runs[launch.run_id].spec.params[0][1]: launch.host for launch in p.launches}
    assert hosts == {"1": "small", "2": "big", "3": "big"}


def test_priority_then_row_order_decides_who_gets_the_last_accelerator():
    world = World([gpu_host(n=1)])
    p = world.step([exp(row=2, lr="1"), exp(row=3, lr="2", priority=5)])
    assert world.runs[p.launches[0].run_id].spec.params == (("lr", "2"),)


def test_a_gpu_busy_with_a_foreign_process_is_not_handed_out():
    world = World([gpu_host(n=2, busy=("0",))])
    p = world.step([exp(row=2, lr="1"), exp(row=3, lr="2")])
    assert [launch.accelerators for launch in p.launches] == [("1",)]


def test_cpu_runs_take_slots():
    world = World([HostCapacity("cpu", slots=2)])
    p = world.step([exp(row=r, lr=str(r), gpus=0) for r in range(2, 6)])
    assert len(p.launches) == 2 and all(launch.accelerators == () for launch in p.launches)


def test_a_run_too_big_for_any_host_says_so():
    world = World([gpu_host(n=2)])
    world.step([exp(gpus=4)])
    assert "largest matching host has 2" in world.only_run().message


def test_an_unreachable_host_marks_its_runs_lost_and_waits_by_default():
    world = World([gpu_host("a"), gpu_host("b")])
    e = exp()
    world.step([e])
    e = claimed(world, e)
    world.step([e])
    world.down.add(world.only_run().host)
    p = world.step([e], advance_s=1000)
    assert world.only_run().status == Status.LOST and p.launches == []


def test_requeue_policy_moves_a_run_off_a_lost_host_and_fences_the_old_attempt():
    world = World([gpu_host("a"), gpu_host("b")],
                  Policy(**{**POLICY.__dict__, "on_host_lost": "requeue"}))
    e = exp()
    world.step([e])
    e = claimed(world, e)
    world.step([e])
    first = world.only_run().host
    world.down.add(first)
    world.step([e], advance_s=200)
    assert world.only_run().status == Status.RETRYING
    p = world.step([e], advance_s=20)
    assert world.only_run().host != first and len(p.launches) == 1
    world.down.clear()  # the old host comes back with the old attempt still running
    p = world.step([e])
    assert [(k.host, k.attempt) for k in p.kills] == [(first, 1)]


def test_a_launch_never_seen_by_the_probe_is_lost_after_the_launch_timeout():
    world = World([gpu_host()])
    e = exp()
    world.step([e])
    world.alive.clear()  # the launch never materialised
    world.step([claimed(world, e)], advance_s=10)
    assert world.only_run().status == Status.LAUNCHING
    world.step([claimed(world, e)], advance_s=30)
    assert world.only_run().status == Status.RETRYING


def test_an_edited_row_before_launch_takes_the_new_values():
    world = World([gpu_host(n=0)])
    e = exp()
    world.step([e])
    e2 = exp(run_id=world.last.rows[2], lr="0.5")
    world.step([e2])
    assert world.only_run().spec.params == (("lr", "0.5"),)


def test_an_id_the_store_lost_is_adopted_with_the_status_the_sheet_shows():
    world = World([gpu_host()])
    world.step([exp(run_id="abcdef01-x1", shown_status="succeeded",
                    shown=(("status", "succeeded"), ("metrics", "acc=0.9")))])
    assert world.runs["abcdef01-x1"].status == Status.SUCCEEDED
    assert world.runs["abcdef01-x1"].link.kept_cells["metrics"] == "acc=0.9"
    assert world.last.launches == []


def test_where_and_gpus_edited_after_a_crash_apply_to_the_next_attempt():
    world = World([gpu_host("a", 1), gpu_host("b", 4)])
    e = exp(where="a")
    world.step([e])
    e = claimed(world, e)
    world.finish(world.only_run().run_id, 1)
    world.step([e])
    moved = Experiment(**{**e.__dict__, "where": "b", "gpus": 3})
    p = world.step([moved], advance_s=20)
    assert [(launch.host, len(launch.accelerators)) for launch in p.launches] == [("b", 3)]


def test_a_draining_host_takes_no_new_runs_but_keeps_its_running_ones():
    world = World([gpu_host("a", 2), gpu_host("b", 2)])
    e = exp(row=2, lr="1", where="a")
    world.step([e])
    e = claimed(world, e)
    world.hosts[0] = HostCapacity("a", accelerators=("0", "1"), draining=True)
    p = world.step([e, exp(row=3, lr="2"), exp(row=4, lr="3", where="a")])
    assert world.runs[e.run_id].status == Status.RUNNING and p.kills == []
    assert [launch.host for launch in p.launches] == ["b"]
    assert world.runs[p.rows[4]].message == "waiting: every matching host is draining"


def test_an_id_erased_by_a_stale_save_is_taken_back_not_started_again():
    world = World([gpu_host()])
    e = exp()
    world.step([e])
    world.step([claimed(world, e)])  # the sheet showed the id: the run is confirmed
    run_id = world.only_run().run_id
    p = world.step([exp()])  # someone saved an old copy: the id cell is empty again
    assert p.rows == {2: run_id} and p.launches == [] and p.kills == []
    assert world.only_run().status == Status.RUNNING


def test_a_new_row_like_a_deleted_stopped_one_runs_again():
    world = World([gpu_host()])
    e = exp()
    world.step([e])
    world.step([claimed(world, e)])
    world.step([])  # row deleted: stopped
    p = world.step([exp(row=2)])
    assert len(p.launches) == 1 and len(world.runs) == 2


def test_a_typo_in_a_running_row_neither_kills_it_nor_hides_a_result():
    world = World([gpu_host(n=2)])
    a, b = exp(row=2, lr="1"), exp(row=3, lr="2")
    world.step([a, b])
    a, b = claimed(world, a), claimed(world, b)
    world.finish(b.run_id, 0)
    world.step([a, b])
    typo = {"error": "unknown job 'trian'"}
    p = world.step([Experiment(**{**a.__dict__, **typo}), Experiment(**{**b.__dict__, **typo})])
    assert p.kills == []
    assert world.runs[a.run_id].status == Status.RUNNING
    assert world.runs[b.run_id].status == Status.SUCCEEDED
    assert "invalid now (unknown job 'trian')" in world.runs[a.run_id].message


# -- identity: rows keep their runs through any edit; the store is a cache ---------------------


def _finish(world: World, code: int) -> None:
    for key in list(world.alive):
        del world.alive[key]
        world.outcome[key] = AttemptObservation(*key, AttemptState.EXITED, exit_code=code)


@pytest.mark.parametrize("code, final", [(0, Status.SUCCEEDED), (1, Status.FAILED)])
def test_a_final_run_whose_id_a_stale_save_erased_is_taken_back(code, final):
    world = World([gpu_host()], Policy(retries=0))
    e = exp()
    world.step([e])
    world.step([claimed(world, e)])
    _finish(world, code)
    world.step([claimed(world, e)])
    run_id = world.only_run().run_id
    assert world.runs[run_id].status == final
    p = world.step([exp()])  # an old copy saved over ours: the id cell is empty again
    assert p.rows == {2: run_id} and not p.launches and len(world.runs) == 1
    assert world.runs[run_id].status == final


def test_a_row_copied_with_its_id_and_edited_becomes_a_new_experiment_and_the_original_keeps_its_run():
    world = World([gpu_host(n=4)])
    original = exp(row=2, lr="0.1")
    world.step([original])
    shown = claimed(world, original)
    world.step([shown])
    run_id = world.only_run().run_id
    copy = exp(row=2, lr="0.5", run_id=run_id)  # pasted above the original, then edited
    moved = Experiment(**{**shown.__dict__, "row": 3})
    p = world.step([copy, moved])
    assert p.rows[3] == run_id and p.rows[2] != run_id
    assert world.runs[p.rows[2]].spec.params == (("lr", "0.5"),)
    assert not any(k.run_id == run_id for k in p.kills)
    assert world.runs[run_id].status == Status.RUNNING


def test_a_typed_over_id_of_a_running_row_is_put_right_not_stopped():
    world = World([gpu_host()])
    e = exp()
    world.step([e])
    world.step([claimed(world, e)])
    run_id = world.only_run().run_id
    p = world.step([exp(foreign_id="typed-over")])
    assert p.rows == {2: run_id} and not p.kills and not p.launches


def test_a_foreign_id_on_a_new_row_makes_it_invalid_with_the_fix():
    world = World([gpu_host()])
    p = world.step([exp(foreign_id="../../escaped")])
    assert not p.launches and not world.runs
    status, message = p.notes[2]
    assert status == Status.INVALID and "clear the id cell" in message


def _attempt_seen(run_id: str, attempt: int, state: AttemptState, key: str, **kw) -> AttemptObservation:
    return AttemptObservation(run_id, attempt, state, key=key, job="train", params=(("lr", "0.1"),),
                              gpus=1, accelerators=("0",), started_at=T0, heartbeat_at=T0, **kw)


def test_a_lost_store_rebuilds_the_run_from_its_live_attempt_and_kills_nothing():
    e = exp(run_id="abcdef01-x1")
    seen = _attempt_seen("abcdef01-x1", 3, AttemptState.RUNNING, e.key)
    host = HostObservation("a", True, T0, attempts=(seen,))
    p = plan([e], {}, {"a": host}, [gpu_host()], POLICY, T0)
    run = p.runs["abcdef01-x1"]
    assert (run.status, run.attempt, run.host, run.crashes) == (Status.RUNNING, 3, "a", 2)
    assert not p.kills and not p.launches


def test_a_store_restored_from_an_older_copy_adopts_the_newer_attempt():
    world = World([gpu_host()])
    e = exp()
    world.step([e])
    world.step([claimed(world, e)])
    old = dict(world.runs)  # the backup
    run_id = world.only_run().run_id
    world.step([claimed(world, e)], advance_s=1)
    world.alive.pop((run_id, 1))
    world.outcome[(run_id, 1)] = AttemptObservation(run_id, 1, AttemptState.EXITED, exit_code=1)
    world.step([claimed(world, e)], advance_s=20)  # crashed: retried as attempt 2
    world.step([claimed(world, e)], advance_s=20)
    assert (run_id, 2) in world.alive
    world.runs = old  # the state directory restored from the backup
    p = world.step([claimed(world, e)])
    assert not p.kills and not p.launches
    assert world.runs[run_id].attempt == 2 and world.runs[run_id].status == Status.RUNNING


def test_an_orphan_live_attempt_is_taken_back_by_the_row_of_its_experiment():
    e = exp()  # the claim never reached the sheet, and then the state was lost
    seen = _attempt_seen("abcdef01-x1", 1, AttemptState.RUNNING, e.key)
    host = HostObservation("a", True, T0, attempts=(seen,))
    p = plan([e], {}, {"a": host}, [gpu_host()], POLICY, T0)
    assert p.rows == {2: "abcdef01-x1"} and not p.launches and not p.kills


def test_a_lost_store_and_a_row_showing_a_live_status_waits_for_its_host():
    e = exp(run_id="abcdef01-x1", shown_status="running",
            shown=(("status", "running"), ("host", "a"), ("attempt", "2"), ("metrics", "acc=0.5")))
    down = HostObservation("a", False, T0, error="down", down_since=T0)
    p = plan([e], {}, {"a": down}, [gpu_host()], POLICY, T0)
    run = p.runs["abcdef01-x1"]
    assert run.status == Status.LOST and run.attempt == 2 and not p.launches
    assert run.link.kept_cells["metrics"] == "acc=0.5"


# -- rows no host could ever take ---------------------------------------------------------------


@pytest.mark.parametrize("row, reason", [
    (exp(gpus=8), "needs 8 accelerators"),
    (exp(where="nowhere"), "no host is named or labelled 'nowhere'"),
])
def test_a_row_no_host_could_ever_take_is_unplaceable_and_says_why(row, reason):
    world = World([gpu_host(n=2)])
    world.step([row])
    run = world.only_run()
    assert run.status == Status.UNPLACEABLE and reason in run.message
    assert not world.last.launches


def test_an_unplaceable_row_runs_once_a_host_that_fits_joins():
    world = World([gpu_host(n=2)])
    e = exp(gpus=4)
    world.step([e])
    assert world.only_run().status == Status.UNPLACEABLE
    world.hosts.append(gpu_host("big", n=8))  # the config gained a host
    world.step([claimed(world, e)])
    assert world.only_run().status == Status.LAUNCHING and world.only_run().host == "big"


def test_an_auto_host_not_probed_yet_makes_nothing_unplaceable():
    world = World([HostCapacity("a", accelerators=(), known=False)])
    world.step([exp(gpus=4)])
    assert world.only_run().status == Status.QUEUED


# -- outcomes fed back to the core ----------------------------------------------------------------


def _launch_fails(world: World) -> str:
    """The daemon could not send the launch: it reports that, and the next cycle decides."""
    (launch,) = world.last.launches
    world.alive.pop((launch.run_id, launch.attempt), None)
    world.runs[launch.run_id].launch_error = "agent launch failed: refused"
    return launch.host


def test_a_failed_launch_is_a_crash_with_backoff_bounded_by_retries_and_tries_another_host():
    world = World([gpu_host("a"), gpu_host("b")], Policy(retries=1, backoff_s=10))
    e = exp()
    world.step([e])
    failed_on = _launch_fails(world)
    world.step([claimed(world, e)])
    run = world.only_run()
    assert run.status == Status.RETRYING and run.crashes == 1 and "launch on" in run.message
    world.step([claimed(world, e)], advance_s=11)
    (again,) = world.last.launches
    assert again.host != failed_on and again.attempt == 2
    _launch_fails(world)
    world.step([claimed(world, e)])
    assert world.only_run().status == Status.FAILED  # never past `retries`, never forever


def test_a_stalled_run_whose_kill_did_not_land_is_sent_the_kill_again():
    world = World([gpu_host()], Policy(hang_timeout_s=30, retries=1))
    e = exp()
    world.step([e])
    world.step([claimed(world, e)])
    key = next(iter(world.alive))
    world.heartbeat[key] = world.now - timedelta(seconds=100)
    first = world.step([claimed(world, e)])
    assert world.only_run().status == Status.STALLED and first.kills
    world.alive[key] = "a"  # the kill did not land (a frozen process ignores SIGTERM)
    del world.outcome[key]
    again = world.step([claimed(world, e)])
    assert [(k.run_id, k.attempt) for k in again.kills] == [key]
    assert not again.launches  # no next attempt while the stalled one lives


def test_a_run_that_launched_keeps_its_values_when_its_row_is_made_invalid_then_fixed():
    world = World([gpu_host()], Policy(retries=2, backoff_s=100))
    e = exp(lr="0.1")
    world.step([e])
    world.step([claimed(world, e)])
    run_id = world.only_run().run_id
    _finish(world, 1)  # crashed: retrying, attempt 2 not yet launched
    world.step([claimed(world, e)])
    assert world.runs[run_id].status == Status.RETRYING
    broken = Experiment(**{**claimed(world, e).__dict__, "error": "gpus must be a whole number"})
    world.step([broken])
    assert world.runs[run_id].status == Status.RETRYING
    fixed = exp(lr="0.5", run_id=run_id)
    world.step([fixed], advance_s=200)
    run = world.runs[run_id]
    assert run.spec.params == (("lr", "0.1"),) and run.spec.key == e.key  # attempt 2 resumes 0.1's run
    assert run.attempt == 2 and run.status == Status.LAUNCHING


def test_a_retry_waits_until_the_attempt_it_replaces_is_seen_gone():
    world = World([gpu_host()], Policy(hang_timeout_s=30, retries=2, backoff_s=1))
    e = exp()
    world.step([e])
    world.step([claimed(world, e)])
    key = next(iter(world.alive))
    world.heartbeat[key] = world.now - timedelta(seconds=100)
    for _ in range(4):  # frozen (SIGSTOP): every kill is sent, none takes effect
        p = world.step([claimed(world, e)], advance_s=10)
        assert not p.launches and any(k.attempt == key[1] for k in p.kills)
        world.alive[key] = "a"
        world.outcome.pop(key, None)
    world.alive.pop(key)  # gone at last
    world.outcome[key] = AttemptObservation(*key, AttemptState.EXITED, exit_code=137)
    world.step([claimed(world, e)], advance_s=10)
    world.step([claimed(world, e)], advance_s=10)
    assert world.only_run().attempt == key[1] + 1


def test_no_next_attempt_while_the_previous_one_still_runs_on_a_reachable_host():
    e = exp(run_id="abcdef01-x1")
    run = make_run(run_id="abcdef01-x1", key=e.key, job="train", params=e.params, gpus=1, where=None,
              status=Status.RETRYING, created_at=T0, updated_at=T0, retries=2, attempt=1,
              host="a", accelerators=("0",), crashes=1, in_sheet=True,
              next_attempt_at=T0 - timedelta(seconds=1))
    alive = AttemptObservation("abcdef01-x1", 1, AttemptState.RUNNING, heartbeat_at=T0)
    host = HostObservation("a", True, T0, attempts=(alive,))
    p = plan([e], {run.run_id: run}, {"a": host}, [gpu_host()], POLICY, T0)
    assert not p.launches and p.kills and p.kills[0].attempt == 1
    assert "waiting for attempt 1" in p.runs[run.run_id].message
    gone = HostObservation("a", True, T0, attempts=(
        AttemptObservation("abcdef01-x1", 1, AttemptState.EXITED, exit_code=143),))
    p = plan([e], {run.run_id: run}, {"a": gone}, [gpu_host()], POLICY, T0)
    assert [launch.attempt for launch in p.launches] == [2]


def test_an_exit_code_that_no_retry_can_fix_fails_at_once():
    world = World([gpu_host()], Policy(retries=3, no_retry_exit_codes={"train": (2,)}))
    e = exp()
    world.step([e])
    world.step([claimed(world, e)])
    _finish(world, 2)
    world.step([claimed(world, e)])
    run = world.only_run()
    assert run.status == Status.FAILED and run.crashes == 0 and "not retried" in run.message


# -- time limits, unknown outcomes, leftovers -----------------------------------------------------


def test_past_its_time_limit_a_run_is_killed_and_fails_saying_so():
    world = World([gpu_host()], Policy(retries=3, hang_timeout_s=10_000, time_limit_s=7200))
    e = exp()
    world.step([e])
    world.step([claimed(world, e)])
    key = next(iter(world.alive))
    world.heartbeat[key] = world.now + timedelta(seconds=7300)  # healthy all along
    p = world.step([claimed(world, e)], advance_s=7300)
    assert [k.attempt for k in p.kills] == [1]
    world.step([claimed(world, e)])
    run = world.only_run()
    assert run.status == Status.FAILED and run.message == "time limit 2h reached"
    assert not world.last.launches


def test_a_rows_time_limit_beats_the_jobs_and_the_default():
    world = World([gpu_host()], Policy(hang_timeout_s=10_000, time_limit_s=7200,
                                       job_time_limit_s={"train": 3600}))
    e = exp(time_limit_s=60)
    world.step([e])
    world.step([claimed(world, e)])
    world.heartbeat[next(iter(world.alive))] = world.now + timedelta(seconds=100)
    p = world.step([claimed(world, e)], advance_s=90)
    assert p.kills and "time limit 1m" in p.kills[0].reason


def test_an_outcome_the_host_cannot_know_says_so_and_is_retried():
    world = World([gpu_host()])
    e = exp()
    world.step([e])
    world.step([claimed(world, e)])
    key = world.alive.popitem()[0]
    world.outcome[key] = AttemptObservation(*key, AttemptState.VANISHED,
                                            reason="supervisor killed; outcome unknown")
    world.step([claimed(world, e)])
    run = world.only_run()
    assert run.status == Status.RETRYING and "outcome unknown" in run.message
    assert "resuming its checkpoint" in run.message


def test_leftover_processes_killed_at_the_end_of_an_attempt_are_named():
    world = World([gpu_host()])
    e = exp()
    world.step([e])
    world.step([claimed(world, e)])
    key = world.alive.popitem()[0]
    world.outcome[key] = AttemptObservation(*key, AttemptState.EXITED, exit_code=0,
                                            leftovers="4242 python loader.py")
    world.step([claimed(world, e)])
    run = world.only_run()
    assert run.status == Status.SUCCEEDED and "4242 python loader.py" in run.message


def test_an_unhealthy_gpu_gets_no_run_and_a_run_on_it_says_so():
    from sheetrunner.config import HostConfig
    from sheetrunner.model import Accelerator
    from sheetrunner.pool.hosts import capacity

    sick = Accelerator("0", healthy=False, health="uncorrected ECC errors: 3")
    seen = HostObservation("a", True, T0, accelerators=(sick, Accelerator("1")))
    cap = capacity(HostConfig(name="a", accelerators=2), seen)
    assert "0" in cap.busy and "1" not in cap.busy
    e = exp(run_id="abcdef01-x1")
    run = make_run("abcdef01-x1", key=e.key, params=e.params, status=Status.RUNNING,
                   created_at=T0, attempt=1, host="a", accelerators=("0",), in_sheet=True,
                   attempt_started_at=T0)
    alive = AttemptObservation("abcdef01-x1", 1, AttemptState.RUNNING, heartbeat_at=T0)
    seen = HostObservation("a", True, T0, accelerators=(sick,), attempts=(alive,))
    p = plan([e], {run.run_id: run}, {"a": seen}, [cap], POLICY, T0)
    assert "GPU 0 unhealthy: uncorrected ECC errors" in p.runs[run.run_id].message
