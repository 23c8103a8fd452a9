"""The sheet contract every backend keeps, run against each backend (see backends.py)."""
