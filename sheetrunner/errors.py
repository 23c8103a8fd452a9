"""The exceptions sheetrunner raises, and nothing else escapes an adapter.

    SheetrunnerError                 base; its message says what to do
    ├── ConfigError                  bad config file: names the key and a right value
    ├── SheetError                   the sheet cannot be read or written
    │   ├── SheetUnavailable         transient (network, quota, 5xx): retry later
    │   └── SheetOwned               another daemon holds the sheet's lease
    └── TransportError               a host cannot be reached or a command failed
        ├── HostUnreachable          connect/auth failed or the connection died
        ├── HostKeyError             the host's key is unknown or changed
        └── CommandTimeout           a command passed its deadline

Foreign errors (openpyxl, gspread, paramiko, OSError) are translated into these
once, in the adapter that met them, so the daemon and CLI only know this tree.
Problems with a single row are never exceptions: they become the row's
`invalid` status and its `message` cell.
"""


class SheetrunnerError(Exception):
    """Base of every error sheetrunner raises on purpose."""


class ConfigError(SheetrunnerError):
    """The config file is wrong; the message names the key and shows a right value."""


class SheetError(SheetrunnerError):
    """The sheet cannot be used (missing file, no access, bad layout)."""


class SheetUnavailable(SheetError):
    """The sheet is temporarily unreachable; the daemon retries next cycle."""


class SheetOwned(SheetError):
    """Another daemon holds the sheet's lease: two would start every row twice."""


class TransportError(SheetrunnerError):
    """Talking to a host failed."""


class HostUnreachable(TransportError):
    """The host could not be reached or its connection died."""


class HostKeyError(TransportError):
    """The host's SSH key is unknown (and the policy refuses it) or has changed."""


class CommandTimeout(TransportError):
    """A remote command did not finish before its deadline."""
