"""A small job for the Slurm example: standard library and sheetrunner.job only.

It reports a loss each step, keeps its resume point in the run's checkpoint directory,
and saves it early when Slurm warns that the time limit is near (job.on_time_limit).
"""

import argparse
import json
import os
import time

from sheetrunner import job

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=5)
parser.add_argument("--lr", type=float, default=0.1)
parser.add_argument("--sleep", type=float, default=0.1)
args, _ = parser.parse_known_args()

resume = job.checkpoint_dir() / "resume.json"
state = json.loads(resume.read_text()) if resume.exists() else {"step": 0, "loss": 1.0}


def save() -> None:
    resume.parent.mkdir(parents=True, exist_ok=True)
    tmp = resume.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, resume)


job.on_time_limit(save)  # SIGUSR1 from Slurm: keep the resume point before the limit
while state["step"] < args.steps:
    state["step"] += 1
    state["loss"] *= 1 - args.lr
    job.report(state["step"], loss=round(state["loss"], 4))
    time.sleep(args.sleep)
save()
job.flush()
