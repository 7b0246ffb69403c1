"""Input CSVs (components/ingest/tables.py): file-level errors once, row errors per row, lines named."""

from __future__ import annotations

import pytest

from mammo.components.ingest.tables import BadRow, CsvError, parse_csv

REQUIRED = ["a", ("b", "bee")]


def test_cells_and_headers_are_stripped_and_quoted_newlines_kept_in_one_row():
    t = parse_csv(b' a , bee \n1,"x\n"\n\n2,y\n', "f.csv", REQUIRED)
    assert t.columns == ["a", "bee"]
    assert t.rows == [{"a": "1", "bee": "x"}, {"a": "2", "bee": "y"}]
    assert t.lines == [2, 5]


def test_short_rows_are_padded_and_long_rows_are_bad_rows_with_their_line():
    t = parse_csv(b"a,b\n1\n1,2,3\n1,2,,\n", "f.csv", REQUIRED)
    assert t.rows[0] == {"a": "1", "b": ""}
    assert t.rows[1] == BadRow(2, 3, "f.csv line 3: 3 fields where the header has 2")
    assert t.rows[2] == {"a": "1", "b": "2"}  # empty trailing fields are tolerated


@pytest.mark.parametrize("data,reason,message", [
    (b"", "unreadable_csv", "f.csv: empty file (no header line)"),
    (b"\n \n", "unreadable_csv", "f.csv: empty file (no header line)"),
    (b"a,b\n1,2\n3,\xe9\n", "unreadable_csv", "f.csv line 3: not UTF-8 text (byte 0xe9 at column 3); save the file as UTF-8"),
    (b'a,b\n1,2\n3,"open\n4,5\n', "unreadable_csv", "f.csv line 3: a quoted field is never closed"),
    (b"a,c\n1,2\n", "schema_error",
     "f.csv: missing column(s) [\"'b' or 'bee'\"]; expected columns ['a', 'b/bee'], found ['a', 'c']"),
])
def test_file_level_problems_are_one_error_naming_file_and_line(data, reason, message):
    with pytest.raises(CsvError) as err:
        parse_csv(data, "f.csv", REQUIRED)
    assert (err.value.reason, err.value.message) == (reason, message)


def test_a_missing_column_error_knows_how_many_rows_it_covers():
    with pytest.raises(CsvError) as err:
        parse_csv(b"a\n1\n2\n3\n", "f.csv", REQUIRED)
    assert err.value.rows == 3


def test_header_only_is_a_valid_table_with_no_rows():
    t = parse_csv(b"a,b\n", "f.csv", REQUIRED)
    assert t.rows == [] and len(t.frame()) == 0
