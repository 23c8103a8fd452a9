"""The sheet contract: what a sheet holds and what sheetrunner writes to it.

Pure: no gspread, no openpyxl. The table and write types (`table`), the
columns and how rows parse and render (`schema`), sweeps (`sweeps`,
`expansion`), what a cycle writes (`render`), finding a row again after the
sheet moved under us (`relocate`), run ids (`ids`) and the sheet's hidden
`_sheetrunner` tab with its namespace and owner lease (`lease`). Both
backends only move cells.
"""
