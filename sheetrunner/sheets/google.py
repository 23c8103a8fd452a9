"""The Google Sheets backend: one read per cycle, and a re-read plus one batch when it writes.

Quota is the binding constraint (60 reads and 60 writes a minute per service
account). A cycle's read is one `values:batchGet` of the experiments tab and
the hidden `_sheetrunner` tab together. A cycle that writes reads both again
just before its one `spreadsheets:batchUpdate`: the cycle between read and
write lasts seconds (probes, kills, launches) and people sort and delete rows
meanwhile, so every row update is placed again by `sheet.relocate.locate`
against that fresh read, and the `_sheetrunner` tab is written only if it
still shows what the cycle read (compare-and-set, as close as an API without
one allows: the window is one request's latency).

Writes are typed `updateCells` addressed by sheetId: the sheet never parses
our text as a formula, and renaming the tab breaks nothing. Only owned cells
are written, with the narrowest field masks (a user's bold text or number
format survives).

This module decides what to read and write; how a request travels (endpoint,
timeout, retries), the credentials, and what a failure means live in
google_http.py.
"""

from __future__ import annotations

import enum
import logging
import math
import random
import re
from dataclasses import dataclass, field, replace
from typing import Any

import google.auth.credentials
import gspread
from gspread.exceptions import APIError, GSpreadException
from gspread.http_client import ParamsType
from gspread.utils import absolute_range_name

from sheetrunner.errors import ConfigError, SheetError, SheetUnavailable
from sheetrunner.sheet.lease import META_TAB, meta_from_rows
from sheetrunner.sheet.relocate import RowIndex, locate, rows_showing, shown
from sheetrunner.sheet.table import RowInsert, RowUpdate, SheetWrite, Sparkline, Table
from sheetrunner.sheets.google_http import ENDPOINT_ENV as ENDPOINT_ENV
from sheetrunner.sheets.google_http import (
    ErrorContext,
    RetryPolicy,
    account_name,
    is_title_taken,
    is_unknown_range,
    load_credentials,
    resolve_endpoint,
    sheets_client,
    translated_errors,
)

log = logging.getLogger(__name__)

ACTIONS = ("run", "hold", "stop", "rerun")
JOB_HEADER = "job"
ACTION_HEADER = "action"
_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


# ---------------------------------------------------------------- configuration


def spreadsheet_key(url_or_key: str) -> str:
    """The spreadsheet id from a docs.google.com URL or a bare key."""
    text = (url_or_key or "").strip()
    if "/" in text:
        try:
            text = gspread.utils.extract_id_from_url(text)
        except gspread.exceptions.NoValidUrlKeyFound:
            raise ConfigError(
                f"[sheet] url {url_or_key!r} is not a Google Sheets URL; copy the address of "
                "the sheet (https://docs.google.com/spreadsheets/d/<key>/edit) or just its key"
            ) from None
    if not _KEY.match(text):
        raise ConfigError(f"[sheet] url {url_or_key!r} is neither a Google Sheets URL nor a key")
    return text


# ---------------------------------------------------------------- the backend


@dataclass
class _Tab:
    """What we keep of a tab's metadata: enough to address it by sheetId."""

    sheet_id: int
    title: str
    row_count: int
    col_count: int

    @classmethod
    def from_properties(cls, props: dict[str, Any]) -> _Tab:
        grid = props.get("gridProperties", {})
        return cls(
            props["sheetId"], props["title"], grid.get("rowCount", 0), grid.get("columnCount", 0)
        )


@dataclass
class _Batch:
    """One write's requests, and the metadata to remember once it succeeded."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    grown: dict[int, tuple[int, int]] = field(default_factory=dict)  # sheetId -> (rows, cols)
    created: list[_Tab] = field(default_factory=list)
    header: list[str] = field(default_factory=list)


class GoogleSheet:
    """A `SheetBackend` on one tab of a Google Sheet (or of the emulator, via an endpoint).

    Metadata (the tabs' sheetIds and sizes) is fetched on first use, two reads,
    and cached. It is fetched again after a permanent error, when a range no
    longer parses (a tab renamed or deleted), and while the cache says the
    `_sheetrunner` tab does not exist: a read then costs one more request, so
    a tab another daemon created is seen by the next read. With the lease
    (sheet/lease.py) that state lasts until the first write creates the tab.
    """

    def __init__(
        self,
        url_or_key: str,
        worksheet: str | None = None,
        credentials: str | google.auth.credentials.Credentials | None = None,
        endpoint: str | None = None,
        timeout_s: float = 30,
        max_attempts: int = 6,
        *,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 32.0,
        id_header: str = "id",
    ) -> None:
        self.key = spreadsheet_key(url_or_key)
        self.worksheet = worksheet
        self.endpoint = resolve_endpoint(endpoint)
        self.id_header = id_header
        self.policy = RetryPolicy(max_attempts, backoff_base_s, backoff_max_s)
        creds = load_credentials(credentials, self.endpoint)
        self._errors = ErrorContext(self.key, account_name(creds), self.endpoint, max_attempts)
        self._client = sheets_client(creds, self.endpoint, self.policy, timeout_s)
        self._spreadsheet: gspread.Spreadsheet | None = None
        self._tab: _Tab | None = None
        self._tabs: dict[str, _Tab] = {}
        self._table: Table | None = None
        self._pending: SheetWrite | None = None

    @property
    def pending(self) -> SheetWrite | None:
        """Updates a failed write kept for the next one (None when nothing is waiting)."""
        return self._pending

    # ------------------------------------------------------------ SheetBackend

    def read(self) -> Table:
        """The experiments tab and the `_sheetrunner` tab in one request, typed
        (UNFORMATTED_VALUE), rows ragged; `meta` is None when that tab does not exist."""
        self._table = self._read_tabs()
        return self._table

    def write(self, change: SheetWrite) -> None:
        """Send `change`, plus whatever a failed write left pending, as one batchUpdate,
        each row placed again against a read made just before it."""
        merged = _merge(self._pending, change, self.id_header)
        self._pending = None
        if not _worth_sending(merged, self._table):
            return
        fresh = self._reread_for(merged)
        placed = _place(merged, fresh)
        self._deliver(placed, fresh)

    def initialize(self, header: list[str], job_names: list[str]) -> None:
        """Write the header (frozen, with dropdowns) into an empty tab, else add missing columns."""
        tab = self._open()
        table = self.read()
        batch = _Batch(header=list(table.header))
        if not table.header and not table.rows:
            self._add_columns(batch, tab, header)
            batch.requests.append(_freeze_header(tab))
            batch.requests += _dropdowns(tab, header, job_names)
        else:
            self._add_columns(batch, tab, [h for h in header if h not in table.header])
        if batch.requests:
            self._send(batch)
            self._remember(batch)

    # ------------------------------------------------------------ reading

    def _read_tabs(self) -> Table:
        """One values:batchGet of the experiments tab and, when it exists, `_sheetrunner`.

        A range that no longer parses (the tab renamed, or `_sheetrunner` deleted)
        costs one metadata read and one more try."""
        just_loaded = self._tab is None
        self._open()
        with translated_errors(self._errors):
            if not just_loaded and META_TAB not in self._tabs:
                self._reload_tabs()  # another daemon may have created it since
            try:
                answer = self._get_values()
            except APIError as exc:
                if not is_unknown_range(exc):
                    raise
                self._reload_tabs()
                answer = self._get_values()
        return self._table_from(answer["valueRanges"])

    def _reread_for(self, change: SheetWrite) -> Table:
        """The read a write is placed against, made just before it. Like every read it
        fetches the metadata first while `_sheetrunner` is not known to exist, so a write
        creating that tab knows it is really missing (an addSheet of a taken title would
        fail the whole batch)."""
        try:
            return self._read_tabs()
        except SheetUnavailable as exc:
            self._pending = _keepable(change)
            raise SheetUnavailable(f"{exc}; {_kept(change)}") from exc
        except SheetError:
            self._forget_metadata()
            raise

    def _meta_ranges(self) -> list[str]:
        assert self._tab is not None
        wanted = [self._tab.title]
        if META_TAB in self._tabs and META_TAB != self._tab.title:
            wanted.append(META_TAB)
        return wanted

    def _get_values(self) -> dict[str, Any]:
        assert self._spreadsheet is not None
        params: ParamsType = {
            "valueRenderOption": "UNFORMATTED_VALUE",
            "dateTimeRenderOption": "FORMATTED_STRING",
            "majorDimension": "ROWS",
        }
        ranges = [absolute_range_name(title) for title in self._meta_ranges()]
        return self._spreadsheet.values_batch_get(ranges, params=params)

    def _table_from(self, value_ranges: list[dict[str, Any]]) -> Table:
        """The answer's ranges in the order asked: the experiments tab, then `_sheetrunner`."""
        titles = self._meta_ranges()
        for title, value_range in zip(titles, value_ranges, strict=False):
            self._note_grid_size(self._tabs.get(title, self._tab), value_range.get("range", ""))
        rows = value_ranges[0].get("values", [])
        header = [str(h) for h in rows[0]] if rows else []
        meta = meta_from_rows(value_ranges[1].get("values", [])) if len(titles) > 1 else None
        return Table(header=header, rows=rows[1:], meta=meta, source=self.key)

    # ------------------------------------------------------------ metadata

    def _open(self) -> _Tab:
        if self._tab is None:
            with translated_errors(self._errors):
                if self._spreadsheet is None:
                    self._spreadsheet = self._client.open_by_key(self.key)
                self._load_tabs()
            self._tab = self._pick_tab()
            log.info(
                "using spreadsheet %s tab %r (sheetId %d)",
                self.key,
                self._tab.title,
                self._tab.sheet_id,
            )
        return self._tab

    def _load_tabs(self) -> None:
        assert self._spreadsheet is not None
        sheets = self._spreadsheet.fetch_sheet_metadata()["sheets"]
        tabs = sorted(sheets, key=lambda s: s["properties"].get("index", 0))
        self._tabs = {s["properties"]["title"]: _Tab.from_properties(s["properties"]) for s in tabs}

    def _pick_tab(self) -> _Tab:
        if self.worksheet is None:
            return next(iter(self._tabs.values()))
        tab = self._tabs.get(self.worksheet)
        if tab is None:
            raise SheetError(
                f"spreadsheet {self.key} has no tab named {self.worksheet!r} (it has: "
                f"{', '.join(map(repr, self._tabs))}); fix [sheet] worksheet"
            )
        return tab

    def _reload_tabs(self) -> _Tab:
        """Fetch the tabs again (one read) and find ours by its sheetId: its title may have
        changed under us, and `_sheetrunner` may have appeared or gone."""
        assert self._tab is not None
        old = self._tab
        self._load_tabs()
        found = next((t for t in self._tabs.values() if t.sheet_id == old.sheet_id), None)
        if found is None:
            self._tab = None
            raise SheetError(
                f"tab {old.title!r} (sheetId {old.sheet_id}) is gone from spreadsheet "
                f"{self.key}; restore it (File > Version history) or fix [sheet] worksheet"
            )
        if found.title != old.title:
            log.info("tab %r was renamed to %r; following it by sheetId", old.title, found.title)
        self._tab = found
        return found

    def _forget_metadata(self) -> None:
        self._tab = None

    @staticmethod
    def _note_grid_size(tab: _Tab | None, echoed: str) -> None:
        """A read echoes the whole grid's range ("Runs!A1:Z1000"): keep the cached size
        current for free, so a column a user inserted or deleted cannot skew a later write."""
        try:
            grid = gspread.utils.a1_range_to_grid_range(echoed.rpartition("!")[2])
        except GSpreadException:
            return
        if tab is not None and "endRowIndex" in grid and "endColumnIndex" in grid:
            tab.row_count, tab.col_count = grid["endRowIndex"], grid["endColumnIndex"]

    # ------------------------------------------------------------ building the batch

    def _plan(self, change: SheetWrite, fresh: Table) -> _Batch:
        """The requests for a change already placed against `fresh` (rows, header, sizes)."""
        tab = self._open()
        batch = _Batch(header=list(fresh.header))
        self._add_columns(batch, tab, change.new_columns)
        if change.meta is not None:  # first, like side tabs
            self._meta_tab_requests(batch, change.meta)
        for name, rows in change.tabs.items():  # first: curve formulas refer to these tabs
            self._side_tab_requests(batch, name, rows)
        columns = _column_index(batch.header)
        for update in change.rows:
            batch.requests += _row_requests(tab.sheet_id, update, columns)
        for insert in sorted(change.inserts, key=lambda i: -i.after_row):  # bottom first
            batch.requests += _insert_requests(tab.sheet_id, insert, columns)
            height, width = batch.grown.get(tab.sheet_id, (tab.row_count, tab.col_count))
            batch.grown[tab.sheet_id] = (height + len(insert.rows), width)
        return batch

    def _add_columns(self, batch: _Batch, tab: _Tab, names: list[str]) -> None:
        """Headers appended right of the last header cell, growing the grid first if needed."""
        new = [n for n in dict.fromkeys(names) if n not in batch.header]
        if not new:
            return
        start = len(batch.header)
        batch.grown[tab.sheet_id] = _grow(batch, tab, tab.row_count, start + len(new))
        batch.requests.append(_update_cells(tab.sheet_id, 0, start, [new]))
        batch.header += new

    def _meta_tab_requests(self, batch: _Batch, rows: list[list[str]]) -> None:
        """`_sheetrunner` replaced whole, and hidden again should a person have shown it."""
        existing = self._tabs.get(META_TAB)
        self._side_tab_requests(batch, META_TAB, rows, allow_meta=True)
        if existing is not None:
            props = {"sheetId": existing.sheet_id, "hidden": True}
            batch.requests.append(
                {"updateSheetProperties": {"properties": props, "fields": "hidden"}}
            )

    def _side_tab_requests(
        self, batch: _Batch, name: str, rows: list[list[Any]], allow_meta: bool = False
    ) -> None:
        """Replace a side tab's values whole (creating it the first time, hidden when its name
        starts with "_": sheetrunner's own data, like the workbook's)."""
        if self._tab is not None and name == self._tab.title:
            log.error("refusing to overwrite the experiments tab %r as a side tab", name)
            return
        if name == META_TAB and not allow_meta:
            log.error("refusing to write %r as a side tab: only SheetWrite.meta writes it", name)
            return
        height, width = max(len(rows), 1), max((len(r) for r in rows), default=1) or 1
        tab = self._tabs.get(name)
        if tab is None:
            tab = _Tab(self._new_sheet_id(batch), name, height, width)
            batch.requests.append(_add_sheet(tab))
            batch.created.append(tab)
        else:
            batch.grown[tab.sheet_id] = _grow(batch, tab, height, width)
        whole = {"sheetId": tab.sheet_id}
        batch.requests.append(
            {"updateCells": {"range": whole, "rows": _row_data(rows), "fields": "userEnteredValue"}}
        )

    def _new_sheet_id(self, batch: _Batch) -> int:
        taken = {t.sheet_id for t in self._tabs.values()} | {t.sheet_id for t in batch.created}
        while True:
            sheet_id = random.randrange(1, 2**31 - 1)
            if sheet_id not in taken:
                return sheet_id

    # ------------------------------------------------------------ sending

    def _deliver(self, placed: SheetWrite, fresh: Table) -> None:
        """Send the placed change. A failure keeps it for the next write (transient) or drops
        it with the cached metadata (permanent). Should another daemon create `_sheetrunner`
        in the instant between our re-read and our batch, the addSheet fails the whole batch:
        the compare-and-set is then lost, and the rest is sent again without it."""
        batch = self._plan(placed, fresh)
        if not batch.requests:  # e.g. every update dropped, or only unknown columns
            return
        try:
            self._send(batch)
        except SheetUnavailable as exc:
            self._pending = _keepable(placed)
            raise SheetUnavailable(f"{exc}; {_kept(placed)}") from exc
        except SheetError as exc:
            if _meta_tab_taken(exc, batch):
                log.info("%s was created by someone else just now; not writing it", META_TAB)
                self._reload_metadata_quietly()
                self._deliver(replace(placed, meta=None), fresh)
                return
            self._forget_metadata()
            raise
        self._remember(batch)

    def _reload_metadata_quietly(self) -> None:
        """Learn of the `_sheetrunner` tab now, or (should that fail) on the next open."""
        try:
            with translated_errors(self._errors):
                self._reload_tabs()
        except SheetError:
            self._forget_metadata()

    def _send(self, batch: _Batch) -> None:
        assert self._spreadsheet is not None
        with translated_errors(self._errors):
            self._spreadsheet.batch_update({"requests": batch.requests})

    def _remember(self, batch: _Batch) -> None:
        """After a successful write: the grid sizes, new tabs and header it produced."""
        self._tabs.update({t.title: t for t in batch.created})
        for tab in self._tabs.values():  # the experiments tab is one of these objects
            if tab.sheet_id in batch.grown:
                tab.row_count, tab.col_count = batch.grown[tab.sheet_id]
        if self._table is not None:
            self._table.header = list(batch.header)


def _meta_tab_taken(exc: SheetError, batch: _Batch) -> bool:
    created_meta = any(t.title == META_TAB for t in batch.created)
    cause = exc.__cause__
    return created_meta and isinstance(cause, APIError) and is_title_taken(cause)


# ---------------------------------------------------------------- placing a write


def _merge(older: SheetWrite | None, newer: SheetWrite, id_header: str) -> SheetWrite:
    """A failed write's updates under this cycle's, newest value winning per cell.

    Nothing is placed here: every update, old or new, is placed against the
    read made just before the batch (`_place`). Older inserts and meta are
    dropped: the daemon derives a sweep's missing rows and the lease from the
    sheet every cycle, so keeping them could insert twice or write a stale lease.
    """
    if older is None:
        return newer
    rows: dict[Any, RowUpdate] = {}
    for update in [*older.rows, *newer.rows]:
        key = _run_key(update, id_header)
        rows[key] = _combine(rows[key], update) if key in rows else update
    return replace(
        newer,
        new_columns=list(dict.fromkeys(older.new_columns + newer.new_columns)),
        rows=list(rows.values()),
        tabs={**older.tabs, **newer.tabs},
    )


def _run_key(update: RowUpdate, id_header: str) -> Any:
    return update.run_id or update.cells.get(id_header) or ("row", update.row)


def _combine(old: RowUpdate, new: RowUpdate) -> RowUpdate:
    return replace(
        new,
        run_id=new.run_id or old.run_id,
        cells={**old.cells, **new.cells},
        fill=new.fill if new.fill is not None else old.fill,
    )


def _keepable(change: SheetWrite) -> SheetWrite:
    """What a failed write keeps for the next one: cells, columns and side tabs."""
    return SheetWrite(new_columns=change.new_columns, rows=change.rows, tabs=change.tabs)


def _kept(change: SheetWrite) -> str:
    return f"{len(change.rows)} row update(s) kept for the next write"


def _worth_sending(change: SheetWrite, read: Table | None) -> bool:
    """Whether `change` could send anything, judged on the cycle's read so that a write
    of nothing (only cells under headers the sheet lacks) costs no re-read."""
    if change.is_empty():
        return False
    if read is None or change.tabs or change.inserts or change.meta is not None:
        return True
    header = set(read.header)
    if any(name not in header for name in change.new_columns):
        return True
    known = header | set(change.new_columns)
    return any(u.fill is not None or any(h in known for h in u.cells) for u in change.rows)


def _place(change: SheetWrite, fresh: Table) -> SheetWrite:
    """`change` as it may land on the sheet as it is now: each row update moved to the row
    `locate` finds (or dropped), each insert kept only under a row still showing what
    was read, and the `_sheetrunner` tab only if it still shows `meta_expect`."""
    by_id = rows_showing(fresh)
    rows = [placed for u in change.rows if (placed := _place_row(u, fresh, by_id)) is not None]
    inserts = [i for i in change.inserts if _parent_unchanged(i, fresh)]
    meta = change.meta if _meta_unchanged(change, fresh) else None
    return replace(change, rows=rows, inserts=inserts, meta=meta)


def _place_row(update: RowUpdate, fresh: Table, by_id: RowIndex) -> RowUpdate | None:
    row = locate(update, fresh, by_id)
    if row is None:
        if update.run_id:
            log.info(
                "run %s: no row (or more than one moved row) shows it now; its sheet "
                "update waits for the next cycle",
                update.run_id,
            )
        else:
            log.info("row %d changed before its claim was written; claim not written", update.row)
        return None
    if row != update.row:
        log.info(
            "run %s moved from row %d to row %d; writing it there", update.run_id, update.row, row
        )
    return replace(update, row=row)


def _parent_unchanged(insert: RowInsert, fresh: Table) -> bool:
    same = all(shown(fresh, insert.after_row, n) == v for n, v in insert.expect.items())
    if not same:
        log.info(
            "row %d changed before its sweep rows were inserted; not inserted", insert.after_row
        )
    return same


def _meta_unchanged(change: SheetWrite, fresh: Table) -> bool:
    if change.meta is None:
        return False
    if fresh.meta != change.meta_expect:
        log.info(
            "the %s tab changed since this cycle's read (another daemon?); not writing it", META_TAB
        )
        return False
    return True


# ---------------------------------------------------------------- request JSON


def typed_value(value: Any) -> dict[str, Any]:
    """An ExtendedValue that the sheet stores as is: text is never parsed as a formula.

    The one formula written on purpose is a `Sparkline` (a curve drawn from the
    hidden metrics tab); any text, "=SPARKLINE(...)" included, stays text.
    """
    if isinstance(value, Sparkline):
        return {"formulaValue": value.formula()}
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None or value == "":
        return {}
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int | float) and math.isfinite(value):
        return {"numberValue": value}
    return {"stringValue": str(value)}


def rgb(fill: str) -> dict[str, float]:
    """Hex "C9DAF8" -> {"red": 0.788, ...}; the API stores colours in 1/255 steps anyway."""
    digits = fill.lstrip("#")
    if not re.fullmatch(r"[0-9A-Fa-f]{6}", digits):
        raise ValueError(f"row fill {fill!r} is not an RGB hex colour like 'C9DAF8'")
    levels = (int(digits[i : i + 2], 16) / 255 for i in (0, 2, 4))
    return dict(zip(("red", "green", "blue"), levels, strict=True))


def _column_index(header: list[str]) -> dict[str, int]:
    columns: dict[str, int] = {}
    for i, name in enumerate(header):
        if name:
            columns.setdefault(name, i)
    return columns


def _row_requests(
    sheet_id: int, update: RowUpdate, columns: dict[str, int]
) -> list[dict[str, Any]]:
    """One updateCells per run of adjacent owned columns, one repeatCell for the row colour."""
    unknown = [h for h in update.cells if h not in columns]
    if unknown:
        log.warning("row %d: no column %s in the sheet; not written", update.row, unknown)
    cells = sorted((columns[h], v) for h, v in update.cells.items() if h in columns)
    requests_ = [
        _update_cells(sheet_id, update.row - 1, start, [values])
        for start, values in _adjacent_runs(cells)
    ]
    if update.fill is not None:
        requests_ += _fill_request(sheet_id, update)
    return requests_


def _fill_request(sheet_id: int, update: RowUpdate) -> list[dict[str, Any]]:
    """The row's background ("" clears it); only that format field, so a user's bold stays."""
    try:
        colour = {"backgroundColor": rgb(update.fill)} if update.fill else {}
    except ValueError as exc:
        log.warning("row %d: %s; colour not written", update.row, exc)
        return []
    row = {"sheetId": sheet_id, "startRowIndex": update.row - 1, "endRowIndex": update.row}
    fields = "userEnteredFormat.backgroundColor"
    return [{"repeatCell": {"range": row, "cell": {"userEnteredFormat": colour}, "fields": fields}}]


def _insert_requests(
    sheet_id: int, insert: RowInsert, columns: dict[str, int]
) -> list[dict[str, Any]]:
    """New empty rows under `after_row` (the row as read this cycle), then their cells."""
    if not insert.rows:
        return []
    start = insert.after_row  # 0-based index of the first new row
    rows = {"sheetId": sheet_id, "dimension": "ROWS", "startIndex": start}
    rows["endIndex"] = start + len(insert.rows)
    requests_: list[dict[str, Any]] = [
        {"insertDimension": {"range": rows, "inheritFromBefore": False}}
    ]
    for offset, values in enumerate(insert.rows):
        unknown = [h for h in values if h not in columns]
        if unknown:
            log.warning("inserted row %d: no column %s in the sheet", start + offset + 1, unknown)
        cells = sorted((columns[h], v) for h, v in values.items() if h in columns)
        requests_ += [
            _update_cells(sheet_id, start + offset, col, [run])
            for col, run in _adjacent_runs(cells)
        ]
    return requests_


def _adjacent_runs(cells: list[tuple[int, Any]]) -> list[tuple[int, list[Any]]]:
    runs: list[tuple[int, list[Any]]] = []
    for col, value in cells:
        if runs and runs[-1][0] + len(runs[-1][1]) == col:
            runs[-1][1].append(value)
        else:
            runs.append((col, [value]))
    return runs


def _update_cells(sheet_id: int, row0: int, col0: int, rows: list[list[Any]]) -> dict[str, Any]:
    width = max(len(r) for r in rows)
    grid_range = {
        "sheetId": sheet_id,
        "startRowIndex": row0,
        "endRowIndex": row0 + len(rows),
        "startColumnIndex": col0,
        "endColumnIndex": col0 + width,
    }
    return {
        "updateCells": {"range": grid_range, "rows": _row_data(rows), "fields": "userEnteredValue"}
    }


def _row_data(rows: list[list[Any]]) -> list[dict[str, Any]]:
    return [{"values": [{"userEnteredValue": typed_value(v)} for v in row]} for row in rows]


def _grow(batch: _Batch, tab: _Tab, rows: int, cols: int) -> tuple[int, int]:
    """appendDimension requests so the grid holds at least rows x cols; the resulting size."""
    size = (max(tab.row_count, rows), max(tab.col_count, cols))
    have_size = (tab.row_count, tab.col_count)
    for dimension, have, want in zip(("ROWS", "COLUMNS"), have_size, size, strict=True):
        if want > have:
            append = {"sheetId": tab.sheet_id, "dimension": dimension, "length": want - have}
            batch.requests.append({"appendDimension": append})
    return size


def _add_sheet(tab: _Tab) -> dict[str, Any]:
    grid = {"rowCount": tab.row_count, "columnCount": tab.col_count}
    props = {"sheetId": tab.sheet_id, "title": tab.title, "gridProperties": grid}
    if tab.title.startswith("_"):
        props["hidden"] = True
    return {"addSheet": {"properties": props}}


def _freeze_header(tab: _Tab) -> dict[str, Any]:
    props = {"sheetId": tab.sheet_id, "gridProperties": {"frozenRowCount": 1}}
    return {
        "updateSheetProperties": {"properties": props, "fields": "gridProperties.frozenRowCount"}
    }


def _dropdowns(tab: _Tab, header: list[str], job_names: list[str]) -> list[dict[str, Any]]:
    """Dropdowns under `action` (strict: a typo is refused) and `job` (a warning only:
    a job added to the config later must still be typeable)."""
    lists = [(ACTION_HEADER, list(ACTIONS), True), (JOB_HEADER, list(job_names), False)]
    requests_ = []
    for name, choices, strict in lists:
        if name not in header or not choices:
            continue
        col = header.index(name)
        below_header = {
            "sheetId": tab.sheet_id,
            "startRowIndex": 1,
            "startColumnIndex": col,
            "endColumnIndex": col + 1,
        }
        condition = {"type": "ONE_OF_LIST", "values": [{"userEnteredValue": c} for c in choices]}
        rule = {"condition": condition, "strict": strict, "showCustomUi": True}
        requests_.append({"setDataValidation": {"range": below_header, "rule": rule}})
    return requests_
