"""This daemon's hold on its sheet: the lease rule of sheet/lease.py applied cycle by cycle.

The daemon acts (probes, launches, kills, writes rows) only in a cycle where
it owns the sheet: a read showed its own lease, or the sheet could not be read
but the lease it last saw is still running by this daemon's clock (nobody can
take it before it expires). Creating a namespace or taking a lease is written
alone and acted on only after a later read shows that write won, so two
daemons starting at once never both act.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .errors import SheetOwned
from .remote.protocol import new_namespace
from .sheet import lease
from .sheet.table import Table

log = logging.getLogger(__name__)

MIN_LEASE_S = 300.0


def lease_seconds(poll_interval_s: float) -> float:
    """Long enough to ride out slow cycles and short sheet outages, short enough that a
    daemon that died with its machine is replaced within minutes."""
    return max(MIN_LEASE_S, 10 * poll_interval_s)


def this_daemon(state_dir: Path) -> lease.Daemon:
    return lease.Daemon(socket.gethostname(), os.getpid(), str(state_dir.resolve()))


@dataclass
class Turn:
    """What this cycle may do: act on the sheet's runs, and which tab rows to write."""

    acting: bool
    tab: list[list[str]] | None = None


class Ownership:
    def __init__(
        self,
        me: lease.Daemon,
        ttl_s: float,
        take_over: bool = False,
        remembered: Callable[[str], str | None] = lambda source: None,
    ):
        self.me = me
        self.ttl_s = ttl_s
        self.take_over = take_over
        self.remembered = remembered  # the namespace the store last used for a sheet
        self.namespace: str | None = None
        self.until: datetime | None = None  # our lease's end, as last seen in the sheet
        self.last_meta: dict[str, str] | None = None  # the tab as last read

    def turn(self, table: Table | None, now: datetime) -> Turn:
        """Decide this cycle; raises SheetOwned when another daemon holds the sheet."""
        if table is None:
            return Turn(self.until is not None and now < self.until)
        self.last_meta = table.meta
        remembered = self.remembered(table.source)
        decision = lease.decide(
            table.meta,
            table.source,
            self.me,
            now,
            self.ttl_s,
            self.take_over,
            make_namespace=lambda: remembered or new_namespace(),
        )
        if decision.refused_by is not None:
            raise SheetOwned(self._refusal(decision.refused_by))
        if not decision.owned:
            log.info(
                "claiming the sheet (namespace %s); acting from the next cycle on",
                decision.namespace,
            )
            self.until = None
            return Turn(False, decision.tab)
        shown = lease.lease_of(table.meta)
        if self.namespace is None:
            log.info("this daemon owns the sheet (namespace %s)", decision.namespace)
        self.namespace, self.take_over = decision.namespace, False
        self.until = shown.until if shown else None
        return Turn(True, decision.tab)

    def written(self, tab: list[list[str]] | None) -> None:
        """A renewal reached the sheet: our lease now runs to its new end."""
        if not tab:
            return
        self.last_meta = lease.meta_from_rows(tab)
        renewed = lease.lease_of(self.last_meta)
        if renewed is not None and self.namespace is not None:
            self.until = renewed.until

    def release(self, now: datetime) -> list[list[str]] | None:
        """The tab rows that end our lease now (None when we hold none)."""
        held = lease.lease_of(self.last_meta)
        if self.namespace is None or held is None or held.owner != self.me:
            return None
        return lease.tab_rows(
            self.namespace,
            self.last_meta.get("sheet", "") if self.last_meta else "",
            lease.Lease(self.me, held.since, now.replace(microsecond=0)),
        )

    def _refusal(self, held: lease.Lease) -> str:
        if self.namespace is not None:
            return (
                f"another sheetrunner daemon took this sheet over: {held.owner}, since "
                f"{held.since:%Y-%m-%d %H:%M:%S %Z}; this one stops here"
            )
        return (
            f"this sheet is owned by another sheetrunner daemon: {held.owner}, since "
            f"{held.since:%Y-%m-%d %H:%M:%S %Z}. Stop that one first; if its machine is "
            f"gone, its lease ends at {held.until:%Y-%m-%d %H:%M:%S %Z} and a new daemon takes "
            "over by itself, or start this one with --take-over"
        )
