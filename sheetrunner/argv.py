"""How a row's parameter cells become the job's argv items: the styles training scripts use.

    header         cell          argv items
    --lr           0.1           --lr 0.1          argparse, click (the default)
    lr=            0.1           lr=0.1            Hydra and other key=value scripts
    --amp          TRUE / true   --amp             a flag (argparse's store_true)
    --amp          FALSE / false (nothing)
    --milestones   "30,60,90"    --milestones 30,60,90   quoted: taken as it is

A value in double quotes is taken as it is, quotes removed: not a sweep (a comma, a
`{`), not a flag (`"true"` passes `--amp true`). Parameter names keep the header's
style: `lr` for `--lr` (as before, so experiment hashes of existing rows do not change)
and the whole header, `lr=`, for a key=value column. Pure: no IO.
"""

from __future__ import annotations

import re

PARAM_PREFIX = "--"
KEY_VALUE_SUFFIX = "="
# A key=value header: Hydra's override prefixes (+, ++, ~) or --, then a dotted key.
KEY_VALUE_HEADER_RE = re.compile(r"^(?:--|\+\+|\+|~)?[A-Za-z0-9][A-Za-z0-9_.@/-]*=$")
QUOTE = '"'
FLAG_WORDS = {"true": True, "false": False}


def is_key_value_header(header: str) -> bool:
    """A header written `NAME=` (its cells pass `NAME=VALUE`), well formed or not."""
    return len(header) > 1 and header.endswith(KEY_VALUE_SUFFIX)


def is_quoted(text: str) -> bool:
    """A cell in double quotes: taken as it is, never as a sweep or a flag."""
    stripped = text.strip()
    return len(stripped) >= 2 and stripped.startswith(QUOTE) and stripped.endswith(QUOTE)


def literal(text: str) -> str:
    """The value a cell passes: without its surrounding quotes when it has them."""
    return text.strip()[1:-1] if is_quoted(text) else text


def flag(text: str) -> bool | None:
    """True or False for a boolean cell (TRUE/FALSE, `true`/`false` text), else None."""
    return FLAG_WORDS.get(text.strip().lower())


def param_name(header: str) -> str:
    """The parameter's name as the run keeps it: `lr` for `--lr`, `lr=` for `lr=`."""
    if is_key_value_header(header):
        return header
    return header[len(PARAM_PREFIX) :]


def param_header(name: str) -> str:
    """The header a parameter's name comes from (the inverse of `param_name`)."""
    return name if name.endswith(KEY_VALUE_SUFFIX) else PARAM_PREFIX + name


def param_text(name: str, value: str) -> str:
    """A parameter as a person reads it in `ps` and plot legends: `lr=0.1`, `model.lr=0.1`."""
    return f"{name}{value}" if name.endswith(KEY_VALUE_SUFFIX) else f"{name}={value}"


def argv_items(name: str, value: str) -> list[str]:
    """The argv items one parameter passes."""
    if name.endswith(KEY_VALUE_SUFFIX):
        return [name + literal(value)]
    on = None if is_quoted(value) else flag(value)
    if on is not None:
        return [PARAM_PREFIX + name] if on else []
    return [PARAM_PREFIX + name, literal(value)]


def param_argv(params: tuple[tuple[str, str], ...]) -> list[str]:
    """Parameters as argv items, ["--lr", "0.1", "seed=3", ...]: never a shell string."""
    return [item for name, value in params for item in argv_items(name, value)]
