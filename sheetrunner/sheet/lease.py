"""The sheet's hidden `_sheetrunner` tab: its namespace and the lease of its one owner.

Two daemons on one sheet would start every row twice, so a sheet has one
owner at a time. The owner's lease lives in the sheet itself, read with the
cycle's one read and renewed in its one write only when due (half the lease
left), so an idle cycle still writes nothing. The namespace, created once,
names the directory under every host's root where this sheet's runs live:
two sheets never see each other's attempts. A sheet copied with its hidden
tab still names the original in `sheet`, and gets a namespace of its own.

Pure: `decide` takes the tab as read and the clock, and says what to do.
The write of the tab is compare-and-set (`SheetWrite.meta_expect`): a backend
writes it only if the tab still shows what was read, so two daemons starting
at once cannot both believe they won.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..remote.protocol import is_namespace, new_namespace

META_TAB = "_sheetrunner"
NOTE = "sheetrunner's own data: the sheet's namespace and its daemon's lease. Do not edit."


@dataclass(frozen=True)
class Daemon:
    """Who a daemon is, as written in the lease: enough for a person to find and stop it."""

    host: str
    pid: int
    state_dir: str

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host} (state_dir {self.state_dir})"


@dataclass(frozen=True)
class Lease:
    owner: Daemon
    since: datetime
    until: datetime


@dataclass(frozen=True)
class Decision:
    """What the tab says for this daemon now.

    `owned`: this daemon may act on the sheet this cycle. `tab`: rows to write
    (None: nothing due). `refused_by`: the live lease of another daemon."""

    namespace: str | None
    owned: bool
    tab: list[list[str]] | None = None
    refused_by: Lease | None = None


def lease_of(meta: dict[str, str] | None) -> Lease | None:
    if not meta:
        return None
    try:
        owner = Daemon(meta["owner_host"], int(meta["owner_pid"]), meta["owner_state_dir"])
        return Lease(owner, _time(meta["owner_since"]), _time(meta["lease_until"]))
    except (KeyError, ValueError):
        return None


def namespace_of(meta: dict[str, str] | None, source: str) -> str | None:
    """The sheet's namespace, unless the tab is missing, damaged or copied from another sheet."""
    if not meta or meta.get("sheet") != source:
        return None
    namespace = meta.get("namespace", "")
    return namespace if is_namespace(namespace) else None


def decide(
    meta: dict[str, str] | None,
    source: str,
    me: Daemon,
    now: datetime,
    ttl_s: float,
    take_over: bool = False,
    make_namespace: Callable[[], str] = new_namespace,
) -> Decision:
    """The lease rule. A live lease of another daemon refuses us (unless `take_over`);
    our own lease is renewed when half of it is left; an expired one, or one left by
    an earlier daemon of our own state directory (it held the state's flock, which we
    now hold, so it is dead), is taken. Taking or creating acts only from the next
    cycle on, once a read shows that our write won."""
    namespace = namespace_of(meta, source)
    lease = lease_of(meta) if namespace else None
    if lease is not None and lease.owner == me:
        due = (lease.until - now).total_seconds() < ttl_s / 2
        renewed = tab_rows(namespace or "", source, Lease(me, lease.since, _until(now, ttl_s)))
        return Decision(namespace, True, renewed if due else None)
    if (
        lease is not None
        and lease.until > now
        and not take_over
        and not _same_state(lease.owner, me)
    ):
        return Decision(namespace, False, refused_by=lease)
    namespace = namespace or make_namespace()
    return Decision(
        namespace, False, tab_rows(namespace, source, Lease(me, now, _until(now, ttl_s)))
    )


def tab_rows(namespace: str, source: str, lease: Lease) -> list[list[str]]:
    return [
        ["sheetrunner", NOTE],
        ["namespace", namespace],
        ["sheet", source],
        ["owner_host", lease.owner.host],
        ["owner_pid", str(lease.owner.pid)],
        ["owner_state_dir", lease.owner.state_dir],
        ["owner_since", lease.since.isoformat(timespec="seconds")],
        ["lease_until", lease.until.isoformat(timespec="seconds")],
    ]


def meta_from_rows(rows: Sequence[Sequence[object]]) -> dict[str, str]:
    """The tab's cells as key -> value text (what backends put in `Table.meta`)."""
    found: dict[str, str] = {}
    for row in rows:
        if len(row) >= 2 and row[0] not in (None, ""):
            found[str(row[0]).strip()] = "" if row[1] is None else str(row[1]).strip()
    return found


def _same_state(owner: Daemon, me: Daemon) -> bool:
    return owner.host == me.host and owner.state_dir == me.state_dir


def _until(now: datetime, ttl_s: float) -> datetime:
    return (now + timedelta(seconds=ttl_s)).replace(microsecond=0)


def _time(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError("a lease time needs its time zone")
    return moment
