"""Accelerator kinds: chip counts of TPU VMs and the environment that restricts a job."""

from __future__ import annotations

import pytest

from sheetrunner.config import HostConfig
from sheetrunner.model import Accelerator, HostObservation
from sheetrunner.pool.accelerators import tpu_chips, visible_env
from sheetrunner.pool.hosts import capacity


@pytest.mark.parametrize(("kind", "chips"), [("tpu-v4-8", 4), ("tpu-v3-8", 4), ("tpu-v5e-8", 8),
                                              ("tpu-v6e-4", 4), ("tpu-v5p-8", 4), ("tpu-v4-32", 8)])
def test_tpu_chips_per_vm(kind, chips):
    assert tpu_chips(kind) == chips


def test_gpus_are_restricted_with_cuda_visible_devices():
    assert visible_env(8, ("2", "3")) == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                                          "CUDA_VISIBLE_DEVICES": "2,3"}
    assert visible_env("auto", ())["CUDA_VISIBLE_DEVICES"] == ""  # gpus = 0: no GPU at all


def test_tpu_chips_are_restricted_with_the_tpu_runtime_variables():
    env = visible_env("tpu-v4-8", ("0", "1"))
    assert env == {"TPU_VISIBLE_CHIPS": "0,1", "TPU_CHIPS_PER_PROCESS_BOUNDS": "1,2,1",
                   "TPU_PROCESS_BOUNDS": "1,1,1"}
    assert visible_env("tpu-v4-8", ())["TPU_VISIBLE_CHIPS"] == ""


def test_capacity_counts_configured_seen_and_foreign_accelerators():
    seen = HostObservation("a", True, None, accelerators=(  # type: ignore[arg-type]
        Accelerator("0"), Accelerator("1", foreign=True), Accelerator("2")))
    auto = capacity(HostConfig("a", accelerators="auto"), seen)
    assert auto.accelerators == ("0", "1", "2") and auto.busy == ("1",) and auto.reachable
    fixed = capacity(HostConfig("a", accelerators=2), None)
    assert fixed.accelerators == ("0", "1") and not fixed.reachable
    assert capacity(HostConfig("t", accelerators="tpu-v5e-8"), None).accelerators == tuple(
        map(str, range(8)))
