"""The Google Sheets backend: one read and at most one batched write per cycle, via gspread.

Quota is the binding constraint (60 reads and 60 writes a minute per service
account), so every cycle costs exactly one `values:batchGet` of the whole tab,
and at most one `spreadsheets:batchUpdate` carrying every owned cell, colour,
header and side tab. Writes are typed `updateCells` addressed by sheetId: the
sheet never parses our text as a formula, and renaming the tab breaks nothing.
The Sheets API has no compare-and-set, so only owned cells are ever written,
with the narrowest field masks (a user's bold text or number format survives).

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
from sheetrunner.sheet.schema import cell_text
from sheetrunner.sheet.table import RowInsert, RowUpdate, SheetWrite, Sparkline, Table
from sheetrunner.sheets.google_http import ENDPOINT_ENV as ENDPOINT_ENV
from sheetrunner.sheets.google_http import (
    ErrorContext,
    RetryPolicy,
    account_name,
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

    Metadata (the tab's sheetId and size, the other tabs) is fetched on first
    use, two reads, and cached; it is fetched again only after a permanent
    error or when the tab was renamed.
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
        """The whole tab in one request, typed (UNFORMATTED_VALUE), rows ragged."""
        tab = self._open()
        with translated_errors(self._errors):
            try:
                answer = self._get_values(tab)
            except APIError as exc:
                if not is_unknown_range(exc):
                    raise
                answer = self._get_values(self._follow_rename())
        value_range = answer["valueRanges"][0]
        self._note_grid_size(value_range.get("range", ""))
        rows = value_range.get("values", [])
        header = [str(h) for h in rows[0]] if rows else []
        self._table = Table(header=header, rows=rows[1:])
        return self._table

    def write(self, change: SheetWrite) -> None:
        """Send `change`, plus whatever a failed write left pending, as one batchUpdate."""
        merged = _merge(self._pending, change, self._table, self.id_header)
        if merged.is_empty():
            return
        if self._table is None:
            self.read()  # only when called without this cycle's read: rows need the header
        batch = self._plan(merged, self._open())
        if not batch.requests:  # e.g. only cells under headers the sheet lacks
            self._pending = None
            return
        try:
            self._send(batch)
        except SheetUnavailable as exc:
            self._pending = merged
            raise SheetUnavailable(
                f"{exc}; {len(merged.rows)} row update(s) kept for the next write"
            ) from exc
        except SheetError:
            self._pending = None
            self._forget_metadata()
            raise
        self._pending = None
        self._remember(batch)

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

    def _follow_rename(self) -> _Tab:
        """The tab's title changed under us: find it again by its sheetId (one extra read)."""
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
        log.info("tab %r was renamed to %r; following it by sheetId", old.title, found.title)
        self._tab = found
        return found

    def _forget_metadata(self) -> None:
        self._tab = None

    def _note_grid_size(self, echoed: str) -> None:
        """The read echoes the whole grid's range ("Runs!A1:Z1000"): keep the cached size
        current for free, so a column a user inserted or deleted cannot skew a later write."""
        try:
            grid = gspread.utils.a1_range_to_grid_range(echoed.rpartition("!")[2])
        except GSpreadException:
            return
        if self._tab is not None and "endRowIndex" in grid and "endColumnIndex" in grid:
            self._tab.row_count, self._tab.col_count = grid["endRowIndex"], grid["endColumnIndex"]

    def _get_values(self, tab: _Tab) -> dict[str, Any]:
        assert self._spreadsheet is not None
        params: ParamsType = {
            "valueRenderOption": "UNFORMATTED_VALUE",
            "dateTimeRenderOption": "FORMATTED_STRING",
            "majorDimension": "ROWS",
        }
        return self._spreadsheet.values_batch_get([absolute_range_name(tab.title)], params=params)

    # ------------------------------------------------------------ building the batch

    def _plan(self, change: SheetWrite, tab: _Tab) -> _Batch:
        assert self._table is not None
        batch = _Batch(header=list(self._table.header))
        self._add_columns(batch, tab, change.new_columns)
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

    def _side_tab_requests(self, batch: _Batch, name: str, rows: list[list[Any]]) -> None:
        """Replace a side tab's values whole (creating it the first time, hidden when its name
        starts with "_": sheetrunner's own data, like the workbook's)."""
        if self._tab is not None and name == self._tab.title:
            log.error("refusing to overwrite the experiments tab %r as a side tab", name)
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


# ---------------------------------------------------------------- pending writes


def _merge(
    older: SheetWrite | None, newer: SheetWrite, table: Table | None, id_header: str
) -> SheetWrite:
    """A failed write's updates under this cycle's, newest value winning per cell.

    Older row updates are found again in this cycle's read (by run id, or for
    a claim by its row still being unclaimed and showing the same user cells);
    rows that are gone are dropped, since writing by stale position could hit
    another run. Older inserts are dropped too: the daemon derives a sweep's
    missing rows from the sheet every cycle, so keeping them could insert twice.
    """
    if older is None:
        return newer
    rows: dict[Any, RowUpdate] = {}
    rows_by_id = _rows_by_id(table, id_header) if table is not None else {}
    for update in older.rows:
        moved = _relocate(update, table, id_header, rows_by_id)
        if moved is not None:
            rows[_run_key(moved, id_header)] = moved
    for update in newer.rows:
        key = _run_key(update, id_header)
        rows[key] = _combine(rows[key], update) if key in rows else update
    return SheetWrite(
        new_columns=list(dict.fromkeys(older.new_columns + newer.new_columns)),
        rows=list(rows.values()),
        tabs={**older.tabs, **newer.tabs},
        inserts=newer.inserts,
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


def _rows_by_id(table: Table, id_header: str) -> dict[str, int]:
    found: dict[str, int] = {}
    for row in range(2, len(table.rows) + 2):
        found.setdefault(_shown(table, row, id_header), row)
    found.pop("", None)
    return found


def _relocate(
    update: RowUpdate, table: Table | None, id_header: str, rows_by_id: dict[str, int]
) -> RowUpdate | None:
    if table is None:
        return update
    if update.run_id is not None:
        if update.run_id in rows_by_id:
            return replace(update, row=rows_by_id[update.run_id])
        log.info("run %s: its row is gone; dropping its pending sheet update", update.run_id)
        return None
    expect = update.expect or {JOB_HEADER: update.job}
    same = all(_shown(table, update.row, name) == value for name, value in expect.items())
    if same and _shown(table, update.row, id_header) == "":
        return update
    log.info("row %d changed before its claim was written; dropping the pending claim", update.row)
    return None


def _shown(table: Table, row: int, name: str) -> str:
    """A cell as text, compared the way rows.py compares it."""
    return cell_text(table.value(row, name)).strip()


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
