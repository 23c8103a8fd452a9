"""Runs across hosts in the pure core, cycle by cycle: placed all at once or not at all, one
attempt judged from every node, retried whole, slices taken whole, no starvation either way."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sheetrunner.config import HostConfig
from sheetrunner.gang import Slice, coordinator_port, shown_host
from sheetrunner.model import (
    AttemptObservation,
    AttemptState,
    Experiment,
    HostObservation,
    Run,
    Status,
)
from sheetrunner.pool.nodes import for_node
from sheetrunner.reconcile import HostCapacity, Launch, Plan, Policy, plan
from sheetrunner.sheet.schema import experiment_key

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = Policy(retries=2, hang_timeout_s=60, backoff_s=10, backoff_max_s=100,
                launch_timeout_s=30, host_lost_timeout_s=20, reserve_after_cycles=3)


def row(r: int, nodes: int = 2, gpus: int = 2, lr: str = "0.1", **kw) -> Experiment:
    params = (("lr", lr),)
    return Experiment(row=r, run_id=None, job="train", params=params,
                      key=experiment_key("train", params), gpus=gpus, nodes=nodes, **kw)


def hosts(*names: str, gpus: int = 2) -> list[HostCapacity]:
    return [HostCapacity(n, accelerators=tuple(str(i) for i in range(gpus))) for n in names]


class Cluster:
    """Carries plans out on paper, one process per (run, attempt, host)."""

    def __init__(self, capacity: list[HostCapacity], policy: Policy = POLICY):
        self.capacity = capacity
        self.policy = policy
        self.runs: dict[str, Run] = {}
        self.alive: set[tuple[str, int, str]] = set()
        self.ended: dict[tuple[str, int, str], AttemptObservation] = {}
        self.down: set[str] = set()
        self.silent: set[str] = set()
        self.now = T0
        self.last = Plan()
        self.live_attempts_seen: list[set[tuple[str, int]]] = []

    def step(self, rows: list[Experiment], advance_s: float = 5) -> Plan:
        self.now += timedelta(seconds=advance_s)
        capacity = [HostCapacity(h.name, h.labels, h.accelerators, reachable=h.name not in self.down)
                    for h in self.capacity]
        self.last = plan(rows, self.runs, self.observe(), capacity, self.policy, self.now,
                         new_id=lambda key: f"{key[:8]}-r{len(self.runs):05d}")
        self.runs.update(self.last.runs)
        for kill in self.last.kills:
            self.end(kill.run_id, kill.attempt, kill.host, 143)
        for launch in self.last.launches:
            self.alive.add((launch.run_id, launch.attempt, launch.host))
        self.live_attempts_seen.append({(r, a) for r, a, _ in self.alive})
        return self.last

    def end(self, run_id: str, attempt: int, host: str, code: int) -> None:
        key = (run_id, attempt, host)
        if key in self.alive and host not in self.down:
            self.alive.discard(key)
            self.ended[key] = AttemptObservation(run_id, attempt, AttemptState.EXITED,
                                                 exit_code=code)

    def observe(self) -> dict[str, HostObservation]:
        seen = {}
        for h in self.capacity:
            if h.name in self.down:
                seen[h.name] = HostObservation(h.name, False, self.now, error="down",
                                               down_since=self.down_since)
                continue
            beat = T0 if h.name in self.silent else self.now  # a node whose job hangs
            attempts = [AttemptObservation(r, a, AttemptState.RUNNING, heartbeat_at=beat)
                        for r, a, host in self.alive if host == h.name]
            attempts += [o for (r, a, host), o in self.ended.items() if host == h.name]
            seen[h.name] = HostObservation(h.name, True, self.now, attempts=tuple(attempts))
        return seen

    def lose(self, host: str) -> None:
        self.down.add(host)
        self.down_since = self.now

    def only_run(self) -> Run:
        (run,) = self.runs.values()
        return run


def test_a_two_node_row_gets_two_hosts_in_one_cycle_as_one_attempt():
    cluster = Cluster(hosts("a", "b", "c"))
    first = cluster.step([row(2)])
    assert sorted(launch.host for launch in first.launches) == ["a", "b"]
    ranks = {launch.host: launch for launch in first.launches}
    assert [ranks["a"].node_rank, ranks["b"].node_rank] == [0, 1]
    assert {(x.attempt, x.nodes, x.coordinator_port) for x in first.launches} == {
        (1, ("a", "b"), coordinator_port(first.launches[0].run_id, 1))}
    run = cluster.only_run()
    assert (run.status, run.host, run.spread) == (
        Status.LAUNCHING, "a", (("a", ("0", "1")), ("b", ("0", "1"))))
    assert cluster.step([row(2)]).launches == []
    assert cluster.only_run().status == Status.RUNNING
    assert shown_host(cluster.only_run()) == "a+b"


def test_one_node_exiting_non_zero_kills_the_others_and_the_attempt_is_retried_whole():
    cluster = Cluster(hosts("a", "b"))
    cluster.step([row(2)])
    cluster.step([row(2)])
    run_id = cluster.only_run().run_id
    cluster.end(run_id, 1, "b", 1)
    crash = cluster.step([row(2)])
    run = cluster.only_run()
    assert run.status == Status.RETRYING and run.crashes == 1
    assert "node 1 on b" in run.message
    assert [(k.host, k.attempt) for k in crash.kills] == [("a", 1)]  # fenced in the same cycle
    for _ in range(3):  # the backoff (10 s)
        cluster.step([row(2)])
    assert cluster.only_run().attempt == 2
    assert sorted(h for r, a, h in cluster.alive if a == 2) == ["a", "b"]
    cluster.step([row(2)])
    for host in ("a", "b"):
        cluster.end(run_id, 2, host, 0)
    cluster.step([row(2)])
    assert cluster.only_run().status == Status.SUCCEEDED
    assert all(len(live) <= 1 for live in cluster.live_attempts_seen)  # never two attempts


def test_a_node_still_running_holds_back_the_retry_until_it_is_seen_gone():
    cluster = Cluster(hosts("a", "b"))
    cluster.step([row(2)])
    cluster.step([row(2)])
    run_id = cluster.only_run().run_id
    cluster.end(run_id, 1, "a", 1)
    cluster.down.add("b")  # b's kill cannot land: its node stays alive there
    cluster.down_since = cluster.now
    cluster.step([row(2)])
    cluster.down.discard("b")
    plan_ = cluster.step([row(2)], advance_s=30)
    assert plan_.launches == [] and "waiting for attempt 1 on a+b to end" in (
        cluster.only_run().message)
    assert ("b", 1) in [(k.host, k.attempt) for k in plan_.kills]
    cluster.step([row(2)])
    assert cluster.only_run().attempt == 2


def test_one_node_that_hangs_stalls_the_attempt_and_every_node_is_killed():
    cluster = Cluster(hosts("a", "b"))
    cluster.step([row(2)])
    cluster.step([row(2)])
    cluster.silent.add("b")
    stalled = cluster.step([row(2)], advance_s=61)  # past hang_timeout (60 s)
    assert cluster.only_run().status == Status.STALLED
    assert sorted(k.host for k in stalled.kills) == ["a", "b"]
    cluster.step([row(2)])
    assert cluster.only_run().status == Status.RETRYING


def test_a_lost_host_makes_the_run_lost_then_one_crash_retried_whole():
    cluster = Cluster(hosts("a", "b", "c"))
    cluster.step([row(2)])
    cluster.step([row(2)])
    run_id = cluster.only_run().run_id
    cluster.lose("b")
    cluster.step([row(2)])
    assert cluster.only_run().status == Status.LOST
    assert "host b (node 1) unreachable" in cluster.only_run().message
    crash = cluster.step([row(2)], advance_s=25)  # past host_lost_timeout (20 s)
    assert cluster.only_run().status == Status.RETRYING
    assert [k.host for k in crash.kills] == ["a"]
    cluster.step([row(2)], advance_s=15)
    run = cluster.only_run()
    assert run.attempt == 2 and sorted(run.spread) == [("a", ("0", "1")), ("c", ("0", "1"))]
    assert (run_id, 1, "a") not in cluster.alive


def test_a_slice_is_placed_only_whole_and_its_hosts_take_nothing_else():
    names = ("t0", "t1", "t2", "t3")
    policy = Policy(retries=1, slices=(Slice("v4-32-a", names),))
    cluster = Cluster(hosts(*names, "x", "y", gpus=4), policy)
    rows = [row(2, nodes=2, gpus=4, lr="a"), row(3, nodes=1, gpus=1, lr="b", where="t0"),
            row(4, nodes=4, gpus=4, lr="c")]
    cluster.down.add("t3")
    cluster.down_since = cluster.now
    cluster.step(rows)
    by_row = {r.link.row: r for r in cluster.runs.values()}
    assert {h for h, _ in by_row[2].spread} == {"x", "y"}  # never two of the slice's hosts
    assert by_row[3].status == Status.UNPLACEABLE
    assert "belongs to slice v4-32-a" in by_row[3].message and "nodes = 4" in by_row[3].message
    assert by_row[4].status == Status.QUEUED  # t3 is down: the slice is not whole
    assert "slice v4-32-a whole and free" in by_row[4].message
    cluster.down.clear()
    cluster.step(rows)
    run = {r.link.row: r for r in cluster.runs.values()}[4]
    assert [h for h, _ in run.spread] == list(names)
    assert all(len(accs) == 4 for _, accs in run.spread)
    assert shown_host(run) == "v4-32-a"


def test_a_row_no_hosts_could_ever_take_is_unplaceable_with_the_fix():
    cluster = Cluster(hosts("a", "b"))
    cluster.step([row(2, nodes=3)])
    run = cluster.only_run()
    assert run.status == Status.UNPLACEABLE
    assert "needs 3 hosts with 2 accelerators each; the config has 2 such hosts" in run.message


def _stream(cycle: int) -> list[Experiment]:
    """A 1-GPU row arriving every other cycle (rows 3, 4, ...), each running 3 cycles."""
    return [row(3 + i, nodes=1, gpus=1, lr=f"s{i}") for i in range(cycle // 2 + 1)]


def test_a_two_node_row_and_a_stream_of_one_host_rows_do_not_starve_each_other():
    cluster = Cluster(hosts("a", "b"))
    started: dict[str, int] = {}
    big = row(2, nodes=2, gpus=2, lr="big")
    for cycle in range(40):
        cluster.step([big, *_stream(cycle)] if cycle >= 4 else _stream(cycle))
        for launch in cluster.last.launches:
            started.setdefault(launch.run_id, cycle)
        for (run_id, attempt, host) in list(cluster.alive):
            if cycle - started[run_id] >= 3:
                cluster.end(run_id, attempt, host, 0)
    by_row = {r.link.row: r for r in cluster.runs.values()}
    big_run = by_row[2]
    assert big_run.status == Status.SUCCEEDED  # not starved by the stream
    # It waited a bounded number of cycles: reserve_after_cycles, then the held hosts drained.
    assert started[big_run.run_id] - 4 <= POLICY.reserve_after_cycles + 1 + 3
    # One-host rows ran before it (nothing was held at first) and after it (hosts released).
    before = [r for r in by_row.values() if started.get(r.run_id, 99) < started[big_run.run_id]]
    after = [r for r in by_row.values() if started.get(r.run_id, -1) > started[big_run.run_id]]
    assert before and after
    assert by_row[3].status == Status.SUCCEEDED
    # And no one-host row waited long: at most while the 2-node row drained its hosts and
    # ran (3 cycles each), and rows arriving after it start at once again.
    waits = [started[r.run_id] - 2 * (r.link.row - 3) for r in sorted(by_row.values(),
             key=lambda r: r.link.row) if r.link.row >= 3 and r.run_id in started]
    assert len(waits) >= 15 and max(waits) <= 3 + 3 + 1 and waits[-5:] == [0] * 5


def test_priority_applies_to_a_row_across_hosts_as_to_any_row():
    cluster = Cluster(hosts("a", "b"))
    one = row(2, nodes=1, gpus=2, lr="one")
    big = row(3, nodes=2, gpus=2, lr="big", priority=5)
    first = cluster.step([one, big])
    assert sorted(launch.host for launch in first.launches) == ["a", "b"]
    by_row = {r.link.row: r for r in cluster.runs.values()}
    assert by_row[3].status == Status.LAUNCHING and by_row[2].status == Status.QUEUED


def test_pool_shows_a_run_across_hosts_on_every_node_and_commands_take_placeholders(tmp_path):
    from sheetrunner.config import parse
    from sheetrunner.views import holders
    from tests.helpers import make_run

    run = make_run("r1", status=Status.RUNNING, host="a", accelerators=("0",),
                   spread=(("a", ("0",)), ("b", ("1",))))
    assert holders([run]) == {("a", "0"): "r1", ("b", "1"): "r1"}
    config = parse({"sheet": {"path": "x.xlsx"}, "hosts": [{"name": "h0"}],
                    "jobs": {"t": {"command": ["torchrun", "--node-rank", "{node_rank}",
                                               "--rdzv-endpoint", "{coordinator}", "x.py"]}}},
                   tmp_path / "c.toml")
    assert "{node_rank}" in config.jobs["t"].command


def test_a_waiting_row_says_what_it_waits_for_and_which_hosts_it_holds():
    cluster = Cluster(hosts("a", "b"))
    rows = [row(3, nodes=1, gpus=2, lr="x")]
    cluster.step(rows)  # a takes the first one-host row
    rows = [*rows, row(2, nodes=2, gpus=2, lr="big")]
    messages = []
    for _ in range(5):
        cluster.step(rows)
        big = next(r for r in cluster.runs.values() if r.link.row == 2)
        messages.append(big.message)
    assert messages[0].startswith("waiting for 2 hosts with 2 free accelerators each")
    assert "(1 has them now)" in messages[0] and "holding" not in messages[0]
    assert "holding a, b for it as they free up" in messages[-1]


def test_each_node_gets_the_same_argv_with_its_rank_and_the_coordinator():
    spec = {"argv": ["torchrun", "--node-rank", "{node_rank}", "--nnodes", "{num_nodes}",
                     "--rdzv-endpoint", "{coordinator}", "--lr", "0.1"], "env": {"A": "1"}}
    launch = Launch("r", 3, "b", ("0",), 1, ("a", "b"), 29999)
    done = for_node(spec, launch, HostConfig("a", address="10.0.0.5"))
    assert done["argv"] == ["torchrun", "--node-rank", "1", "--nnodes", "2",
                            "--rdzv-endpoint", "10.0.0.5:29999", "--lr", "0.1"]
    assert {k: done["env"][k] for k in (
        "SHEETRUNNER_NODE_RANK", "SHEETRUNNER_NUM_NODES", "SHEETRUNNER_COORDINATOR",
        "MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "WORLD_SIZE", "JAX_COORDINATOR_ADDRESS",
        "JAX_PROCESS_ID", "JAX_NUM_PROCESSES", "A")} == {
        "SHEETRUNNER_NODE_RANK": "1", "SHEETRUNNER_NUM_NODES": "2",
        "SHEETRUNNER_COORDINATOR": "10.0.0.5:29999", "MASTER_ADDR": "10.0.0.5",
        "MASTER_PORT": "29999", "NODE_RANK": "1", "WORLD_SIZE": "2",
        "JAX_COORDINATOR_ADDRESS": "10.0.0.5:29999", "JAX_PROCESS_ID": "1",
        "JAX_NUM_PROCESSES": "2", "A": "1"}
    single = for_node({"argv": ["x", "{node_rank}"], "env": {}}, Launch("r", 1, "a", ()),
                      HostConfig("a", local=True))
    assert single == {"argv": ["x", "0"], "env": {}}  # one host: no distributed environment


@pytest.mark.parametrize(("raw", "says"), [
    ({"name": "s", "hosts": ["h0"]}, "slices[s].hosts = ['h0']; list two or more"),
    ({"name": "s", "hosts": ["h0", "nope"]}, "slices[s].hosts names 'nope'"),
    ({"name": "h0", "hosts": ["h0", "h1"]}, "give the slice a name of its own"),
    ({"hosts": ["h0", "h1"]}, "slices[0].name is missing"),
    ({"name": "s", "hosts": ["h0", "h1"], "size": 2}, "unknown key 'slices[0].size'"),
    ({"name": "s", "hosts": "v5e"}, "slices[s].hosts = 'v5e' is a label no [[hosts]] entry has"),
])
def test_a_bad_slice_fails_at_start_naming_the_key_and_the_fix(tmp_path, raw, says):
    from sheetrunner.config import parse
    from sheetrunner.errors import ConfigError

    config = {"sheet": {"path": "x.xlsx"}, "jobs": {"t": {"command": ["true"]}},
              "hosts": [{"name": "h0"}, {"name": "h1"}], "slices": [raw]}
    with pytest.raises(ConfigError) as err:
        parse(config, tmp_path / "c.toml")
    assert says in str(err.value)


def test_a_slice_may_name_its_hosts_by_a_label(tmp_path):
    from sheetrunner.config import parse

    config = parse({"sheet": {"path": "x.xlsx"}, "jobs": {"t": {"command": ["true"]}},
                    "hosts": [{"name": "h0", "labels": ["v4"]}, {"name": "x"},
                              {"name": "h1", "labels": ["v4"]}],
                    "slices": [{"name": "s", "hosts": "v4"}]}, tmp_path / "c.toml")
    assert config.slices == (Slice("s", ("h0", "h1")),)


def test_the_nodes_column_defaults_to_one_and_refuses_zero():
    from sheetrunner.sheet.schema import parse_table
    from sheetrunner.sheet.table import Table

    table = Table(header=["job", "--lr", "nodes"], rows=[["t", "1", ""], ["t", "2", "2"],
                                                        ["t", "3", "0"]])
    found = {e.row: e for e in parse_table(table, {"t"})}
    assert (found[2].nodes, found[3].nodes) == (1, 2)
    assert "nodes must be at least 1" in (found[4].error or "")


HISTORY = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(1, 3), st.integers(0, 2)),  # nodes, gpus
    st.tuples(st.just("exit"), st.integers(0, 50), st.sampled_from([0, 1, 137])),
    st.tuples(st.just("host"), st.integers(0, 2), st.booleans()),  # down / back
    st.tuples(st.just("wait"), st.integers(1, 60), st.just(0)),
), max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(HISTORY)
def test_whatever_happens_no_run_has_two_live_attempts_and_no_accelerator_is_given_twice(events):
    cluster = Cluster(hosts("a", "b", "c"))
    rows: list[Experiment] = []
    for kind, x, y in events:
        advance = 5.0
        if kind == "add":
            rows.append(row(len(rows) + 2, nodes=x, gpus=y, lr=str(len(rows))))
        elif kind == "exit" and cluster.alive:
            run_id, attempt, host = sorted(cluster.alive)[x % len(cluster.alive)]
            cluster.end(run_id, attempt, host, y)
        elif kind == "host":
            name = "abc"[x]
            if y and name not in cluster.down:
                cluster.lose(name)
            elif not y:
                cluster.down.discard(name)
        elif kind == "wait":
            advance = float(x)
        cluster.step(rows, advance_s=advance)
        live_on = {(r, a) for r, a, h in cluster.alive if h not in cluster.down}
        assert len({r for r, _ in live_on}) == len(live_on)  # one attempt per run, at most
        given: list[tuple[str, str]] = [
            (host, acc)
            for run in cluster.runs.values() if run.status.is_live
            for host, accs in (run.spread or ((run.host or "", run.accelerators),))
            for acc in accs
        ]
        assert len(given) == len(set(given))  # never an accelerator handed out twice


def test_ps_host_filter_finds_a_run_across_hosts_by_any_of_its_hosts():
    from sheetrunner.views import ps_filter

    entry = {"status": "running", "job": "t", "sweep": "", "host": "a+b"}
    assert ps_filter(host=["b"])(entry) and ps_filter(host=["a+b"])(entry)
    assert not ps_filter(host=["c"])(entry)
