"""`[[slices]]`: hosts that run one program together (a TPU pod slice), validated.

Each host of a slice is still an ordinary `[[hosts]]` entry (reachability, probing); the
slice only says that its hosts take nothing but runs across all of them (sheetrunner/gang.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .config_checks import check_name, expect, expect_list_of_str, known_keys
from .errors import ConfigError
from .gang import Slice

SLICE_KEYS = {"name", "hosts", "labels"}
EXAMPLE = '[[slices]]\nname = "v4-32-a"\nhosts = ["tpu-a-0", "tpu-a-1", "tpu-a-2", "tpu-a-3"]'


def slices(raw: Any, labels: Mapping[str, Sequence[str]]) -> tuple[Slice, ...]:
    """The `[[slices]]` tables, given each host's labels by name (in config order); every
    mistake names the key and the fix."""
    expect("slices", raw, list, f"[[slices]] tables, e.g.\n{EXAMPLE}")
    hosts = list(labels)
    found = tuple(_slice(i, spec, labels) for i, spec in enumerate(raw))
    owner: dict[str, str] = {}
    for each in found:
        if each.name in hosts or each.name in {s.name for s in found if s is not each}:
            raise ConfigError(
                f"slices[{each.name}]: the name {each.name!r} is already a host's or another "
                "slice's; give the slice a name of its own (rows name it in `where`)"
            )
        for host in each.hosts:
            if host in owner:
                raise ConfigError(
                    f"slices[{each.name}].hosts: {host!r} is already in slice {owner[host]!r}; "
                    "a host belongs to one slice at most"
                )
            owner[host] = each.name
    return found


def _slice(index: int, raw: Any, labels: Mapping[str, Sequence[str]]) -> Slice:
    expect(f"slices[{index}]", raw, dict, EXAMPLE)
    known_keys(f"slices[{index}]", raw, SLICE_KEYS)
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f'slices[{index}].name is missing; e.g. name = "v4-32-a"')
    check_name("slice name", f"slices[{index}].name", name)
    where = f"slices[{name}]"
    hosts = list(labels)
    members = raw.get("hosts")
    if isinstance(members, str):  # a label: every host that has it, in config order
        label, members = members, [h for h in hosts if members in labels[h]]
        if not members:
            raise ConfigError(
                f"{where}.hosts = {label!r} is a label no [[hosts]] entry has; add "
                f'labels = ["{label}"] to each of the slice\'s hosts, or list them by name'
            )
    expect_list_of_str(f"{where}.hosts", members, '["tpu-a-0", "tpu-a-1"] or a label')
    if len(members) < 2 or len(set(members)) < len(members):
        raise ConfigError(
            f"{where}.hosts = {members!r}; list two or more different hosts, e.g. "
            '["tpu-a-0", "tpu-a-1"] (one host needs no slice)'
        )
    unknown = [h for h in members if h not in hosts]
    if unknown:
        raise ConfigError(
            f"{where}.hosts names {', '.join(map(repr, unknown))}, which no [[hosts]] entry "
            f"declares; add a [[hosts]] entry for each (hosts: {', '.join(hosts)})"
        )
    labels = raw.get("labels", [])
    expect_list_of_str(f"{where}.labels", labels, '["v4-32"]')
    return Slice(name, tuple(members), tuple(labels))
