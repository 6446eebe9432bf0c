"""CSV that spreadsheets open safely, written one way by every command.

Two hazards, both met with names from the units' platforms: a cell that starts
with `=`, `+`, `-`, `@`, a tab or a carriage return is run as a formula by
Excel and LibreOffice (OWASP "CSV injection"), so it gets a leading `'`, which
`uncell` takes off again on import; and Python's csv module leaves a lone `\\r`
unquoted unless it is part of the line terminator, which breaks the row, so
rows end in `\\r\\n` (RFC 4180) and every cell holding `\\r` or `\\n` is quoted.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> str:
    """The text of one cell; a formula-looking one gets a leading quote."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def uncell(value: str) -> str:
    """The value `csv_cell` wrote."""
    return value[1:] if value.startswith("'") and value[1:].startswith(FORMULA_START) else value


def write_csv(target: TextIO, fields: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> int:
    """A header and `rows` (only `fields`, in their order); returns the rows written."""
    writer = csv.DictWriter(target, fieldnames=list(fields), lineterminator="\r\n")
    writer.writeheader()
    written = 0
    for row in rows:
        writer.writerow({key: csv_cell(row.get(key)) for key in fields})
        written += 1
    return written
