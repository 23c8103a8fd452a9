"""`python -m sheetrunner ...` is the `sheetrunner` command (useful before PATH knows it)."""

import sys

from .cli import main

sys.exit(main())
