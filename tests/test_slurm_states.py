"""The table of how Slurm's word and an attempt's files become one observation (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sheetrunner import config as config_module
from sheetrunner.errors import ConfigError
from sheetrunner.model import AttemptObservation, AttemptState, Status
from sheetrunner.model import AttemptState as A
from sheetrunner.pool.slurm import partition_summary, sbatch_args
from sheetrunner.slurm_states import SlurmJob, verdict

CASES = [
    # files say, exit code, Slurm says (state, reason) -> state, exit code, reason contains
    (A.STARTING, None, ("PENDING", "Priority"), A.QUEUED, None, "Priority"),
    (A.STARTING, None, ("PENDING", "QOSMaxGRESPerUser"), A.QUEUED, None, "QOSMaxGRESPerUser"),
    (A.EXITED, 143, ("PENDING", "BeginTime"), A.QUEUED, None, "BeginTime"),  # requeued
    (A.STARTING, None, ("RUNNING", "None"), A.RUNNING, None, ""),
    (A.EXITED, 143, ("RUNNING", "None"), A.RUNNING, None, ""),  # a previous start's file
    (A.EXITED, 0, ("COMPLETED", "None"), A.EXITED, 0, ""),
    (A.EXITED, 1, ("FAILED", "NonZeroExitCode"), A.EXITED, 1, "Slurm: FAILED"),
    (A.EXITED, 143, ("TIMEOUT", "TimeLimit"), A.EXITED, 143, "TIMEOUT"),
    (A.RUNNING, None, ("TIMEOUT", "TimeLimit"), A.VANISHED, None, "TIMEOUT"),
    (A.RUNNING, None, ("OUT_OF_MEMORY", "OutOfMemory"), A.VANISHED, None, "OUT_OF_MEMORY"),
    (A.RUNNING, None, ("NODE_FAIL", "NodeDown"), A.QUEUED, None, "Slurm's requeue"),
    (A.RUNNING, None, ("PREEMPTED", "None"), A.QUEUED, None, "Slurm's requeue"),
    (A.EXITED, 143, ("CANCELLED", "None"), A.EXITED, 143, "Slurm: CANCELLED"),
    (A.RUNNING, None, ("CANCELLED", "None"), A.VANISHED, None, "Slurm: CANCELLED"),
    (A.EXITED, 0, None, A.EXITED, 0, ""),  # gone from squeue after MinJobAge
    (A.STARTING, None, None, A.STARTING, None, ""),  # claimed, never submitted
    (A.RUNNING, None, None, A.VANISHED, None, "no longer knows"),
]


@pytest.mark.parametrize(("files", "code", "slurm", "state", "exit_code", "words"), CASES)
def test_slurm_states_map_to_observations(files, code, slurm, state, exit_code, words):
    job = SlurmJob("7", *slurm) if slurm else None
    found = verdict(files, code, job)
    assert (found.state, found.exit_code) == (state, exit_code)
    assert words in found.reason


def test_a_held_job_is_queued_and_held():
    found = verdict(A.STARTING, None, SlurmJob("7", "PENDING", "JobHeldAdmin"))
    assert found.state == A.QUEUED and found.held


def cluster(tmp_path: Path, body: str):
    path = tmp_path / "c.toml"
    path.write_text('[sheet]\npath = "x.xlsx"\n[jobs.a]\ncommand = ["true"]\n' + body)
    return config_module.load(path)


def test_a_config_with_only_a_cluster_loads_and_sbatch_takes_its_options(tmp_path):
    config = cluster(
        tmp_path,
        '[[clusters]]\nname = "campus"\nlogin = "login.campus.edu"\npartition = "gpu"\n'
        'account = "lab"\ntime = "24:00:00"\nroot = "/shared/sr"\nsbatch_args = ["--qos=normal"]\n',
    )
    (c,) = config.clusters
    args = sbatch_args(c, "ns0000000000", "abcdef01-x1", 2, 2, None)
    assert args[0] == "--job-name=sr.ns0000000000.abcdef01-x1.2"
    assert {"--gres=gpu:2", "--account=lab", "--time=24:00:00", "--requeue", "--qos=normal"} <= set(
        args
    )
    assert "--signal=B:USR1@60" in args
    assert "--time=2" in sbatch_args(c, "ns0000000000", "abcdef01-x1", 2, 0, 90)  # the row's


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ('name = "c"\npartition = "gpu"\nroot = "/s"\n', "login ="),
        ('name = "c"\nlocal = true\nroot = "/s"\n', "partition is missing"),
        ('name = "c"\nlocal = true\npartition = "gpu"\n', "root is missing"),
        ('name = "c"\nlocal = true\npartition = "p"\nroot = "/s"\ntime = "soon"\n', "--time form"),
        (
            'name = "c"\nlocal = true\npartition = "p"\nroot = "/s"\nkind = "pbs"\n',
            'kind = "slurm"',
        ),
        (
            'name = "c"\nlocal = true\npartition = "p"\nroot = "/s"\nsbatch_args = ["--output=x"]\n',
            "sheetrunner sets itself",
        ),
    ],
)
def test_a_bad_cluster_config_names_the_key_and_the_fix(tmp_path, body, says):
    with pytest.raises(ConfigError, match="clusters") as err:
        cluster(tmp_path, "[[clusters]]\n" + body)
    assert says in str(err.value)


def test_the_partition_summary_counts_nodes_by_state_and_free_gpus():
    found = {
        "partition": "gpu",
        "nodes": [
            {"node": "a", "state": "idle", "gres": "gpu:4", "gres_used": "gpu:0"},
            {
                "node": "b",
                "state": "mixed",
                "gres": "gpu:a100:4(S:0-1)",
                "gres_used": "gpu:a100:3(IDX:0-2)",
            },
            {"node": "c", "state": "down*", "gres": "gpu:4", "gres_used": "gpu:0"},
        ],
    }
    summary = partition_summary(found)
    assert summary["nodes"] == {"idle": 1, "mixed": 1, "down": 1}
    assert (summary["gpus_free"], summary["gpus_total"]) == (5, 12)


def test_the_pool_rows_show_each_clusters_partition():
    from sheetrunner.views import cluster_rows

    entry = {
        "cluster": "ci",
        "partition": "gpu",
        "reachable": True,
        "error": "",
        "nodes": {"idle": 1, "mixed": 2},
        "gpus_free": 5,
        "gpus_total": 12,
        "runs": ["a"],
    }
    down = {**entry, "cluster": "far", "reachable": False, "error": "not probed"}
    assert cluster_rows([entry, down]) == [
        ["cluster", "state", "partition", "nodes", "GPUs free", "runs"],
        ["ci", "up", "gpu", "1 idle, 2 mixed", "5/12", 1],
        ["far", "down: not probed", "gpu", "1 idle, 2 mixed", "5/12", 1],
    ]


def test_a_launched_attempt_pending_in_the_queue_shows_queued_but_stays_live():
    """Slurm PENDING: the sheet, ps and top say `queued` with Slurm's reason, while the core
    keeps the run live (launching) so it is never submitted twice; running clears it."""
    from tests.test_reconcile import World, exp, gpu_host

    world = World([gpu_host("campus", 4)])
    (launch,) = world.step([exp()]).launches
    world.outcome[(launch.run_id, 1)] = AttemptObservation(
        launch.run_id, 1, AttemptState.QUEUED, reason="Resources", scheduler="PENDING"
    )
    del world.alive[(launch.run_id, 1)]
    plan = world.step([exp(run_id=launch.run_id)])
    run = world.runs[launch.run_id]
    assert not plan.launches and run.status == Status.LAUNCHING and run.status.is_live
    assert run.shown_status == Status.QUEUED and "Resources" in run.message
    del world.outcome[(launch.run_id, 1)]
    world.alive[(launch.run_id, 1)] = "campus"
    world.heartbeat[(launch.run_id, 1)] = world.now
    world.step([exp(run_id=launch.run_id)])
    run = world.runs[launch.run_id]
    assert run.status == run.shown_status == Status.RUNNING
