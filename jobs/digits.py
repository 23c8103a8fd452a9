"""Train a small CNN or MLP on scikit-learn's digits: the reference job for sheetrunner.

Resumable the way a job on a preemptible pool must be: a checkpoint every
epoch (model, optimizer, epoch, step, RNG), a restarted attempt continues from
the newest one with the same step count and batch order as an unbroken run,
and a run already marked done exits 0 before loading any data. Run by hand
with `python jobs/digits.py --epochs 3`; see docs/jobs.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python jobs/digits.py` works too

import torch
from torch import nn

from jobs import common
from sheetrunner import job

CRASH_VARIABLE = "SHEETRUNNER_TEST_CRASH_AT_EPOCH"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_training_args(parser, epochs=5)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return common.run_unless_done(train, parse_args(argv))


def train(args: argparse.Namespace) -> None:
    setup = common.setup_device(args)
    data = common.load_digits(args.data_seed, setup.device)
    generator = common.seeded_generator(args.seed)
    model = common.prepare_model(common.build_model(args.arch, args.width), setup)
    optimizer = common.make_optimizer(model, args.lr)
    done_epochs, step = 0, 0
    if (found := job.latest()) is not None:
        done_epochs, step = resume(found[1], model, optimizer, setup, generator)
    after_step = common.loss_reporter(args.log_every)
    for epoch in range(done_epochs + 1, args.epochs + 1):
        step = common.train_epoch(
            model, optimizer, data, setup,
            batch_size=args.batch_size, generator=generator, step=step, after_step=after_step,
        )  # fmt: skip
        acc = common.evaluate(model, data, setup)
        job.report(step, epoch=epoch, acc=acc)
        state = common.training_state(model, optimizer, setup, generator)
        job.save({**state, "epoch": epoch, "step": step}, step, metrics={"acc": acc})
        common.crash_for_test(CRASH_VARIABLE, epoch)
    job.mark_done(epochs=args.epochs, step=step)


def resume(
    state: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    setup: common.Setup,
    generator: torch.Generator,
) -> tuple[int, int]:
    """Load the newest checkpoint; returns the (epoch, step) it had completed."""
    common.restore_training_state(state, model, optimizer, setup, generator)
    print(f"resuming after epoch {state['epoch']} (step {state['step']})", flush=True)
    return state["epoch"], state["step"]


if __name__ == "__main__":
    sys.exit(main())
