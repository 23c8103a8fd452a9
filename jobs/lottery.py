"""Lottery-ticket search on scikit-learn's digits: iterative magnitude pruning with rewinding.

Round 0 trains the dense network. Each round r = 1..--rounds then removes
--prune-fraction of the weights still alive (global magnitude over the weights
of every linear and conv layer; biases are never pruned), rewinds the
survivors to their values at iteration --rewind-step of round 0 (0 = the
initialisation), and retrains for --epochs with a fresh optimizer. After round
r the sparsity is 1 - (1 - fraction)^r, up to rounding of counts. One
checkpoint per round, with the masks and the rewind point, so a restarted
attempt continues with the next round. See docs/jobs.md.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python jobs/lottery.py` works too

import torch
from torch import nn

from jobs import common
from sheetrunner import job

CRASH_VARIABLE = "SHEETRUNNER_TEST_CRASH_AT_ROUND"
Masks = dict[str, torch.Tensor]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_training_args(parser, epochs=2)
    parser.add_argument("--rounds", type=int, default=3, help="pruning rounds after round 0")
    parser.add_argument("--prune-fraction", type=float, default=0.2, help="of the weights alive")
    parser.add_argument("--rewind-step", type=int, default=0, help="iteration of round 0; 0 = init")
    args = parser.parse_args(argv)
    if not 0.0 < args.prune_fraction < 1.0:
        parser.error("--prune-fraction must be between 0 and 1")
    return args


def main(argv: list[str] | None = None) -> int:
    return common.run_unless_done(search, parse_args(argv))


# --- masks ---------------------------------------------------------------------


def prunable(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weights (not biases) of linear and conv layers, by state_dict name."""
    return {
        f"{name}.weight": module.weight
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear | nn.Conv2d)
    }


def dense_masks(model: nn.Module) -> Masks:
    return {name: torch.ones_like(w, dtype=torch.bool) for name, w in prunable(model).items()}


def prune(model: nn.Module, masks: Masks, fraction: float) -> Masks:
    """Remove round(fraction * alive) of the alive weights, smallest magnitude first, globally.

    An exact count (not a threshold) keeps the sparsity on its schedule even
    when magnitudes tie.
    """
    weights = prunable(model)
    scores = torch.cat([
        torch.where(masks[n], weights[n].detach().abs(), torch.inf).flatten() for n in masks
    ])  # fmt: skip
    alive = torch.cat([m.flatten() for m in masks.values()])
    count = round(fraction * int(alive.sum()))
    new_alive = alive.clone()
    new_alive[torch.topk(scores, count, largest=False).indices] = False
    sizes = [m.numel() for m in masks.values()]
    pieces = new_alive.split(sizes)
    return {n: piece.view_as(masks[n]) for n, piece in zip(masks, pieces, strict=True)}


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks) -> None:
    for name, weight in prunable(model).items():
        weight.mul_(masks[name])


def sparsity(model: nn.Module) -> float:
    """Measured on the weights themselves, so it also proves the masks held during training."""
    weights = list(prunable(model).values())
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / sum(w.numel() for w in weights)


# --- rounds ----------------------------------------------------------------------


class Search:
    """The state carried from round to round: masks, the rewind point, the global step."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.setup = common.setup_device(args)
        self.data = common.load_digits(args.data_seed, self.setup.device)
        self.generator = common.seeded_generator(args.seed)
        model = common.build_model(args.arch, args.width)
        self.model = common.prepare_model(model, self.setup)
        self.masks = dense_masks(self.model)
        self.rewind: dict[str, torch.Tensor] | None = None
        self.step = 0
        self.next_round = 0

    def run_round(self, round_: int) -> None:
        if round_ > 0:
            self.masks = prune(self.model, self.masks, self.args.prune_fraction)
            self.model.load_state_dict(self.rewind)
        apply_masks(self.model, self.masks)
        if round_ == 0 and self.args.rewind_step == 0:
            self.rewind = snapshot(self.model)
        self.train(round_start=self.step, capture_rewind=round_ == 0)
        acc = common.evaluate(self.model, self.data, self.setup)
        job.report(self.step, round=round_, sparsity=sparsity(self.model), acc=acc)
        job.save(self.state(round_), self.step, metrics={"round": round_, "acc": acc})

    def train(self, *, round_start: int, capture_rewind: bool) -> None:
        optimizer = common.make_optimizer(self.model, self.args.lr)
        report_loss = common.loss_reporter(self.args.log_every)

        def after_step(step: int, loss: torch.Tensor) -> None:
            apply_masks(self.model, self.masks)
            if capture_rewind and step - round_start == self.args.rewind_step:
                self.rewind = snapshot(self.model)
            report_loss(step, loss)

        for _ in range(self.args.epochs):
            self.step = common.train_epoch(
                self.model, optimizer, self.data, self.setup,
                batch_size=self.args.batch_size, generator=self.generator,
                step=self.step, after_step=after_step,
            )  # fmt: skip

    def state(self, round_: int) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "masks": self.masks,
            "rewind": self.rewind,
            "round": round_,
            "step": self.step,
            "rng": common.rng_state(self.generator),
        }

    def resume(self, state: dict[str, Any]) -> None:
        """Continue after the round the newest checkpoint finished."""
        device = self.setup.device
        self.model.load_state_dict(state["model"])
        self.masks = {n: m.to(device) for n, m in state["masks"].items()}
        self.rewind = state["rewind"]
        self.step = state["step"]
        self.next_round = state["round"] + 1
        common.restore_rng(state["rng"], self.generator)
        print(f"resuming after round {state['round']} (step {self.step})", flush=True)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return copy.deepcopy(model.state_dict())


def steps_per_round(args: argparse.Namespace, n_train: int) -> int:
    return args.epochs * -(-n_train // args.batch_size)


def search(args: argparse.Namespace) -> None:
    run = Search(args)
    if args.rewind_step > (steps := steps_per_round(args, len(run.data.y_train))):
        sys.exit(f"--rewind-step {args.rewind_step} is past the end of round 0 ({steps} steps)")
    if (found := job.latest()) is not None:
        run.resume(found[1])
    for round_ in range(run.next_round, args.rounds + 1):
        run.run_round(round_)
        common.crash_for_test(CRASH_VARIABLE, round_)
    job.mark_done(rounds=args.rounds, step=run.step)


if __name__ == "__main__":
    sys.exit(main())
