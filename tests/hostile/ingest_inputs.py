"""Builders of hostile ingest inputs (shared by the hostile ingest tests; no test in here)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

DEFLATED_ROWS, DEFLATED_COLS = 32768, 16384  # 16-bit: 1 GiB of pixel data


def _meta(syntax) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"  # digital mammography
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    return meta


def _image_module(rows: int, cols: int) -> Dataset:
    ds = Dataset()
    ds.Modality = "MG"
    ds.PatientName = "HOSTILE^DEFLATE"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    return ds


def deflated_bomb(path: Path, rows: int = DEFLATED_ROWS, cols: int = DEFLATED_COLS) -> Path:
    """A valid Deflated-transfer-syntax DICOM whose zero pixels inflate to rows*cols*2 bytes (~1 MB on disk)."""
    body = io.BytesIO()
    fp = pydicom.filebase.DicomFileLike(body)
    fp.is_implicit_VR, fp.is_little_endian = False, True
    write_dataset(fp, _image_module(rows, cols))
    n = rows * cols * 2
    # (7FE0,0010) OW, explicit VR little endian: tag, 'OW', 2 reserved bytes, 4-byte length
    element = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, n)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunk = 1024 * 1024
    with open(path, "wb") as out:
        out.write(b"\0" * 128 + b"DICM")
        meta = io.BytesIO()
        write_file_meta_info(pydicom.filebase.DicomFileLike(meta), _meta(DeflatedExplicitVRLittleEndian))
        out.write(meta.getvalue())
        out.write(deflater.compress(body.getvalue() + element) + deflater.flush(zlib.Z_FULL_FLUSH))
        # after a full flush the compressor starts afresh: one compressed MiB of zeros, repeated
        zeros = deflater.compress(bytes(chunk)) + deflater.flush(zlib.Z_FULL_FLUSH)
        for _ in range(n // chunk):
            out.write(zeros)
        out.write(deflater.flush())
    return path


def large_private_element_dicom(path: Path, extra_bytes: int) -> Path:
    """An uncompressed DICOM with a private element of ``extra_bytes`` before the image module."""
    ds = _image_module(64, 48)
    ds.add_new(0x00091010, "OB", bytes(extra_bytes))
    ds.PixelData = bytes(64 * 48 * 2)
    ds.file_meta = _meta(ExplicitVRLittleEndian)
    ds.save_as(path, enforce_file_format=True)
    return path
