"""Synthetic DDSM-like normals: four views per patient, the scanner's bit depth, the manifest."""

import csv

import numpy as np
import pydicom

from mammo.components.contracts import NORMALS_MANIFEST
from mammo.components.synth.drawing import NoiseBank
from mammo.components.synth.normals import SCANNERS, write_normals


def test_normals_have_four_views_per_patient_in_their_scanners_bit_depth_and_a_matching_manifest(tmp_path):
    shape = (128, 80)
    rows = write_normals(np.random.default_rng(4), NoiseBank(4, shape), tmp_path, 3, shape, seed=4)
    with open(tmp_path / NORMALS_MANIFEST, newline="") as fh:
        manifest = list(csv.DictReader(fh))
    assert list(manifest[0]) == ["patient_id", "side", "view", "path", "scanner", "bits_stored"]
    assert [list(m.values()) for m in manifest] == rows and len(rows) == 12
    assert sorted(m["path"] for m in manifest) == sorted(p.relative_to(tmp_path).as_posix()
                                                         for p in tmp_path.rglob("*.dcm"))
    for pid in {m["patient_id"] for m in manifest}:
        mine = [m for m in manifest if m["patient_id"] == pid]
        assert sorted((m["side"], m["view"]) for m in mine) == [
            ("LEFT", "CC"), ("LEFT", "MLO"), ("RIGHT", "CC"), ("RIGHT", "MLO")]
        assert len({m["scanner"] for m in mine}) == 1
    for m in manifest:
        assert m["path"] == f"{m['patient_id']}/{m['patient_id']}_{m['side']}_{m['view']}.dcm"
        ds = pydicom.dcmread(tmp_path / m["path"])
        assert ds.Manufacturer == m["scanner"] and int(m["bits_stored"]) == SCANNERS[m["scanner"]] == ds.BitsStored
        pixels = ds.pixel_array
        assert pixels.shape == shape and pixels.max() < 2 ** ds.BitsStored
        assert pixels.max() >= 2 ** (ds.BitsStored - 2)  # tissue uses the upper range of its bit depth
        assert ds.PatientID == m["patient_id"] and str(ds.PatientName).startswith("SYNTH^NORMAL")
