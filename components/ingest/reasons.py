"""Reason codes of ingest's ``rejects`` and ``skipped`` tables, and the errors that carry them."""

from __future__ import annotations

from typing import Any

from mammo.components import headers, storage

# -- rejects: an input row (or file) that should have become a case and did not ------------------
MISSING_FILE = "missing_file"
UNREADABLE_DICOM = headers.UNREADABLE_DICOM
EMPTY_FILE = headers.EMPTY_FILE
NOT_AN_IMAGE = headers.NOT_AN_IMAGE
HEADER_TOO_LARGE = headers.HEADER_TOO_LARGE
HEADER_TIMEOUT = headers.HEADER_TIMEOUT
MASK_SIZE_MISMATCH = "mask_size_mismatch"
UNKNOWN_LABEL = "unknown_label"
DUPLICATE = "duplicate"
PATH_OUTSIDE_ROOT = storage.PATH_OUTSIDE_ROOT
NOT_A_REGULAR_FILE = storage.NOT_A_REGULAR_FILE
BAD_VALUE = "bad_value"
#: a CSV row the parser could not split (too many fields)
MALFORMED_ROW = "malformed_row"
#: a whole input file: not UTF-8, unclosed quote, empty, or a column missing (one row, source_row 0)
UNREADABLE_CSV = "unreadable_csv"
SCHEMA_ERROR = "schema_error"
REASONS = (MISSING_FILE, UNREADABLE_DICOM, EMPTY_FILE, NOT_AN_IMAGE, HEADER_TOO_LARGE, HEADER_TIMEOUT,
           MASK_SIZE_MISMATCH, UNKNOWN_LABEL, DUPLICATE, PATH_OUTSIDE_ROOT, NOT_A_REGULAR_FILE, BAD_VALUE,
           MALFORMED_ROW, UNREADABLE_CSV, SCHEMA_ERROR)

# -- skipped: a file in the normals folder that is not meant to be a case ------------------------
SKIP_METADATA = "metadata_file"
SKIP_UNKNOWN_EXTENSION = "unknown_extension"
SKIP_ODD_NAME = "whitespace_in_name"
SKIP_HIDDEN = "hidden_file"
SKIP_NOT_IN_MANIFEST = "not_in_manifest"
SKIP_CONVERTED = "converted_copy_used"
SKIP_REASONS = (SKIP_METADATA, SKIP_UNKNOWN_EXTENSION, SKIP_ODD_NAME, SKIP_HIDDEN, SKIP_NOT_IN_MANIFEST, SKIP_CONVERTED)


class IngestError(RuntimeError):
    """Ingest could not produce a trustworthy ``cases`` table (message says which input and why)."""


class RowRejected(Exception):
    """One input row (or file) becomes a ``rejects`` row with this reason and message."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def optional_int(value: Any) -> int | None:
    try:
        return int(float(value)) if value not in ("", None) else None
    except (TypeError, ValueError):
        return None


def optional_float(value: Any) -> float | None:
    """A positive finite float, else None."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if v == v and 0 < v < float("inf") else None
