"""What the digits and lottery jobs share: data, models, device set-up, one epoch of training.

The data is scikit-learn's bundled digits (1797 8x8 images, 10 classes), so the
jobs need no download and finish in seconds on a CPU, yet they are real torch
training with real checkpoints: a small stand-in for the jobs a pool runs.
"""

from __future__ import annotations

import argparse
import os
import random
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sheetrunner import job

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def run_unless_done(work: Callable[[argparse.Namespace], None], args: argparse.Namespace) -> int:
    """Run the job, unless this run already finished: a restarted finished run exits 0 at once."""
    if job.is_done():
        print(f"run {job.run_id()} is already done; nothing to do", flush=True)
        return 0
    work(args)
    return 0


def add_training_args(parser: argparse.ArgumentParser, *, epochs: int) -> None:
    """The flags both jobs take, so a sheet column means the same thing in either."""
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--seed", type=int, default=0, help="model init and batch order")
    parser.add_argument("--data-seed", type=int, default=0, help="train/test split")
    parser.add_argument("--arch", choices=("cnn", "mlp"), default="cnn")
    parser.add_argument("--width", type=int, default=16, help="channels (cnn) or units (mlp)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--log-every", type=int, default=10, help="report loss every N steps")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads torch may use")
    parser.add_argument("--channels-last", type=int, choices=(0, 1), default=0, help="CUDA only")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none", help="CUDA only")
    parser.add_argument("--cudnn-benchmark", type=int, choices=(0, 1), default=0, help="CUDA only")


# --- device -----------------------------------------------------------------


@dataclass
class Setup:
    """The device and the speed-ups actually in force (the flags are ignored on CPU)."""

    device: torch.device
    channels_last: bool
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler

    def autocast(self) -> AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x


def setup_device(args: argparse.Namespace) -> Setup:
    """CUDA when there is one; the speed-up flags only mean something there."""
    torch.set_num_threads(max(1, args.threads))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda and (args.channels_last or args.amp != "none" or args.cudnn_benchmark):
        print("no CUDA device: ignoring --channels-last, --amp and --cudnn-benchmark", flush=True)
    if cuda:
        torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)
    amp_dtype = AMP_DTYPES.get(args.amp) if cuda else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)
    print(
        f"device={device} amp={amp_dtype} channels_last={cuda and bool(args.channels_last)}",
        flush=True,
    )
    return Setup(device, cuda and bool(args.channels_last), amp_dtype, scaler)


# --- data and models -------------------------------------------------------------


@dataclass
class Data:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits(data_seed: int, device: torch.device) -> Data:
    """The whole set fits on any device, so batches are index slices, not a DataLoader."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits = sklearn_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    parts = train_test_split(x, y, test_size=0.25, random_state=data_seed, stratify=y)
    x_train, x_test, y_train, y_test = (t.to(device) for t in parts)
    return Data(x_train, y_train, x_test, y_test)


def build_model(arch: str, width: int) -> nn.Module:
    if arch == "mlp":
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, 10),
        )
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * 16, 10),
    )


def prepare_model(model: nn.Module, setup: Setup) -> nn.Module:
    model = model.to(setup.device)
    if setup.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)


# --- training ----------------------------------------------------------------


StepHook = Callable[[int, torch.Tensor], None]


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Data,
    setup: Setup,
    *,
    batch_size: int,
    generator: torch.Generator,
    step: int,
    after_step: StepHook,
) -> int:
    """One pass over the training set; returns the global step reached.

    `after_step(step, loss)` is how callers add behaviour (reporting, keeping
    pruned weights at zero) without flags in the loop; loss stays a tensor so
    a caller that reports only every N steps does not sync every step.
    """
    model.train()
    order = torch.randperm(len(data.y_train), generator=generator).to(setup.device)
    for batch in order.split(batch_size):
        x, y = setup.to_input(data.x_train[batch]), data.y_train[batch]
        optimizer.zero_grad(set_to_none=True)
        with setup.autocast():
            loss = nn.functional.cross_entropy(model(x), y)
        setup.scaler.scale(loss).backward()
        setup.scaler.step(optimizer)
        setup.scaler.update()
        step += 1
        after_step(step, loss.detach())
    return step


@torch.no_grad()
def evaluate(model: nn.Module, data: Data, setup: Setup) -> float:
    model.eval()
    with setup.autocast():
        logits = model(setup.to_input(data.x_test))
    return (logits.argmax(dim=1) == data.y_test).float().mean().item()


def loss_reporter(log_every: int) -> StepHook:
    """Report the loss every `log_every` steps (`item()` syncs the device, so not every step)."""

    def after_step(step: int, loss: torch.Tensor) -> None:
        if step % log_every == 0:
            job.report(step, loss=loss.item())

    return after_step


# --- resuming ------------------------------------------------------------------


def training_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, setup: Setup, generator: torch.Generator
) -> dict[str, Any]:
    """What a resumed attempt needs to continue exactly where an unbroken run would be."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": setup.scaler.state_dict(),
        "rng": rng_state(generator),
    }


def restore_training_state(
    state: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    setup: Setup,
    generator: torch.Generator,
) -> None:
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    setup.scaler.load_state_dict(state["scaler"])
    restore_rng(state["rng"], generator)


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every random stream the run draws from, so batch order and init continue unchanged."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    state["batch_order"] = generator.get_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    generator.set_state(state["batch_order"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seeded_generator(seed: int) -> torch.Generator:
    """Seed the global streams (init) and return the one that orders batches."""
    torch.manual_seed(seed)
    random.seed(seed)
    return torch.Generator().manual_seed(seed)


def crash_for_test(variable: str, unit: int) -> None:
    """Test hook: die (exit 3) after the checkpoint of epoch/round `unit`, on attempt 1 only.

    Lets a test prove that attempt 2 resumes from the checkpoint instead of
    starting over. Called with `variable` = SHEETRUNNER_TEST_CRASH_AT_EPOCH
    (digits) or SHEETRUNNER_TEST_CRASH_AT_ROUND (lottery); unset, it does nothing.
    """
    if os.environ.get(variable) == str(unit) and job.attempt() == 1:
        print(f"{variable}={unit}: exiting on purpose", flush=True)
        job.flush()
        os._exit(3)
