"""DDSM normals (components/ingest/normals.py): real DDSM naming and real .ics files, bits and pixel spacing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from mammo.components import contracts, storage
from mammo.components.config import Config
from mammo.components.ingest import normals
from mammo.components.ingest.logic import CSV_FILES, run
from mammo.components.ingest.tree import HeaderCache

DEFAULTS = Config().patches.spacing_defaults()


@pytest.fixture(scope="module")
def real() -> Path:
    from conftest import REAL_CSV_DIR

    folder = REAL_CSV_DIR.parent / "real"
    if not (folder / "ddsm-normals-jpeg").is_dir():
        pytest.skip(f"real DDSM files not found in {folder} (the shared data folder is absent)")
    return folder


def _ics_from_metadata(row: pd.Series) -> str:
    """A DDSM .ics file in the real format, from the scraped .ics facts of the case (no age or dates)."""
    lines = ["ics_version 1.0", f"filename {row['filename']}", f"DENSITY {row['DENSITY']}",
             f"DIGITIZER {row['DIGITIZER']}", "SEQUENCE"]
    lines += [f"{view} {row[view]}" for view in ("LEFT_CC", "LEFT_MLO", "RIGHT_CC", "RIGHT_MLO")]
    return "\n".join(lines) + "\n"


def test_real_ics_files_give_digitizer_size_bits_and_resolution(real):
    found = {}
    for path in sorted((real / "ddsm-benign-ics-overlay").rglob("*.ics")):
        ics = normals.parse_ics(path.read_text(encoding="latin-1"))
        found[path.name] = ics
        assert ics["scanner"] in ("DBA", "HOWTEK", "LUMISYS") and ics["views"]
    c0234 = found["C-0234-1.ics"]
    assert c0234["scanner"] == "LUMISYS"
    assert c0234["views"][("LEFT", "CC")] == normals.IcsView(4736, 2240, 12, 0.05)


def test_downsampled_ddsm_jpegs_get_the_ics_resolution_scaled(real):
    """Mini-DDSM-style JPEGs at half the scanned size: 0.05 mm scanned -> 0.1 mm per file pixel."""
    folder = real / "ddsm-benign-ics-overlay" / "Benign" / "0234"
    entries = storage.list_files(folder)
    found = normals.normal_inputs(str(folder), entries)
    rows = {r["path"]: r for _, r in found.rows}
    assert {s["path"]: s["reason"] for s in found.skipped} == {
        "C-0234-1.ics": "metadata_file", "C_0234_1.RIGHT_CC.OVERLAY": "unknown_extension",
        "C_0234_1.RIGHT_MLO.OVERLAY": "unknown_extension"}
    cache = HeaderCache(1)
    row = rows["C_0234_1.LEFT_CC.jpg"]
    case = normals.normal_case(row, normals.plan_normal(row, found.files), cache, 0.2, "x", 1, DEFAULTS)
    assert (case["patient_id"], case["side"], case["view"], case["scanner"]) == ("C_0234_1", "LEFT", "CC", "LUMISYS")
    assert (case["image_rows"], case["image_cols"], case["bits_stored"]) == (2368, 1120, 8)  # 8-bit file, .ics says 12
    assert (case["pixel_spacing_mm"], case["pixel_spacing_source"]) == (0.1, "ddsm_ics_scaled")
    with pytest.raises(Exception, match="cannot tell patient/side/view"):  # the lesion masks are not normals
        normals.plan_normal(rows["C_0234_1.RIGHT_CC_Mask.jpg"], found.files)


def test_real_ddsm_normals_in_their_own_naming_with_their_ics(real, tmp_path):
    src = real / "ddsm-normals-jpeg"
    meta = pd.read_csv(src / "ddsm_ics_metadata_these_cases.csv", dtype=str)
    case = tmp_path / "normals" / "normal_01" / "case0018"
    case.mkdir(parents=True)
    for name in ("A_0018_1.LEFT_CC.jpg", "A_0018_1.RIGHT_MLO.jpg"):
        shutil.copyfile(src / "case0018" / name, case / name)
    (case / "A-0018-1.ics").write_text(_ics_from_metadata(meta[meta["filename"] == "A-0018-1"].iloc[0]))
    cbis = tmp_path / "cbis"
    cbis.mkdir()
    from conftest import REAL_CSV_DIR

    for name in CSV_FILES:
        (cbis / name).write_text((REAL_CSV_DIR / name).read_text().splitlines()[0] + "\n")
    report = run(cbis, tmp_path / "normals", tmp_path / "out", Config())
    cases = pd.read_parquet(tmp_path / "out" / contracts.CASES).sort_values("view")
    assert cases[["patient_id", "side", "view", "scanner", "bits_stored", "image_format"]].values.tolist() == [
        ["A_0018_1", "LEFT", "CC", "DBA", 8, "jpeg"], ["A_0018_1", "RIGHT", "MLO", "DBA", 8, "jpeg"]]
    # full-resolution conversions (4676 x 2009 for a 4679 x 2009 scan): the .ics's 42 um as they are
    assert cases["pixel_spacing_mm"].tolist() == [0.042, 0.042]
    assert cases["pixel_spacing_source"].tolist() == ["ddsm_ics", "ddsm_ics"]
    assert report.skipped_reasons == {"metadata_file": 1}
    assert report.counts["normals/"].ingested == 2


def test_manifest_spacing_and_bits_win_but_never_above_the_files_depth(tmp_path):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "n"
    folder.mkdir()
    Image.fromarray(np.zeros((30, 20), np.uint16)).save(folder / "a.png")
    Image.fromarray(np.zeros((30, 20), np.uint8)).save(folder / "b.png")
    (folder / contracts.NORMALS_MANIFEST).write_text(
        "patient_id,side,view,path,bits_stored,pixel_spacing_mm\nP1,LEFT,CC,a.png,12,0.07\nP2,LEFT,CC,b.png,12,\n")
    found = normals.normal_inputs(str(folder), storage.list_files(folder))
    cache = HeaderCache(1)
    got = [normals.normal_case(r, normals.plan_normal(r, found.files), cache, 0.2, "m", i, DEFAULTS)
           for i, r in found.rows]
    assert [(c["bits_stored"], c["pixel_spacing_mm"], c["pixel_spacing_source"]) for c in got] == [
        (12, 0.07, "manifest"), (8, 0.05, "default:ddsm-normal")]
    assert [s["reason"] for s in found.skipped] == ["metadata_file"]


def test_ljpeg_is_a_case_unless_a_converted_copy_of_the_view_lies_beside_it(tmp_path):
    """The .LJPEG here holds only the marker segments up to its frame header: what ingest reads of one."""
    import numpy as np
    from PIL import Image

    from test_ingest_headers import _sof3_stream

    folder = tmp_path / "case0200"
    folder.mkdir()
    (folder / "A_0200_1.LEFT_CC.LJPEG").write_bytes(_sof3_stream(4696, 3024, 12))
    Image.fromarray(np.zeros((4696 // 8, 3024 // 8), np.uint16)).save(folder / "A_0200_1.LEFT_CC.png")
    (folder / "A_0200_1.RIGHT_CC.LJPEG").write_bytes(_sof3_stream(4624, 3056, 12))
    found = normals.normal_inputs(str(tmp_path), storage.list_files(tmp_path))
    assert [(s["path"], s["reason"]) for s in found.skipped] == [
        ("case0200/A_0200_1.LEFT_CC.LJPEG", "converted_copy_used")]
    rows = {r["path"]: r for _, r in found.rows}
    assert sorted(rows) == ["case0200/A_0200_1.LEFT_CC.png", "case0200/A_0200_1.RIGHT_CC.LJPEG"]
    row = rows["case0200/A_0200_1.RIGHT_CC.LJPEG"]
    case = normals.normal_case(row, normals.plan_normal(row, found.files), HeaderCache(1), 0.2, "x", 1, DEFAULTS)
    assert (case["image_rows"], case["image_cols"], case["bits_stored"], case["image_format"]) == (
        4624, 3056, 12, "ljpeg")
