"""Sheet backends: the local .xlsx workbook and Google Sheets, one interface."""
