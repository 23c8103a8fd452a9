"""The sheet's namespace and its owner's lease, as a pure rule (sheet/lease.py, ownership.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sheetrunner.errors import SheetOwned
from sheetrunner.ownership import Ownership
from sheetrunner.sheet import lease
from sheetrunner.sheet.table import Table

T0 = datetime(2026, 1, 1, tzinfo=UTC)
ME = lease.Daemon("server", 100, "/srv/state")
OTHER = lease.Daemon("laptop", 200, "/home/me/state")
SOURCE = "/srv/experiments.xlsx"


def meta_for(owner: lease.Daemon, until: datetime, namespace: str = "ns0000000001",
             source: str = SOURCE) -> dict[str, str]:
    return lease.meta_from_rows(lease.tab_rows(namespace, source, lease.Lease(owner, T0, until)))


def test_a_sheet_without_the_tab_gets_a_namespace_and_our_lease_but_we_act_only_after_a_read():
    d = lease.decide(None, SOURCE, ME, T0, 300, make_namespace=lambda: "nsfresh00001")
    assert not d.owned and d.namespace == "nsfresh00001" and d.tab is not None
    written = lease.meta_from_rows(d.tab)
    again = lease.decide(written, SOURCE, ME, T0 + timedelta(seconds=5), 300)
    assert again.owned and again.namespace == "nsfresh00001" and again.tab is None


def test_a_live_lease_of_another_daemon_refuses_us_and_names_it():
    d = lease.decide(meta_for(OTHER, T0 + timedelta(seconds=100)), SOURCE, ME, T0, 300)
    assert not d.owned and d.refused_by is not None and d.refused_by.owner == OTHER
    with pytest.raises(SheetOwned, match="pid 200 on laptop"):
        Ownership(ME, 300).turn(Table([], [], meta_for(OTHER, T0 + timedelta(seconds=100)), SOURCE), T0)


def test_an_expired_lease_is_taken_over_keeping_the_namespace():
    d = lease.decide(meta_for(OTHER, T0 - timedelta(seconds=1)), SOURCE, ME, T0, 300)
    assert not d.owned and d.refused_by is None and d.namespace == "ns0000000001"
    assert lease.lease_of(lease.meta_from_rows(d.tab)).owner == ME


def test_take_over_takes_a_live_lease():
    d = lease.decide(meta_for(OTHER, T0 + timedelta(seconds=100)), SOURCE, ME, T0, 300, take_over=True)
    assert d.refused_by is None and lease.lease_of(lease.meta_from_rows(d.tab)).owner == ME


def test_a_restart_from_the_same_state_directory_takes_its_own_lease_at_once():
    earlier_me = lease.Daemon(ME.host, 99, ME.state_dir)  # SIGKILLed; we hold its flock now
    d = lease.decide(meta_for(earlier_me, T0 + timedelta(seconds=200)), SOURCE, ME, T0, 300)
    assert d.refused_by is None and d.tab is not None


def test_our_lease_is_renewed_only_when_half_of_it_is_left():
    assert lease.decide(meta_for(ME, T0 + timedelta(seconds=200)), SOURCE, ME, T0, 300).tab is None
    due = lease.decide(meta_for(ME, T0 + timedelta(seconds=100)), SOURCE, ME, T0, 300)
    assert due.owned and lease.lease_of(lease.meta_from_rows(due.tab)).until == T0 + timedelta(seconds=300)


def test_a_copied_sheet_gets_its_own_namespace():
    copied = meta_for(OTHER, T0 + timedelta(seconds=100), source="/other/original.xlsx")
    d = lease.decide(copied, SOURCE, ME, T0, 300, make_namespace=lambda: "nscopy000001")
    assert d.refused_by is None and d.namespace == "nscopy000001"


def test_a_damaged_tab_is_written_again_with_the_remembered_namespace():
    owner = Ownership(ME, 300, remembered=lambda source: "nsremembered")
    turn = owner.turn(Table([], [], {"namespace": "../../x", "sheet": SOURCE}, SOURCE), T0)
    assert not turn.acting and lease.meta_from_rows(turn.tab)["namespace"] == "nsremembered"


def test_while_the_sheet_is_unreadable_we_act_only_inside_our_lease():
    owner = Ownership(ME, 300)
    assert owner.turn(Table([], [], meta_for(ME, T0 + timedelta(seconds=250)), SOURCE), T0).acting
    assert owner.turn(None, T0 + timedelta(seconds=200)).acting
    assert not owner.turn(None, T0 + timedelta(seconds=260)).acting


def test_a_daemon_whose_lease_was_taken_stops_saying_who_took_it():
    owner = Ownership(ME, 300)
    owner.turn(Table([], [], meta_for(ME, T0 + timedelta(seconds=250)), SOURCE), T0)
    with pytest.raises(SheetOwned, match="took this sheet over"):
        owner.turn(Table([], [], meta_for(OTHER, T0 + timedelta(seconds=400)), SOURCE), T0)


def test_handing_back_ends_our_lease_now():
    owner = Ownership(ME, 300)
    owner.turn(Table([], [], meta_for(ME, T0 + timedelta(seconds=250)), SOURCE), T0)
    tab = owner.release(T0 + timedelta(seconds=10))
    assert lease.lease_of(lease.meta_from_rows(tab)).until == T0 + timedelta(seconds=10)
    assert lease.decide(lease.meta_from_rows(tab), SOURCE, OTHER, T0 + timedelta(seconds=11), 300).refused_by is None
