"""Synthetic DICOM files: the writer's header and pixels, and the UIDs."""

import datetime as dt
import re

import numpy as np
import pydicom

from mammo.components.synth.dicom import UID_PREFIX, DicomHeader, Uids, write_dicom


def _header(**kw) -> DicomHeader:
    base = dict(patient_id="P_00001_LEFT_CC", patient_name="SYNTH^PATIENT1", birth_date="19600101",
                study_uid="1.2.3", series_uid="1.2.3.4", sop_uid="1.2.3.4.5", date=dt.date(2016, 7, 1),
                time="101010", accession="12345678", series_description="full mammogram images",
                instance_number=1, laterality="L", view="CC")
    return DicomHeader(**{**base, **kw})


def test_16_and_8_bit_pixels_and_the_fake_identity_round_trip(tmp_path):
    image = np.arange(15 * 9, dtype=np.uint16).reshape(15, 9) * 30  # odd byte count for 8 bit below
    write_dicom(tmp_path / "a.dcm", image, _header(bits_stored=12, manufacturer="HOWTEK"))
    ds = pydicom.dcmread(tmp_path / "a.dcm")
    np.testing.assert_array_equal(ds.pixel_array, image)
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 12, 11, 0)
    assert (ds.Modality, ds.Manufacturer, ds.PatientAge, ds.Laterality, ds.ViewPosition) == (
        "MG", "HOWTEK", "056Y", "L", "CC")
    assert str(ds.PatientName) == "SYNTH^PATIENT1" and ds.PatientBirthDate == "19600101"
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID == "1.2.3.4.5"
    mask = (image % 2 * 255).astype(np.uint8)
    write_dicom(tmp_path / "m.dcm", mask, _header())
    ds = pydicom.dcmread(tmp_path / "m.dcm")
    assert (ds.BitsAllocated, ds.BitsStored) == (8, 8) and "Manufacturer" not in ds
    np.testing.assert_array_equal(ds.pixel_array, mask)


def test_the_same_header_and_pixels_give_the_same_bytes(tmp_path):
    image = np.full((8, 8), 1000, np.uint16)
    write_dicom(tmp_path / "a.dcm", image, _header())
    write_dicom(tmp_path / "b.dcm", image, _header())
    assert (tmp_path / "a.dcm").read_bytes() == (tmp_path / "b.dcm").read_bytes()


def test_uids_are_unique_valid_and_seeded():
    a, b = Uids(np.random.default_rng(0)), Uids(np.random.default_rng(0))
    first = [a.new() for _ in range(200)]
    assert first == [b.new() for _ in range(200)] and len(set(first)) == 200
    for uid in first + [a.new("2.25.") for _ in range(20)]:
        assert len(uid) <= 64 and re.fullmatch(r"[0-9]+(\.[1-9][0-9]*|\.0)*", uid)
    assert all(u.startswith(UID_PREFIX) for u in first)
