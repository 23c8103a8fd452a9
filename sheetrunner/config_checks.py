"""Small validators for config values: each names the key, says what is wrong and shows a
right value, so a bad config fails at start with a message a user can act on."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .errors import ConfigError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def known_keys(where: str, raw: dict[str, Any], allowed: set[str]) -> None:
    for key in raw:
        if key not in allowed:
            name = f"{where}.{key}" if where else key
            raise ConfigError(
                f"unknown key {name!r}; the keys allowed here are: {', '.join(sorted(allowed))}"
            )


def expect(where: str, value: Any, kind: type, example: str) -> Any:
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ConfigError(f"{where} = {value!r} has the wrong type; expected e.g. {example}")
    return value


def expect_list_of_str(where: str, value: Any, example: str) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} = {value!r}; expected a list of strings, e.g. {where.split('.')[-1]} = {example}")


def opt_str(where: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f'{where} = {value!r}; expected a non-empty string, e.g. {where.split(".")[-1]} = "..."')
    return value


def positive(where: str, value: Any, example: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{where} = {value!r}; expected a positive number of seconds, e.g. {where.split('.')[-1]} = {example}")
    return float(value)


def non_negative_int(where: str, value: Any, example: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where} = {value!r}; expected a whole number ≥ 0, e.g. {where.split('.')[-1]} = {example}")
    return value


def at_least_one(where: str, value: Any) -> int:
    count = non_negative_int(where, value, "16")
    if count < 1:
        raise ConfigError(f"{where} = 0; expected a whole number ≥ 1, e.g. 16")
    return count


def keep(where: str, value: Any) -> int:
    count = non_negative_int(where, value, "2")
    if count < 1:
        raise ConfigError(f"{where} = 0 would delete the resume point; keep at least 1, e.g. 2")
    return count


def check_name(what: str, where: str, name: str) -> None:
    if not NAME_RE.match(name):
        raise ConfigError(
            f"{where}: {what} {name!r} may hold only letters, digits, '.', '_' and '-', e.g. \"gpu-a\""
        )


def resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path).resolve()
