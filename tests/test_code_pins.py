"""The `pin` column on pure parts: which kept version a pin names, what a pinned row
launches, what the local store of versions keeps and drops."""

from __future__ import annotations

import json
import os

import pytest

from sheetrunner.code_sync import CodeFile, CodeVersion, LocalTree
from sheetrunner.code_versions import (
    KeptVersion,
    PinError,
    VersionStore,
    code_for_launch,
    match_pin,
    resolve_pins,
)
from sheetrunner.config import HostConfig, JobConfig
from sheetrunner.pool.hosts import launch_spec
from sheetrunner.sheet.schema import parse_table
from sheetrunner.sheet.table import Table
from tests.helpers import make_run

A = KeptVersion("a1b2c3d4" + "0" * 56, "1234567", "1234567" + "f" * 33)
B = KeptVersion("a1b2c3d5" + "0" * 56, "1234567+dirty", "1234567" + "f" * 33)
C = KeptVersion("ffee0011" + "0" * 56, "ffee00110000")  # outside git: the hash's 12 digits


def test_a_pin_names_a_version_by_its_label_or_a_hash_prefix():
    kept = [A, B, C]
    assert match_pin("1234567", kept) == A.hash
    assert match_pin(" 1234567+dirty ", kept) == B.hash
    assert match_pin("ffee00110000", kept) == C.hash
    assert match_pin("a1b2c3d5", kept) == B.hash
    assert match_pin("A1B2C3D4", kept) == A.hash


def test_an_ambiguous_or_unknown_pin_says_what_to_type():
    with pytest.raises(PinError, match=r"matches 2 code versions \(a1b2c3d40000, a1b2c3d50000\)"):
        match_pin("a1b2c3d", [A, B, C])
    with pytest.raises(PinError, match="matches no code version .* copy a value from the code"):
        match_pin("zzz", [A, B, C])
    with pytest.raises(PinError, match="matches no code version"):
        match_pin("a1b2c3", [A, B, C])  # under 7 digits: never a prefix


def version(tmp_path, text: str) -> tuple[CodeVersion, LocalTree]:
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    (code / "train.py").write_text(text)
    tree = LocalTree(code)
    return tree.snapshot(), tree


def test_a_pinned_row_launches_its_version_and_a_bad_pin_makes_it_invalid(tmp_path):
    store = VersionStore(tmp_path / "state")
    old, tree = version(tmp_path, "print('v1')\n")
    assert store.keep(old, tree, "train", str(tree.root))
    current, _ = version(tmp_path, "print('v2')\n")
    table = Table(header=["job", "--lr", "pin"], rows=[
        ["train", "0.1", old.label], ["train", "0.2", None], ["train", "0.3", "zzz"],
        ["eval", "0.4", old.label], ["other", "0.5", old.label],
    ])
    synced = {"train": str(tree.root), "other": str(tmp_path / "elsewhere")}
    jobs = ["train", "eval", "other"]
    rows, pins = resolve_pins(parse_table(table, jobs), synced, store)
    assert [r.error for r in rows[:2]] == [None, None]
    assert "pin 'zzz' matches no code version" in rows[2].error
    assert "only for jobs with sync" in rows[3].error
    assert "matches no code version" in rows[4].error  # another directory's code: never run
    assert rows[0].key == parse_table(Table(["job", "--lr"], [["train", "0.1"]]), ["train"])[0].key
    pinned = pins[rows[0].row]
    assert pinned.hash == old.hash and pinned.files == old.files
    assert store.read(old.files[0].blob, old.files) == b"print('v1')\n"  # the tree moved on

    run = make_run("00000001-aaaaaa", gpus=0, attempt=1)
    job, host = JobConfig("train", ("python3", "train.py")), HostConfig("gpu-a")
    launched = code_for_launch(current, pins.get(rows[0].row))
    spec = launch_spec(run, job, host, "/w", launched.spec() if launched else None)
    assert spec["code"]["hash"] == old.hash
    assert code_for_launch(current, pins.get(rows[1].row)) == current  # unpinned: today's
    with pytest.raises(PinError, match="zzz"):
        code_for_launch(current, pins[rows[2].row])


def test_the_store_keeps_each_version_once_and_prune_drops_the_unused(tmp_path):
    store = VersionStore(tmp_path / "state")
    old, tree = version(tmp_path, "print('v1')\n")
    store.keep(old, tree, "train")
    assert [k.hash for k in store.kept()] == [old.hash]
    new, _ = version(tmp_path, "print('v2')\n")
    store.keep(new, tree, "train")
    manifest = json.loads((store.manifests / f"{old.hash}.json").read_text())
    assert manifest["job"] == "train" and manifest["files"][0][1] == old.files[0].blob
    assert {k.hash for k in store.kept()} == {old.hash, new.hash}
    changed = CodeVersion("e" * 64, (CodeFile("train.py", "d" * 64, False),))
    assert not store.keep(changed, tree, "train")  # read while edited: kept later, not wrong
    assert not (store.manifests / f"{'e' * 64}.json").exists()

    for blob in store.objects.iterdir():  # old enough to be collected
        os.utime(blob, (0, 0))
    freed = store.prune([new.hash])
    assert freed > 0 and [k.hash for k in store.kept()] == [new.hash]
    assert not (store.objects / old.files[0].blob).exists()
    assert (store.objects / new.files[0].blob).exists()
    with pytest.raises(PinError, match="no code version"):
        store.find(old.label)
