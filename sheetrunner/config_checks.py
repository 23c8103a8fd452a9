"""Small validators for config values: each names the key, says what is wrong and shows a
right value, so a bad config fails at start with a message a user can act on."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .gpu_memory import EXAMPLE as SIZE_EXAMPLE
from .gpu_memory import size_mib
from .sheet.expansion import SWEEP_COLUMN
from .sheet.lease import META_TAB
from .sheet.schema import (
    CURVE_COLUMN,
    METRICS_TAB,
    OWNED_COLUMNS,
    PARAM_PREFIX,
    USER_COLUMNS,
    metric_column_names,
)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

# The longest duration a config may ask for: anything longer overflows a datetime (year 9999)
# or a thread's timeout somewhere, and no poll or timeout needs more than ~31 years.
MAX_SECONDS = 1e9

# The placeholders sheetrunner fills in in a job's command (pool/hosts.py launch_spec), each a
# whole argv item, with what it becomes.
PLACEHOLDERS = {"{python}": "the host's Python interpreter ([[hosts]] python)"}
# A run across hosts (sheetrunner/gang.py); on one host: 0, 1, and the host's own coordinator.
PLACEHOLDERS.update(
    {
        "{node_rank}": "this node's rank, 0 to nodes-1",
        "{num_nodes}": "the row's nodes",
        "{coordinator}": "rank 0's address:port",
        "{master_addr}": "rank 0's address",
        "{master_port}": "rank 0's coordinator port",
    }
)
PLACEHOLDER_RE = re.compile(r"\{[^{}\s]+\}")

# Characters a tab name cannot hold in a workbook (Excel, openpyxl) or that Sheets rejects.
TAB_NAME_FORBIDDEN = set("[]:*?/\\")


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
        raise ConfigError(
            f"{where} = {value!r}; expected a list of strings, e.g. {where.split('.')[-1]} = {example}"
        )


def opt_str(where: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(
            f'{where} = {value!r}; expected a non-empty string, e.g. {where.split(".")[-1]} = "..."'
        )
    return value


def positive(where: str, value: Any, example: str) -> float:
    """A positive, finite number of seconds (TOML allows `nan` and `inf`: both refused)."""
    key = where.split(".")[-1]
    number = not isinstance(value, bool) and isinstance(value, int | float)
    if number and (not math.isfinite(value) or value > MAX_SECONDS):
        raise ConfigError(
            f"{where} = {value!r}; expected a finite number of seconds, at most {MAX_SECONDS:.0f} "
            f"(about 31 years), e.g. {key} = {example}"
        )
    if not number or value <= 0:
        raise ConfigError(
            f"{where} = {value!r}; expected a positive number of seconds, e.g. {key} = {example}"
        )
    return float(value)


def non_negative_int(where: str, value: Any, example: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(
            f"{where} = {value!r}; expected a whole number ≥ 0, e.g. {where.split('.')[-1]} = {example}"
        )
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


def existing_file_with_suffix(where: str, path: Path, suffix: str, fix: str) -> None:
    """If `path` exists it must be a file ending in `suffix`: a directory, /etc/passwd or a
    .csv named as the sheet would be read (and, on a write, replaced) as a workbook."""
    try:
        exists = path.exists()
        is_file = path.is_file()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot look at {path}: {exc}; {fix}") from None
    if not exists:
        return
    if not is_file:
        kind = "a directory" if path.is_dir() else "not a regular file"
        raise ConfigError(f"{where} = {str(path)!r} is {kind}; {fix}")
    if path.suffix.lower() != suffix:
        raise ConfigError(f"{where} = {str(path)!r} is not a {suffix} file; {fix}")


def directory_or_absent(where: str, path: Path, example: str) -> None:
    """`path` is a directory, or can be created as one: nothing in its way is a file."""
    for candidate in (path, *path.parents):
        try:
            if not candidate.exists():
                continue
            is_dir = candidate.is_dir()
        except OSError as exc:
            raise ConfigError(
                f"{where}: cannot look at {candidate}: {exc}; e.g. {example}"
            ) from None
        if is_dir:
            return
        what = (
            "is not a directory"
            if candidate == path
            else f"cannot be created: {candidate} is a file"
        )
        raise ConfigError(
            f"{where} = {str(path)!r} {what}; point it at a directory, e.g. {example}"
        )


def _same_tab(a: str, b: str) -> bool:
    """Spreadsheets treat tab names that differ only in case as the same tab."""
    return a.strip().casefold() == b.strip().casefold()


def tab_name(where: str, name: str, example: str) -> None:
    """A tab sheetrunner may create: not one of its own hidden tabs, nothing a workbook refuses."""

    if _same_tab(name, META_TAB) or _same_tab(name, METRICS_TAB) or name.strip().startswith("_"):
        raise ConfigError(
            f"{where} = {name!r}: names starting with '_' are sheetrunner's own hidden tabs "
            f"({META_TAB}, {METRICS_TAB}), which this would overwrite; e.g. {example}"
        )
    bad = sorted(TAB_NAME_FORBIDDEN & set(name))
    if bad or name != name.strip():
        what = f"the characters {' '.join(bad)}" if bad else "spaces at either end"
        raise ConfigError(f"{where} = {name!r}: a tab name cannot hold {what}; e.g. {example}")


# Names the first tab of a new sheet gets: `sheetrunner init` ("experiments"), openpyxl, Excel,
# LibreOffice and Google Sheets. With [sheet] worksheet unset, the experiments tab is the first.
FIRST_TAB_NAMES = ("experiments", "Sheet", "Sheet1")


def pool_tab(name: str, worksheet: str | None) -> None:
    """The pool tab is replaced whole every cycle: it must never be the experiments tab."""
    example = 'pool_tab = "pool"'
    tab_name("sheet.pool_tab", name, example)
    if worksheet is not None and _same_tab(name, worksheet):
        raise ConfigError(
            f"sheet.pool_tab = {name!r} is the experiments tab ([sheet] worksheet), which the pool "
            f"tab would replace every cycle; use another name, e.g. {example}"
        )
    if worksheet is None and any(_same_tab(name, first) for first in FIRST_TAB_NAMES):
        raise ConfigError(
            f"sheet.pool_tab = {name!r} may be the experiments tab (with [sheet] worksheet unset it "
            f"is the first tab, usually called {' or '.join(map(repr, FIRST_TAB_NAMES))}), which "
            f"the pool tab would replace every cycle; use another name, e.g. {example}, or set "
            f"[sheet] worksheet"
        )


def metric_columns(where: str, names: Sequence[str]) -> None:
    """Each metric gets the columns NAME and `best NAME`: none may be a column someone else
    owns (the user's, sheetrunner's) or another metric's."""

    example = '["acc", "loss"]'
    taken = {
        **{c: "a column you fill in" for c in (*USER_COLUMNS, SWEEP_COLUMN)},
        **{c: "a column sheetrunner writes" for c in (*OWNED_COLUMNS, CURVE_COLUMN)},
    }
    seen: set[str] = set()
    for name in names:
        if not name.strip():
            raise ConfigError(
                f"{where} holds an empty name; every metric needs one, e.g. {where.split('.')[-1]} = {example}"
            )
        if name != name.strip():
            raise ConfigError(
                f"{where}: {name!r} has spaces at either end, which a header loses; "
                f"write {name.strip()!r}"
            )
        if name in seen:
            raise ConfigError(
                f"{where}: {name!r} is listed twice; list each metric once, e.g. {example}"
            )
        seen.add(name)
        if name.startswith(PARAM_PREFIX):
            raise ConfigError(
                f"{where}: {name!r} starts with {PARAM_PREFIX!r}, which marks a parameter column "
                f"you fill in; name the metric without it, e.g. {name[len(PARAM_PREFIX) :]!r}"
            )
        if name.endswith("="):
            raise ConfigError(
                f"{where}: {name!r} ends with '=', which marks a key=value parameter column "
                f"you fill in; name the metric without it, e.g. {name.rstrip('=')!r}"
            )
        if name in taken:
            raise ConfigError(
                f"{where}: {name!r} is {taken[name]}, not a metric column; rename the metric, "
                f"e.g. {where.split('.')[-1]} = {example}"
            )
    derived = {
        column: name for name in names for column in metric_column_names([name]) if column != name
    }
    for name in names:
        if name in derived:
            raise ConfigError(
                f"{where}: {name!r} is also the column sheetrunner writes for the best value of "
                f"{derived[name]!r}; drop it or rename it, e.g. {where.split('.')[-1]} = {example}"
            )


def command_placeholders(where: str, command: Sequence[str]) -> None:
    """Only the placeholders sheetrunner fills in, each as a whole item: `{pyhton}` would
    reach the job as the literal text."""
    known = ", ".join(f"{p} ({what})" for p, what in PLACEHOLDERS.items())
    for item in command:
        if item in PLACEHOLDERS:
            continue
        for found in PLACEHOLDER_RE.findall(item):
            if found in PLACEHOLDERS:
                raise ConfigError(
                    f"{where} item {item!r}: {found} is replaced only when it is a whole item; "
                    f'make it an item of its own, e.g. command = ["{found}", "train.py"]'
                )
            if found == item:
                raise ConfigError(
                    f"{where} item {item!r} is not a placeholder sheetrunner fills in; the known "
                    f'ones are: {known}; e.g. command = ["{{python}}", "train.py"]'
                )


def local_workdir(where: str, workdir: str | None, resolved: Path, host: str) -> None:
    """A workdir the local host would start the job in must exist (remote ones cannot be seen)."""
    try:
        ok = resolved.is_dir()
    except OSError:
        ok = False
    if not ok:
        what = "is not a directory" if resolved.exists() else "does not exist"
        raise ConfigError(
            f"{where} = {workdir!r}: {resolved} {what} on this machine, where the local host "
            f"{host!r} starts the job (a relative workdir is relative to the config file's "
            f'directory); create it or fix the path, e.g. workdir = "."'
        )


# -- [notify] -----------------------------------------------------------------------------------

# What `[notify] on` may list: every final status (its sheet text) and a finished sweep.
NOTIFY_EVENTS = ("succeeded", "failed", "stopped", "invalid", "duplicate", "sweep-finished")
NOTIFY_DEFAULT_EVENTS = ("failed", "sweep-finished")
NOTIFY_WEBHOOK_EXAMPLE = 'webhook = "https://hooks.slack.com/services/T000/B000/XXXX"'
# More than one message a second is no rate limit at all.
NOTIFY_MAX_PER_HOUR = 3600


def url_host(url: str) -> str:
    """The host of a URL, the only part of a webhook that may be shown (its path is the secret)."""
    from urllib.parse import urlsplit

    try:
        return urlsplit(url).hostname or "?"
    except ValueError:
        return "?"


def notify_webhook(where: str, value: Any) -> str:
    """An http(s) URL with a host. The value is a credential: no error message repeats it."""
    from urllib.parse import urlsplit

    if not isinstance(value, str) or not value.strip():
        raise ConfigError(
            f"{where} must be a non-empty string (an http(s) URL); e.g. {NOTIFY_WEBHOOK_EXAMPLE}"
        )
    if value != value.strip() or any(ord(c) < 33 or ord(c) == 127 for c in value):
        raise ConfigError(
            f"{where} holds spaces or control characters (the value is not shown: "
            f"it is a credential); paste the URL alone, e.g. {NOTIFY_WEBHOOK_EXAMPLE}"
        )
    try:
        parts = urlsplit(value)
        host, _port = parts.hostname, parts.port  # .port raises on a bad port
    except ValueError:
        host, parts = None, None
    if parts is None or parts.scheme not in ("https", "http") or not host:
        raise ConfigError(
            f"{where} is not an http(s) URL with a host (the value is not shown: "
            f"it is a credential); e.g. {NOTIFY_WEBHOOK_EXAMPLE}"
        )
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"{where} holds a user name or password before its host; webhooks carry "
            f"their secret in the path, e.g. {NOTIFY_WEBHOOK_EXAMPLE}"
        )
    return value


def notify_command(where: str, value: Any) -> tuple[str, ...]:
    """An argv list; the message is appended as its last item (never through a shell)."""
    return argv_list(where, value, 'command = ["notify-send", "sheetrunner"]')


def notify_events(where: str, value: Any) -> tuple[str, ...]:
    """The events that send a notification: final statuses and "sweep-finished"."""
    allowed = ", ".join(NOTIFY_EVENTS)
    example = 'on = ["failed", "sweep-finished"]'
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            f"{where} = {value!r}; expected a list of strings, e.g. {example}; "
            f"the allowed values are: {allowed}"
        )
    if not value:
        raise ConfigError(
            f"{where} is empty, so nothing would ever be sent; list what to "
            f"announce, e.g. {example} (the allowed values are: {allowed}), or "
            f"remove [notify]"
        )
    for item in value:
        if item not in NOTIFY_EVENTS:
            shown = item if len(item) <= 40 else item[:40] + "…"
            raise ConfigError(
                f"{where}: {shown!r} is not an event sheetrunner announces; the "
                f"allowed values are: {allowed}; e.g. {example}"
            )
    return tuple(dict.fromkeys(value))  # each once, in the order given


def notify_max_per_hour(where: str, value: Any) -> int:
    count = non_negative_int(where, value, "30")
    if not 1 <= count <= NOTIFY_MAX_PER_HOUR:
        raise ConfigError(
            f"{where} = {count}; expected a whole number from 1 to "
            f"{NOTIFY_MAX_PER_HOUR} (messages an hour), e.g. max_per_hour = 30"
        )
    return count


# -- the lifecycle: kills, time limits, repair ------------------------------------------------

# The agent refuses a longer grace (remote/agent.py): an hour is more than any job needs to
# save a checkpoint, and a kill that waits longer is a kill that does not happen.
MAX_STOP_GRACE_S = 3600.0
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
DURATION_EXAMPLE = 'time_limit = "2h" (or 7200, "90m", "1d")'


def stop_grace(where: str, value: Any) -> float:
    """Seconds between SIGTERM and SIGKILL: 0 (SIGKILL at once) up to an hour."""
    number = not isinstance(value, bool) and isinstance(value, int | float)
    if not number or not math.isfinite(value) or not 0 <= value <= MAX_STOP_GRACE_S:
        raise ConfigError(
            f"{where} = {value!r}; expected a number of seconds from 0 to "
            f"{MAX_STOP_GRACE_S:.0f} between SIGTERM and SIGKILL, e.g. stop_grace = 10"
        )
    return float(value)


def duration(where: str, value: Any) -> float | None:
    """A duration: seconds as a number, or text like "90m", "2h", "1d"; None when absent."""
    if value is None:
        return None
    seconds: float | None = None
    if not isinstance(value, bool) and isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        found = DURATION_RE.match(value)
        if found:
            seconds = float(found.group(1)) * DURATION_UNITS[found.group(2)]
    if seconds is None or not math.isfinite(seconds) or not 0 < seconds <= MAX_SECONDS:
        shown = value if not isinstance(value, str) or len(value) <= 40 else value[:40] + "…"
        raise ConfigError(
            f"{where} = {shown!r}; expected a positive duration: seconds as a number or text "
            f"with a unit s, m, h or d, at most {MAX_SECONDS:.0f} s, e.g. {DURATION_EXAMPLE}; "
            "leave it out for no limit"
        )
    return seconds


def repair_command(where: str, value: Any) -> tuple[str, ...]:
    """The argv that brings a host back, run on the daemon's machine, never through a shell."""
    return argv_list(
        where,
        value,
        'repair = ["gcloud", "compute", "tpus", "tpu-vm", "start", "tpu-a", "--zone=us-central2-b"]',
    )


def argv_list(where: str, value: Any, example: str) -> tuple[str, ...]:
    """A command from the config as argv items, run without a shell (absent: ())."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            f"{where} = {value!r}; expected a list of strings (argv, run without a shell), "
            f"e.g. {example}"
        )
    if not value or not value[0]:
        raise ConfigError(f"{where} names no program; e.g. {example}")
    if any("\0" in item for item in value):
        raise ConfigError(f"{where} holds a NUL character, which no argv item can; e.g. {example}")
    return tuple(value)


DEFAULT_GPU_CLAIMS = "/tmp/sheetrunner-gpu-claims"


def gpu_sharing(where: str, raw: dict[str, Any]) -> dict[str, Any]:
    """A host's `min_free_memory`, `share_gpus` and `gpu_claims` (docs/shared-gpus.md), as
    HostConfig fields."""
    memory = raw.get("min_free_memory")
    mib = 0
    if memory is not None:
        found = size_mib(memory) if isinstance(memory, str) else None
        if found is None:
            raise ConfigError(
                f"{where}.min_free_memory = {memory!r} is not a size; write it with its unit, "
                f'e.g. min_free_memory = "{SIZE_EXAMPLE}" (or "512MiB")'
            )
        mib = found
    share = raw.get("share_gpus", False)
    expect(f"{where}.share_gpus", share, bool, "true")
    if share and not mib:
        raise ConfigError(
            f"{where}.share_gpus = true needs min_free_memory: without it a GPU others use "
            f'would count as free however full it is; add e.g. min_free_memory = "{SIZE_EXAMPLE}"'
        )
    claims = raw.get("gpu_claims", DEFAULT_GPU_CLAIMS)
    if not isinstance(claims, str) or (claims and not claims.startswith(("/", "~"))):
        raise ConfigError(
            f"{where}.gpu_claims = {claims!r}; name an absolute directory every user of the host "
            f'can write, e.g. gpu_claims = "{DEFAULT_GPU_CLAIMS}" (or "" for no claims)'
        )
    return {"min_free_memory_mib": mib, "share_gpus": share, "gpu_claims": claims}


SIZE_UNITS = {
    "": 1,
    "B": 1,
    "KIB": 1 << 10,
    "MIB": 1 << 20,
    "GIB": 1 << 30,
    "TIB": 1 << 40,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
}


def byte_size(where: str, value: Any, example: str) -> int:
    """A size in bytes: a whole number of bytes, or text with a unit ("5GiB", "500 MB")."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        text = value.strip().upper().replace(" ", "")
        number = text.rstrip("KMGTIB")
        unit = text[len(number) :]
        try:
            amount = float(number)
        except ValueError:
            amount = -1.0
        if unit in SIZE_UNITS and amount >= 0:
            return int(amount * SIZE_UNITS[unit])
    raise ConfigError(f"{where} = {value!r}; use a size like {example} (or a number of bytes)")


def setup_commands(where: str, value: Any) -> tuple[tuple[str, ...], ...]:
    """`setup`: one argv (["uv", "pip", "install", "-r", "requirements.txt"]) or a list of
    them, run one after the other without a shell; absent: ()."""
    example = '["uv", "pip", "install", "-r", "requirements.txt"]'
    if value is None:
        return ()
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        return tuple(argv_list(f"{where}[{i}]", v, example) for i, v in enumerate(value))
    return (argv_list(where, value, example),)


def env_table(where: str, value: Any) -> dict[str, str]:
    """An environment table: names to text values."""
    expect(where, value, dict, '{ OMP_NUM_THREADS = "1" }')
    for key, item in value.items():
        expect(f"{where}.{key}", item, str, '"1" (environment values are strings)')
        if not key or "=" in key or "\0" in key or "\0" in item:
            raise ConfigError(f"{where}.{key}: not a name and value an environment can hold")
    return dict(value)


def sync_dir(where: str, path: Path) -> None:
    """`sync`: a directory on this machine, uploaded to the hosts before a launch."""
    if not path.is_dir():
        raise ConfigError(
            f"{where} = {str(path)!r} is not a directory on this machine; point it at the "
            'directory holding the job\'s code, relative to the config, e.g. sync = "."'
        )


def days(where: str, value: Any) -> float:
    """A positive number of days (fractions allowed: 0.5 is twelve hours)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e6:
        raise ConfigError(f"{where} = {value!r}; expected a positive number of days, e.g. 30")
    return float(value)


def table_name(kind: str, where: str, raw: Any, keys: set[str], example: str) -> str:
    """The `name` of one `[[<kind>s]]` table (hosts, clusters), checked with the table's
    keys; errors name the table and a right value."""
    expect(where, raw, dict, f'[[{kind}s]] with name = "{example}"')
    known_keys(where, raw, keys)
    name = raw.get("name")
    if not isinstance(name, str):
        raise ConfigError(f'{where}.name is missing; e.g. name = "{example}"')
    check_name(f"{kind} name", f"{where}.name", name)
    return name


def unique_names(kind: str, names: list[str]) -> None:
    """Every `[[<kind>s]]` table has its own name (rows and `where` cells name them)."""
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(
                f"{kind}s: the name {name!r} is used twice; every {kind} needs its own name"
            )
