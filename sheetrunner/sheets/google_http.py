"""The HTTP side of the Google Sheets backend: getting a request through, or a clear error.

The backend (google.py) decides what to read and write; this module decides
how it travels and what a failure means, so neither concern hides the other.
gspread itself is used unmodified; `SheetsHTTPClient` is its documented
extension point and adds the endpoint override (tests run against the
emulator in tests/sheets_emulator), a timeout and bounded, jittered retries,
all within a budget of seconds (`cycle_budget`: one per daemon cycle, shared by
its reads and writes), so a storm of errors or a slow API never holds a cycle
for minutes: past the budget the request gives up with `SheetUnavailable`, the
cycle goes on without the sheet and the next cycle tries again.
Credentials are loaded here for the spreadsheets scope only. gspread, requests
and google-auth errors are translated here, once, into `SheetUnavailable`
(transient: retried next cycle) or `SheetError`.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import random
import stat
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google.auth.credentials
import google.auth.exceptions
import google.oauth2.credentials
import gspread
import requests
from google.oauth2 import service_account
from gspread.exceptions import APIError, GSpreadException, SpreadsheetNotFound

from sheetrunner.errors import ConfigError, SheetError, SheetUnavailable

log = logging.getLogger(__name__)

SCOPES = ["https://www.googleapis.com/auth/spreadsheets"]
API_ORIGIN = "https://sheets.googleapis.com"
ENDPOINT_ENV = "SHEETRUNNER_SHEETS_ENDPOINT"
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_TRANSIENT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,  # the connection died mid-answer
    google.auth.exceptions.TransportError,
)
_FOREIGN_ERRORS = (
    GSpreadException,
    PermissionError,  # gspread's open_by_key turns HTTP 403 into the builtin
    requests.RequestException,
    google.auth.exceptions.GoogleAuthError,
)


# ---------------------------------------------------------------- retries


DEFAULT_BUDGET_S = 20.0
# An attempt with less time than this left is not worth starting.
LEAST_ATTEMPT_S = 0.05


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with jitter: delays base, 2*base, 4*base... capped, and
    all attempts of one request (or, within `cycle_budget`, of one cycle) within budget_s."""

    max_attempts: int = 6
    backoff_base_s: float = 1.0
    backoff_max_s: float = 32.0
    budget_s: float = DEFAULT_BUDGET_S

    def delay_s(self, attempt: int, retry_after_s: float | None = None) -> float:
        """The pause after failed attempt `attempt` (1-based); half to full of the step."""
        step = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        delay = step * random.uniform(0.5, 1.0)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.backoff_max_s))
        return delay


class Budget:
    """Seconds the Sheets API may still take: every request, its retries and their pauses
    spend from it."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.spent = 0.0

    def left(self) -> float:
        return self.seconds - self.spent


_cycle_budget: contextvars.ContextVar[Budget | None] = contextvars.ContextVar(
    "sheets_cycle_budget", default=None
)


@contextlib.contextmanager
def cycle_budget(seconds: float) -> Iterator[Budget]:
    """Every Sheets request made inside (in this thread) shares one budget of `seconds`:
    the daemon wraps each cycle in it. Outside, each request has a budget of its own."""
    budget = Budget(seconds)
    token = _cycle_budget.set(budget)
    try:
        yield budget
    finally:
        _cycle_budget.reset(token)


_REQUEST_ARGS = ("params", "data", "json", "files", "headers")


class SheetsHTTPClient(gspread.HTTPClient):
    """gspread's HTTP client with an endpoint override, a timeout and bounded retries.

    gspread builds this class itself with two positional arguments, so the
    settings are attributes set afterwards by `sheets_client`. gspread's own
    BackOffHTTPClient is not used: in 6.2 it retries forever, without jitter,
    and not on connection errors.
    """

    endpoint: str | None = None
    policy: RetryPolicy = RetryPolicy()

    def request(self, method: str, endpoint: str, *args: Any, **kwargs: Any) -> requests.Response:
        url = self._rewrite(endpoint)
        kwargs.update(zip(_REQUEST_ARGS, args, strict=False))
        budget = _cycle_budget.get() or Budget(self.policy.budget_s)
        started = time.monotonic()
        try:
            return self._request(method, url, kwargs, budget, started)
        finally:
            budget.spent += time.monotonic() - started

    def _request(
        self, method: str, url: str, kwargs: Mapping[str, Any], budget: Budget, started: float
    ) -> requests.Response:
        reason = "no attempt made"
        for attempt in range(1, self.policy.max_attempts + 1):
            left = budget.left() - (time.monotonic() - started)
            if left < LEAST_ATTEMPT_S:
                raise self._over_budget(method, budget, reason, attempt - 1)
            try:
                return self._send(method, url, kwargs, left)
            except APIError as exc:
                status = exc.response.status_code
                if status not in RETRY_STATUSES or attempt == self.policy.max_attempts:
                    raise
                reason, retry_after = f"HTTP {status}", _retry_after_s(exc.response)
            except _TRANSIENT_ERRORS as exc:
                if attempt == self.policy.max_attempts:
                    raise
                reason, retry_after = type(exc).__name__, None
            delay = self.policy.delay_s(attempt, retry_after)
            if delay >= budget.left() - (time.monotonic() - started) - LEAST_ATTEMPT_S:
                raise self._over_budget(method, budget, reason, attempt)
            self._pause(method, reason, attempt, delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _send(
        self, method: str, url: str, kwargs: Mapping[str, Any], left: float
    ) -> requests.Response:
        """One attempt, as gspread's own `request` makes it, its timeout cut to the budget."""
        response = self.session.request(
            method=method, url=url, timeout=_within(self.timeout, left), **kwargs
        )
        if response.ok:
            return response
        raise APIError(response)

    def _over_budget(
        self, method: str, budget: Budget, reason: str, attempts: int
    ) -> SheetUnavailable:
        origin = self.endpoint or API_ORIGIN
        log.warning(
            "Sheets API %s gave up: %s after %d attempts, the budget of %g s is spent",
            method.upper(),
            reason,
            attempts,
            budget.seconds,
        )
        return SheetUnavailable(
            f"Google Sheets at {origin} did not answer within this cycle's budget of "
            f"{budget.seconds:g} s ({reason} after {attempts} attempts; [sheet] retry_budget); "
            "runs go on and the sheet is tried again next cycle"
        )

    def _pause(self, method: str, reason: str, attempt: int, delay_s: float) -> None:
        log.warning(
            "Sheets API %s failed (%s), attempt %d of %d; retrying in %.1f s",
            method.upper(),
            reason,
            attempt,
            self.policy.max_attempts,
            delay_s,
        )
        time.sleep(delay_s)

    def _rewrite(self, url: str) -> str:
        if self.endpoint and url.startswith(API_ORIGIN):
            return self.endpoint.rstrip("/") + url[len(API_ORIGIN) :]
        return url


def _within(timeout: Any, left: float) -> Any:
    """A requests timeout (seconds, a (connect, read) pair or None) no longer than `left`."""
    if timeout is None:
        return left
    if isinstance(timeout, tuple):
        return tuple(left if t is None else min(t, left) for t in timeout)
    return min(float(timeout), left)


def _retry_after_s(response: requests.Response) -> float | None:
    try:
        return float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return None


def resolve_endpoint(configured: str | None) -> str | None:
    """The endpoint override, the environment's first; None means Google itself."""
    endpoint = os.environ.get(ENDPOINT_ENV) or configured or None
    if endpoint and not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"Sheets endpoint {endpoint!r} must start with http:// or https://")
    return endpoint


def sheets_client(
    creds: google.auth.credentials.Credentials,
    endpoint: str | None,
    policy: RetryPolicy,
    timeout_s: float,
) -> gspread.Client:
    """A gspread client whose every request goes through `SheetsHTTPClient`."""
    client = gspread.Client(creds, http_client=SheetsHTTPClient)
    http = client.http_client
    http.endpoint, http.policy = endpoint, policy  # type: ignore[attr-defined]
    http.set_timeout(timeout_s)
    return client


# ---------------------------------------------------------------- credentials


def load_credentials(
    credentials: str | google.auth.credentials.Credentials | None, endpoint: str | None
) -> google.auth.credentials.Credentials:
    """Credentials for the spreadsheets scope only; "none" (no token) only with an endpoint."""
    if isinstance(credentials, google.auth.credentials.Credentials):
        return credentials
    if credentials == "none":
        if not endpoint:
            raise ConfigError(
                '[sheet] credentials = "none" only works with an endpoint override (a local '
                f"emulator, via {ENDPOINT_ENV}); for Google Sheets give the path of a "
                "service-account JSON key"
            )
        return google.auth.credentials.AnonymousCredentials()
    path = _credentials_path(credentials)
    _warn_if_readable_by_others(path)
    return _credentials_from_file(path)


def account_name(creds: google.auth.credentials.Credentials) -> str:
    """Who the sheet must be shared with, as error messages name it."""
    return getattr(creds, "service_account_email", None) or "the service account"


def _credentials_path(configured: str | None) -> Path:
    if configured:
        path, source = Path(configured).expanduser(), "[sheet] credentials"
    elif os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
        path, source = (
            Path(os.environ["GOOGLE_APPLICATION_CREDENTIALS"]),
            "GOOGLE_APPLICATION_CREDENTIALS",
        )
    else:
        path, source = Path(gspread.auth.DEFAULT_SERVICE_ACCOUNT_FILENAME), "gspread's default"
    if not path.is_file():
        raise ConfigError(
            f"no credentials file at {path} (from {source}); create a service-account key "
            "(Google Cloud console > IAM > Service accounts > Keys > JSON), share the sheet "
            "with the account's email as Editor, and set [sheet] credentials to the key's path"
        )
    return path


def _warn_if_readable_by_others(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "credentials file %s can be read by group or others (mode %o); run: chmod 600 %s",
            path,
            stat.S_IMODE(mode),
            path,
        )


def _credentials_from_file(path: Path) -> google.auth.credentials.Credentials:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ConfigError(f"credentials file {path} is not readable JSON") from None
    kind = info.get("type") if isinstance(info, dict) else None
    try:
        if kind == "service_account":
            return service_account.Credentials.from_service_account_info(info, scopes=SCOPES)
        if kind == "authorized_user":
            return google.oauth2.credentials.Credentials.from_authorized_user_info(info, SCOPES)
    except ValueError as exc:
        raise ConfigError(f"credentials file {path} is incomplete: {exc}") from None
    raise ConfigError(
        f"credentials file {path} is of type {kind!r}; expected a service-account key "
        '("type": "service_account")'
    )


# ---------------------------------------------------------------- errors


@dataclass(frozen=True)
class ErrorContext:
    """What a translated error names: the spreadsheet, its sharer, where we connect, how often."""

    key: str
    account: str
    endpoint: str | None
    max_attempts: int


@contextlib.contextmanager
def translated_errors(context: ErrorContext) -> Iterator[None]:
    """Translate gspread/requests/google-auth errors into SheetError/SheetUnavailable."""
    try:
        yield
    except SheetError:
        raise
    except _FOREIGN_ERRORS as exc:
        raise translate(exc, context) from exc


def translate(exc: Exception, context: ErrorContext) -> SheetError:
    """The sheetrunner error for a foreign one, with what to do about it."""
    where = f"spreadsheet {context.key}"
    if isinstance(exc, SpreadsheetNotFound):
        return SheetError(f"{where} not found: check [sheet] url (and that it is a Google Sheet)")
    if isinstance(exc, PermissionError) or _status(exc) == 403:
        return SheetError(f"no access to {where}: share it as Editor with {context.account}")
    if isinstance(exc, APIError):
        return _translate_api_error(exc, where, context.max_attempts)
    refresh = google.auth.exceptions.RefreshError
    if isinstance(exc, refresh) and not getattr(exc, "retryable", False):
        return SheetError(
            f"could not get a Google access token ({_reason(exc)}); check [sheet] credentials"
        )
    if isinstance(exc, (*_TRANSIENT_ERRORS, refresh)):
        return _unreachable(exc, context)
    return SheetError(f"Google Sheets failed on {where}: {_reason(exc)}")


def _unreachable(exc: Exception, context: ErrorContext) -> SheetUnavailable:
    origin = context.endpoint or API_ORIGIN
    return SheetUnavailable(
        f"cannot reach Google Sheets at {origin} ({type(exc).__name__}) after "
        f"{context.max_attempts} attempts; will retry next cycle"
    )


def _translate_api_error(exc: APIError, where: str, attempts: int) -> SheetError:
    status = exc.response.status_code
    message = str(exc.error.get("message", "")).strip()
    if status in RETRY_STATUSES:
        return SheetUnavailable(
            f"Google Sheets answered HTTP {status} {exc.error.get('status', '')} ({message}) "
            f"{attempts} times in a row for {where}; will retry next cycle"
        )
    if status == 401:
        return SheetError(
            "Google Sheets rejected the credentials (HTTP 401); check [sheet] credentials"
        )
    if status == 404:
        return SheetError(f"{where} not found (HTTP 404); check [sheet] url")
    return SheetError(f"Google Sheets refused a request on {where} (HTTP {status}): {message}")


def is_unknown_range(exc: APIError) -> bool:
    """The 400 the API gives for a range on a tab title that no longer exists."""
    message = str(exc.error.get("message", ""))
    return exc.response.status_code == 400 and message.startswith("Unable to parse range")


def is_title_taken(exc: APIError) -> bool:
    """The 400 an addSheet gets when a tab of that title already exists (another client
    created it since we last fetched the metadata); the whole batch was refused."""
    message = str(exc.error.get("message", ""))
    return exc.response.status_code == 400 and "already exists" in message


def _status(exc: Exception) -> int | None:
    return exc.response.status_code if isinstance(exc, APIError) else None


def _reason(exc: Exception) -> str:
    """The first line of the error's own message (google-auth puts a response dict second)."""
    text = str(exc.args[0]) if exc.args else type(exc).__name__
    return (text.splitlines() or [type(exc).__name__])[0][:200]
