"""Synthetic DICOM files: UIDs, dates and the writer (Secondary Capture, fake patient identities).

Headers carry fake patient-identifying values (name, birth date, accession number, ...) so that the
PHI-stripping tests have something to strip. Fixed implementation ids make the bytes independent of
the installed pydicom version.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np

UID_PREFIX = "1.3.6.1.4.1.9590.100.1.2."  # the CBIS-DDSM UID root
NORMAL_UID_PREFIX = "2.25."  # UUID-derived root for the normals (another "archive")
SC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture, as in the CBIS-DDSM files
IMPLEMENTATION_UID = "1.2.826.0.1.3680043.8.498.1"  # pydicom's root; fixed so the bytes are too


class Uids:
    """Unique CBIS-like UIDs (prefix + 36-39 random digits), drawn from the planning generator."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.seen: set[str] = set()

    def new(self, prefix: str = UID_PREFIX) -> str:
        while True:
            n = int(self.rng.integers(36, 40)) if prefix == UID_PREFIX else 38
            digits = self.rng.integers(0, 10, size=n)
            digits[0] = self.rng.integers(1, 10)  # a UID component has no leading zero
            uid = prefix + "".join(map(str, digits.tolist()))
            if uid not in self.seen and len(uid) <= 64:
                self.seen.add(uid)
                return uid


def birth_date(rng: np.random.Generator) -> str:
    d = dt.date(1935, 1, 1) + dt.timedelta(days=int(rng.integers(0, 40 * 365)))
    return d.strftime("%Y%m%d")


def digits(rng: np.random.Generator, n: int) -> str:
    return "".join(map(str, rng.integers(0, 10, size=n).tolist()))


def hhmmss(rng: np.random.Generator) -> str:
    return f"{int(rng.integers(7, 19)):02d}{int(rng.integers(0, 60)):02d}{int(rng.integers(0, 60)):02d}"


@dataclass
class DicomHeader:
    patient_id: str
    patient_name: str
    birth_date: str
    study_uid: str
    series_uid: str
    sop_uid: str
    date: dt.date
    time: str
    accession: str
    series_description: str
    instance_number: int
    laterality: str  # L | R
    view: str
    manufacturer: str = ""
    bits_stored: int = 16


def write_dicom(path: Path, pixels: np.ndarray, hdr: DicomHeader) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SC_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = hdr.sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    # fixed implementation ids: the bytes do not change with the installed pydicom version
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MAMMO_SYNTH_1"
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    date = hdr.date.strftime("%Y%m%d")
    age = hdr.date.year - int(hdr.birth_date[:4])
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SOPClassUID = SC_IMAGE_STORAGE
    ds.SOPInstanceUID = hdr.sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = hdr.time
    ds.AccessionNumber = hdr.accession
    ds.Modality = "MG"
    ds.ConversionType = "WSD"
    if hdr.manufacturer:  # the CBIS-DDSM images name none; the DDSM normals their scanner
        ds.Manufacturer = hdr.manufacturer
    ds.InstitutionName = "SYNTHETIC BREAST CENTER"
    ds.InstitutionAddress = "1 FAKE STREET, NOWHERE"
    ds.ReferringPhysicianName = "SYNTH^REFERRER"
    ds.StudyDescription = "SYNTHETIC MAMMOGRAM"
    ds.SeriesDescription = hdr.series_description
    ds.PatientName = hdr.patient_name
    ds.PatientID = hdr.patient_id
    ds.PatientBirthDate = hdr.birth_date
    ds.PatientSex = "F"
    ds.PatientAge = f"{age:03d}Y"
    ds.OtherPatientIDs = "MRN" + hdr.accession[::-1]
    ds.BodyPartExamined = "BREAST"
    ds.ViewPosition = hdr.view
    ds.StudyInstanceUID = hdr.study_uid
    ds.SeriesInstanceUID = hdr.series_uid
    ds.StudyID = hdr.accession[-6:]
    ds.SeriesNumber = 1
    ds.InstanceNumber = hdr.instance_number
    ds.Laterality = hdr.laterality
    ds.ImageLaterality = hdr.laterality
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    if pixels.dtype == np.uint8:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        data = pixels.tobytes()
    else:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, hdr.bits_stored, hdr.bits_stored - 1
        data = pixels.astype("<u2").tobytes()
    ds.PixelRepresentation = 0
    ds.PixelData = data + (b"\0" if len(data) % 2 else b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
