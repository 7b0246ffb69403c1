"""Input CSVs read with errors a person can act on: the file, the physical line, what is wrong.

Every header and cell is stripped (the CBIS-DDSM CSVs end a quoted cell with a newline). A problem
with one row (more fields than the header) rejects that row; a problem with the whole file (not
UTF-8, an unclosed quote, no header line, a required column missing) is one :class:`CsvError` for the
file, reported once, never row by row. A header-only CSV is a valid input with 0 rows.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from mammo.components import storage
from mammo.components.ingest.reasons import SCHEMA_ERROR, UNREADABLE_CSV

#: a required column: one name, or a tuple of accepted spellings
Column = str | tuple[str, ...]


class CsvError(ValueError):
    """A whole input CSV is unusable: ``reason`` (unreadable_csv / schema_error) and a message naming it."""

    def __init__(self, reason: str, message: str, rows: int = 0):
        super().__init__(message)
        self.reason = reason
        self.message = message
        #: data rows the file holds (0 when it could not be parsed)
        self.rows = rows


@dataclass
class BadRow:
    row: int  # 1-based data row
    line: int  # physical line where the record starts
    message: str


@dataclass
class Table:
    """A parsed CSV: its stripped columns and rows; ``rows[i]`` is data row ``i + 1``."""

    name: str
    columns: list[str]
    rows: list[dict[str, str] | BadRow] = field(default_factory=list)
    #: physical line where each data row starts
    lines: list[int] = field(default_factory=list)

    def frame(self) -> pd.DataFrame:
        """The good rows as a DataFrame of strings."""
        return pd.DataFrame([r for r in self.rows if isinstance(r, dict)], columns=self.columns, dtype=str)


def _decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise CsvError(UNREADABLE_CSV, f"{name} line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at "
                                       f"column {col}); save the file as UTF-8") from None


def parse_csv(data: bytes, name: str, required: Sequence[Column] = ()) -> Table:
    """Parse CSV bytes; raises :class:`CsvError` for a file-level problem (see module docstring)."""
    text = _decode(data, name)
    if not text.strip():
        raise CsvError(UNREADABLE_CSV, f"{name}: empty file (no header line)")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    table: Table | None = None
    start = 1
    try:
        for record in reader:
            line, start = start, reader.line_num + 1
            if not record or (len(record) == 1 and not record[0].strip()):
                continue  # blank line
            cells = [c.strip() for c in record]
            if table is None:
                table = Table(name, cells)
                continue
            table.lines.append(line)
            n = len(table.columns)
            if len(cells) > n and any(cells[n:]):
                table.rows.append(BadRow(len(table.rows) + 1, line,
                                         f"{name} line {line}: {len(cells)} fields where the header has {n}"))
                continue
            table.rows.append(dict(zip(table.columns, cells + [""] * (n - len(cells)))))
    except csv.Error as exc:
        what = ("a quoted field is never closed" if "end of data" in str(exc)
                else f"malformed quoting ({exc})")
        raise CsvError(UNREADABLE_CSV, f"{name} line {start}: {what}") from None
    if table is None:
        raise CsvError(UNREADABLE_CSV, f"{name}: empty file (no header line)")
    missing = [c if isinstance(c, str) else " or ".join(repr(x) for x in c)
               for c in required if not ({c} if isinstance(c, str) else set(c)) & set(table.columns)]
    if missing:
        expected = [c if isinstance(c, str) else "/".join(c) for c in required]
        raise CsvError(SCHEMA_ERROR, f"{name}: missing column(s) {missing}; expected columns {expected}, "
                                     f"found {table.columns}", rows=len(table.rows))
    return table


def read_csv(entry: storage.Entry, required: Sequence[Column] = ()) -> Table:
    """Read and parse one listed CSV (local or gs://)."""
    try:
        data = storage.read_bytes(entry.uri)
    except storage.StorageError as exc:
        raise CsvError(UNREADABLE_CSV, f"{entry.rel}: cannot be read ({exc})") from None
    return parse_csv(data, entry.rel, required)


def read_case_csv(path: str | object) -> pd.DataFrame:
    """A case-description CSV (local path or gs:// URI) as a DataFrame of stripped strings.

    Raises :class:`CsvError` for a file-level problem or any malformed row.
    """
    uri = str(path)
    table = read_csv(storage.Entry(uri, uri.rpartition("/")[2], 0))
    bad = [r for r in table.rows if isinstance(r, BadRow)]
    if bad:
        raise CsvError(UNREADABLE_CSV, bad[0].message)
    return table.frame()
