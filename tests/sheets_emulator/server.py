"""The HTTP side of the emulator, its fault injection, counters and test hooks.

`SheetsEmulator` serves Sheets API v4 on 127.0.0.1 (any port, one thread per
connection) to unmodified gspread, and gives tests plain methods to set the
sheet up, act as a user (type in a cell, sort, delete a row) and check what a
client wrote, down to a cell's background colour.
"""

from __future__ import annotations

import json
import random
import re
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from . import batch_api, metadata, values_api
from .a1 import Box, col_index, parse_box
from .celldata import format_json
from .cells import colour_hex, from_raw, from_user_entered, render
from .model import ApiError, Sheet, Spreadsheet
from .values_api import Params

_ID = r"/v4/spreadsheets/(?P<id>[^/:]+)"
# (method, path pattern, endpoint name, quota kind)
_ROUTES = [
    ("GET", _ID + r"$", "spreadsheets.get", "read"),
    ("POST", _ID + r":batchUpdate$", "spreadsheets.batchUpdate", "write"),
    ("GET", _ID + r"/values:batchGet$", "values.batchGet", "read"),
    ("POST", _ID + r"/values:batchUpdate$", "values.batchUpdate", "write"),
    ("POST", _ID + r"/values:batchClear$", "values.batchClear", "write"),
    ("POST", _ID + r"/values/(?P<range>[^/]+):append$", "values.append", "write"),
    ("POST", _ID + r"/values/(?P<range>[^/]+):clear$", "values.clear", "write"),
    ("GET", _ID + r"/values/(?P<range>[^/]+)$", "values.get", "read"),
    ("PUT", _ID + r"/values/(?P<range>[^/]+)$", "values.update", "write"),
    ("POST", r"/token$", "token", "auth"),
]
DROP = "drop"  # fail_next(status=DROP): close the connection without answering

_FAULT_BODIES = {
    500: "Internal error encountered.",
    502: "Bad gateway.",
    503: "The service is currently unavailable.",
}


@dataclass(frozen=True)
class CellInfo:
    """What a test may want to know about one cell."""

    value: Any  # the computed value, typed (UNFORMATTED_VALUE); "" when blank
    formatted: str  # the displayed text (FORMATTED_VALUE)
    formula: str | None  # the formula text when the cell holds one
    background: str | None  # RRGGBB of userEnteredFormat.backgroundColor, None when unset
    format: dict[str, Any]  # userEnteredFormat as the API prints it
    validation: dict[str, Any] | None
    note: str | None


@dataclass(frozen=True)
class Fault:
    status: int | str
    kind: str | None  # "read", "write" or None for any request


@dataclass(frozen=True)
class Route:
    endpoint: str
    kind: str
    spreadsheet_id: str | None
    range_text: str | None


@dataclass(frozen=True)
class RequestRecord:
    method: str
    endpoint: str
    kind: str
    path: str
    status: int | str
    ranges: tuple[str, ...] = ()  # a values:batchGet's `ranges`, to check what one read asked


class SheetsEmulator:
    """An in-memory Google Sheets API v4 over real HTTP; use as a context manager or start/stop."""

    def __init__(self, seed: int = 0) -> None:
        self.latency_s = 0.0
        self.counts: Counter[str] = Counter()
        self.log: list[RequestRecord] = []
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._spreadsheets: dict[str, Spreadsheet] = {}
        self._last_id: str | None = None
        self._denied: set[str] = set()
        self._faults: deque[Fault] = deque()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """The origin to use instead of https://sheets.googleapis.com."""
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> SheetsEmulator:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.emulator = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> SheetsEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ faults and counters

    def fail_next(self, n: int = 1, status: int | str = 429, *, kind: str | None = None) -> None:
        """Answer the next `n` requests (of `kind` "read"/"write", or any) with an error.

        429 comes with the real quota body; 500/502/503 with the API's messages;
        DROP closes the connection without an answer.
        """
        with self._lock:
            self._faults.extend(Fault(status, kind) for _ in range(n))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset_counts(self) -> None:
        with self._lock:
            self.counts.clear()
            self.log.clear()

    # ------------------------------------------------------------ setting up

    def create_spreadsheet(
        self,
        tabs: Mapping[str, Sequence[Sequence[Any]]] | Sequence[str] = ("Sheet1",),
        *,
        title: str = "Untitled spreadsheet",
        spreadsheet_id: str | None = None,
        rows: int = 1000,
        cols: int = 26,
        typed: str = "USER_ENTERED",
    ) -> str:
        """A new spreadsheet; `tabs` maps each tab to its initial rows (typed as a user would).

        The first tab has sheetId 0, like a spreadsheet made in the UI. Returns its id.
        """
        spreadsheet_id = spreadsheet_id or self._new_id()
        contents = tabs if isinstance(tabs, Mapping) else {t: [] for t in tabs}
        convert = from_user_entered if typed == "USER_ENTERED" else from_raw
        sheets = []
        for index, (tab, data) in enumerate(contents.items()):
            width = max((len(r) for r in data), default=0)
            sheet_id = 0 if index == 0 else self._rng.randrange(1, 2**31 - 1)
            sheet = Sheet.new(sheet_id, tab, index, max(rows, len(data)), max(cols, width))
            for r, row in enumerate(data):
                for c, value in enumerate(row):
                    sheet.put(r, c, convert(value))
            sheets.append(sheet)
        ss = Spreadsheet(spreadsheet_id, metadata.default_properties(title), sheets)
        with self._lock:
            self._spreadsheets[spreadsheet_id] = ss
            self._last_id = spreadsheet_id
        return spreadsheet_id

    def delete_spreadsheet(self, spreadsheet_id: str) -> None:
        with self._lock:
            self._spreadsheets.pop(spreadsheet_id, None)

    def deny_access(self, spreadsheet_id: str | None = None) -> None:
        """Answer 403 for this spreadsheet, as when it is not shared with the caller."""
        with self._lock:
            self._denied.add(self._spreadsheet(spreadsheet_id).id)

    # ------------------------------------------------------------ looking

    def cell(
        self, a1: str, *, tab: str | None = None, spreadsheet_id: str | None = None
    ) -> CellInfo:
        """Everything about one cell; `a1` may name the tab ("'Runs'!B2")."""
        with self._lock:
            sheet, box = self._locate(a1, tab, spreadsheet_id)
            cell = sheet.cell(box.row0, box.col0)
            return CellInfo(
                value=render(cell, sheet.lookup, "UNFORMATTED_VALUE"),
                formatted=render(cell, sheet.lookup, "FORMATTED_VALUE"),
                formula=cell.formula,
                background=colour_hex(cell.fmt.get("backgroundColor")),
                format=format_json(cell),
                validation=dict(cell.validation) if cell.validation else None,
                note=cell.note,
            )

    def values(
        self,
        *,
        tab: str | None = None,
        spreadsheet_id: str | None = None,
        render_option: str = "UNFORMATTED_VALUE",
    ) -> list[list[Any]]:
        """The whole tab as values.get would return it (ragged rows)."""
        with self._lock:
            sheet = self._sheet(tab, spreadsheet_id)
            return values_api.read_grid(
                sheet, sheet.clip(None), render_option, "SERIAL_NUMBER", "ROWS"
            )

    def sheet_properties(
        self, tab: str | None = None, *, spreadsheet_id: str | None = None
    ) -> dict:
        with self._lock:
            return json.loads(json.dumps(self._sheet(tab, spreadsheet_id).props))

    def tabs(self, spreadsheet_id: str | None = None) -> list[str]:
        with self._lock:
            return [s.title for s in self._spreadsheet(spreadsheet_id).sheets]

    # ------------------------------------------------------------ acting as a user

    def set_cell(
        self,
        a1: str,
        value: Any,
        *,
        tab: str | None = None,
        spreadsheet_id: str | None = None,
        as_text: bool = False,
    ) -> None:
        """Type `value` into a cell as a user would ("=1+1" is a formula, "0.1" a number);
        `as_text` keeps it text, like a leading apostrophe."""
        with self._lock:
            sheet, box = self._locate(a1, tab, spreadsheet_id)
            entered = from_raw(value) if as_text else from_user_entered(value)
            sheet.put(box.row0, box.col0, sheet.cell(box.row0, box.col0).with_input(entered))

    def sort_rows(
        self,
        column: str | int,
        *,
        descending: bool = False,
        tab: str | None = None,
        spreadsheet_id: str | None = None,
        header_rows: int = 1,
    ) -> None:
        """Sort the tab below its header by a column (header text or 0-based index), like Data > Sort."""
        with self._lock:
            sheet = self._sheet(tab, spreadsheet_id)
            col = column if isinstance(column, int) else self._header_col(sheet, column)
            sheet.sort(Box(header_rows, sheet.row_count, 0, sheet.col_count), [(col, descending)])

    def delete_row(
        self, row: int, *, tab: str | None = None, spreadsheet_id: str | None = None
    ) -> None:
        """Delete sheet row `row` (1-based); the rows below move up."""
        with self._lock:
            self._sheet(tab, spreadsheet_id).delete("ROWS", row - 1, row)

    def insert_row(
        self,
        row: int,
        values: Sequence[Any] = (),
        *,
        tab: str | None = None,
        spreadsheet_id: str | None = None,
    ) -> None:
        """Insert a row before sheet row `row` (1-based), typed as a user would."""
        with self._lock:
            sheet = self._sheet(tab, spreadsheet_id)
            sheet.insert("ROWS", row - 1, row)
            for c, value in enumerate(values):
                sheet.put(row - 1, c, from_user_entered(value))

    def rename_tab(self, old: str, new: str, *, spreadsheet_id: str | None = None) -> None:
        with self._lock:
            self._sheet(old, spreadsheet_id).props["title"] = new

    def add_tab(
        self, title: str, rows: Sequence[Sequence[Any]] = (), *, spreadsheet_id: str | None = None
    ) -> None:
        """Add a tab at the end as another client would, typed as a user would type it."""
        with self._lock:
            ss = self._spreadsheet(spreadsheet_id)
            width = max((len(r) for r in rows), default=0)
            sheet_id = self._rng.randrange(1, 2**31 - 1)
            sheet = Sheet.new(sheet_id, title, len(ss.sheets), max(1000, len(rows)), max(26, width))
            for r, row in enumerate(rows):
                for c, value in enumerate(row):
                    sheet.put(r, c, from_user_entered(value))
            ss.sheets.append(sheet)

    def delete_tab(self, title: str, *, spreadsheet_id: str | None = None) -> None:
        """Delete a tab as a user would (right-click > Delete)."""
        with self._lock:
            ss = self._spreadsheet(spreadsheet_id)
            ss.sheets.remove(self._sheet(title, spreadsheet_id))
            ss.reindex()

    def set_hidden(
        self, title: str, hidden: bool, *, spreadsheet_id: str | None = None
    ) -> None:
        """Show or hide a tab as a user would (View > Hidden sheets)."""
        with self._lock:
            props = self._sheet(title, spreadsheet_id).props
            if hidden:
                props["hidden"] = True
            else:
                props.pop("hidden", None)

    # ------------------------------------------------------------ internals

    def _new_id(self) -> str:
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        return "1" + "".join(self._rng.choice(alphabet) for _ in range(43))

    def _spreadsheet(self, spreadsheet_id: str | None) -> Spreadsheet:
        key = spreadsheet_id or self._last_id
        if key not in self._spreadsheets:
            raise KeyError(f"no spreadsheet {key!r} in the emulator")
        return self._spreadsheets[key]

    def _sheet(self, tab: str | None, spreadsheet_id: str | None) -> Sheet:
        ss = self._spreadsheet(spreadsheet_id)
        sheet = ss.sheets[0] if tab is None else ss.by_title(tab)
        if sheet is None:
            raise KeyError(f"no tab {tab!r}")
        return sheet

    def _locate(self, a1: str, tab: str | None, spreadsheet_id: str | None) -> tuple[Sheet, Box]:
        if "!" in a1:
            sheet, box = self._spreadsheet(spreadsheet_id).resolve(a1)
        else:
            sheet, box = self._sheet(tab, spreadsheet_id), parse_box(a1)
        if box is None or not box.is_cell:
            raise ValueError(f"{a1!r} is not a single cell")
        return sheet, box

    @staticmethod
    def _header_col(sheet: Sheet, name: str) -> int:
        for c, cell in sheet.rows[0].items():
            if cell.value == name:
                return c
        return col_index(name)

    # ------------------------------------------------------------ serving

    def serve(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        """Answer one HTTP request (called from the server's thread)."""
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        parts = urlsplit(handler.path)
        route = _route(method, parts.path)
        fault = self._count_and_take_fault(method, route, parts.path, parse_qs(parts.query))
        if self.latency_s:
            time.sleep(self.latency_s)
        if fault is not None and fault.status == DROP:
            self._record_status(DROP)
            handler.close_connection = True
            return
        if fault is not None:
            status, answer = int(fault.status), _fault_body(int(fault.status), route.kind)
        else:
            status, answer = self._answer(method, route, parse_qs(parts.query, True), body)
        self._record_status(status)
        _send(handler, status, answer)

    def _count_and_take_fault(
        self, method: str, route: Route, path: str, query: Params
    ) -> Fault | None:
        ranges = tuple(query.get("ranges", ()))
        with self._lock:
            self.counts[route.kind] += 1
            self.counts[route.endpoint] += 1
            self.log.append(RequestRecord(method, route.endpoint, route.kind, path, 0, ranges))
            head = self._faults[0] if self._faults else None
            if (
                head is not None
                and route.kind in ("read", "write")
                and head.kind in (None, route.kind)
            ):
                return self._faults.popleft()
            return None

    def _record_status(self, status: int | str) -> None:
        with self._lock:
            last = self.log[-1]
            self.log[-1] = replace(last, status=status)

    def _answer(self, method: str, route: Route, params: Params, raw: bytes) -> tuple[int, Any]:
        if route.endpoint == "token":  # a form-encoded OAuth grant, not JSON
            return 200, {
                "access_token": "emulator-token",
                "expires_in": 3600,
                "token_type": "Bearer",
            }
        try:
            body = _parse_body(raw)
            if route.endpoint == "unknown":
                raise ApiError(404, "Requested entity was not found.")
            return 200, self._dispatch(route, params, body)
        except ApiError as exc:
            return exc.code, exc.body()

    def _dispatch(self, route: Route, params: Params, body: dict[str, Any]) -> dict[str, Any]:
        text = route.range_text or ""
        handlers: dict[str, Callable[[Spreadsheet], dict[str, Any]]] = {
            "spreadsheets.get": lambda ss: metadata.get_spreadsheet(ss, params),
            "values.get": lambda ss: values_api.get(ss, text, params),
            "values.batchGet": lambda ss: values_api.batch_get(ss, params),
            "spreadsheets.batchUpdate": lambda ss: batch_api.batch_update(ss, body, self._rng),
            "values.update": lambda ss: values_api.update(ss, text, params, body),
            "values.batchUpdate": lambda ss: values_api.batch_update(ss, body),
            "values.append": lambda ss: values_api.append(ss, text, params, body),
            "values.clear": lambda ss: values_api.clear(ss, text),
            "values.batchClear": lambda ss: values_api.batch_clear(ss, body),
        }
        with self._lock:
            ss = self._spreadsheets.get(route.spreadsheet_id or "")
            if ss is None:
                raise ApiError(404, "Requested entity was not found.")
            if ss.id in self._denied:
                raise ApiError(403, "The caller does not have permission")
            if route.kind == "read":
                return handlers[route.endpoint](ss)
            work = ss.copy()  # all or nothing, like the API's batches
            answer = handlers[route.endpoint](work)
            self._spreadsheets[ss.id] = work
            return answer


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (timeout tests) is not an emulator error worth a traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as requests expects
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stalls

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's naming
        self.server.emulator.serve(self, "GET")  # type: ignore[attr-defined]

    def do_POST(self) -> None:  # noqa: N802
        self.server.emulator.serve(self, "POST")  # type: ignore[attr-defined]

    def do_PUT(self) -> None:  # noqa: N802
        self.server.emulator.serve(self, "PUT")  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Quiet: tests read counters, not access logs."""


def _route(method: str, path: str) -> Route:
    for route_method, pattern, endpoint, kind in _ROUTES:
        m = re.match(pattern, path)
        if m and method == route_method:
            groups = m.groupdict()
            text = unquote(groups["range"]) if groups.get("range") else None
            return Route(endpoint, kind, unquote(groups.get("id") or "") or None, text)
    return Route("unknown", "other", None, None)


def _parse_body(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise ApiError(400, "Invalid JSON payload received. Unexpected token.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Invalid JSON payload received. Expected an object.")
    return _drop_nulls(body)


def _drop_nulls(value: Any) -> Any:
    """A null field means "absent" to the API; nulls inside lists (values) stay."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _fault_body(status: int, kind: str) -> dict[str, Any]:
    if status != 429:
        message = _FAULT_BODIES.get(status, "Injected failure.")
        return ApiError(status, message).body()
    metric, limit = ("read_requests", "Read") if kind == "read" else ("write_requests", "Write")
    message = (
        f"Quota exceeded for quota metric '{limit} requests' and limit '{limit} requests per "
        "minute per user' of service 'sheets.googleapis.com' for consumer "
        "'project_number:123456789'."
    )
    info = {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "RATE_LIMIT_EXCEEDED",
        "domain": "googleapis.com",
        "metadata": {
            "service": "sheets.googleapis.com",
            "consumer": "projects/123456789",
            "quota_metric": f"sheets.googleapis.com/{metric}",
            "quota_limit": f"{limit}RequestsPerMinutePerUser",
            "quota_limit_value": "60",
            "quota_location": "global",
        },
    }
    help_link = {
        "@type": "type.googleapis.com/google.rpc.Help",
        "links": [
            {
                "description": "Request a higher quota limit.",
                "url": "https://cloud.google.com/docs/quota#requesting_higher_quota",
            }
        ],
    }
    return ApiError(429, message, [info, help_link]).body()


def _send(handler: BaseHTTPRequestHandler, status: int, answer: Any) -> None:
    """The API's exact body bytes: indent=2, raw UTF-8, trailing newline."""
    data = (json.dumps(answer, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json; charset=UTF-8")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
