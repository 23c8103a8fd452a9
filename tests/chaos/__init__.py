"""End-to-end tests where the sheet changes under sheetrunner at the worst moment."""
