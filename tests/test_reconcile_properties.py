"""Property tests of the core over random histories: what must hold whatever happens."""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_reconcile import POLICY, World, exp, gpu_host

from sheetrunner.model import Action, Experiment, Status
from sheetrunner.reconcile import HostCapacity, Policy

EVENTS = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 3), st.integers(0, 3)),  # lr choice, gpus
    st.tuples(st.just("action"), st.integers(0, 20), st.sampled_from(list(Action))),
    st.tuples(st.just("exit"), st.integers(0, 20), st.sampled_from([0, 1, 137])),
    st.tuples(st.just("beat"), st.integers(0, 20), st.just(0)),
    st.tuples(st.just("delete"), st.integers(0, 20), st.just(0)),
    st.tuples(st.just("host"), st.integers(0, 1), st.booleans()),
    st.tuples(st.just("sheet-down"), st.just(0), st.just(0)),
    st.tuples(st.just("wait"), st.integers(1, 200), st.just(0)),
)


def run_history(events, policy: Policy) -> None:
    world = World([gpu_host("a", 2), gpu_host("b", 4), HostCapacity("c", slots=1)], policy)
    rows: list[Experiment] = []
    given_out: dict[tuple[str, int], tuple[str, tuple[str, ...]]] = {}
    for kind, x, y in events:
        advance = 5.0
        sheet_readable = True
        if kind == "add":
            rows.append(exp(row=len(rows) + 2, lr=str(x), gpus=y))
        elif kind == "action" and rows:
            e = rows[x % len(rows)]
            rows[x % len(rows)] = Experiment(**{**e.__dict__, "action": y})
        elif kind == "exit" and world.alive:
            key = sorted(world.alive)[x % len(world.alive)]
            if world.runs[key[0]].attempt == key[1] and world.alive[key] not in world.down:
                world.finish(key[0], y)
        elif kind == "beat":
            for key in world.alive:
                world.heartbeat[key] = world.now
        elif kind == "delete" and rows:
            del rows[x % len(rows)]
            rows = [Experiment(**{**e.__dict__, "row": i + 2}) for i, e in enumerate(rows)]
        elif kind == "host":
            name = "ab"[x]
            (world.down.add if y else world.down.discard)(name)
        elif kind == "sheet-down":
            sheet_readable = False
        elif kind == "wait":
            advance = float(x)
        sheet = rows if sheet_readable else None
        plan = world.step(sheet, advance_s=advance)
        if sheet is not None:
            rows = [Experiment(**{**e.__dict__, "run_id": plan.rows.get(e.row, e.run_id)})
                    for e in rows]
            check_every_row_has_one_status(rows, plan)
        for launch in plan.launches:
            key = (launch.run_id, launch.attempt)
            assert key not in given_out, "an attempt was launched twice"
            given_out[key] = (launch.host, launch.accelerators)
        check_one_live_attempt_per_run(world)
        check_no_accelerator_handed_out_twice(world, given_out)


def check_every_row_has_one_status(rows: list[Experiment], plan) -> None:
    for e in rows:
        assert (e.row in plan.rows) != (e.row in plan.notes), f"row {e.row} has no single status"


def check_one_live_attempt_per_run(world: World) -> None:
    reachable = [k for k, h in world.alive.items() if h not in world.down]
    counts = Counter(run_id for run_id, _ in reachable)
    assert all(n == 1 for n in counts.values()), f"two live attempts: {counts}"
    for run_id, attempt in reachable:  # fencing: whatever runs is a live run's newest attempt
        run = world.runs[run_id]
        assert run.attempt == attempt, f"stale attempt {attempt} of {run_id} left running"
        assert run.status.is_live, f"{run_id} is {run.status} but still running"


def check_no_accelerator_handed_out_twice(world: World, given_out) -> None:
    held: Counter[tuple[str, str]] = Counter()
    for key, host in world.alive.items():
        for acc in given_out[key][1]:
            held[(host, acc)] += 1
    assert all(n == 1 for n in held.values()), f"over-committed: {held}"
    for host in world.hosts:
        assert sum(n for (h, _), n in held.items() if h == host.name) <= len(host.accelerators)


SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.lists(EVENTS, max_size=40))
def test_random_histories_wait_policy(events):
    run_history(events, POLICY)


@SETTINGS
@given(st.lists(EVENTS, max_size=40))
def test_random_histories_requeue_policy(events):
    run_history(events, Policy(**{**POLICY.__dict__, "on_host_lost": "requeue"}))


def test_statuses_are_the_sheet_texts():
    assert [s.value for s in Status][:3] == ["queued", "launching", "running"]
