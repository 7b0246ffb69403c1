"""Patch extraction on real mammograms: two real CBIS-DDSM DICOMs (RLE compressed, no spacing in the
header) with test ROI boxes drawn inside their breasts (the shared files carry no ROI masks), and two
real DDSM normal CC films (8-bit JPEG conversions whose ``.ics`` says 16 bits at 42 um)."""


import numpy as np
import pandas as pd
import pytest

from shared_data import REAL_DIR
from mammo.components.config import Config, PatchConfig
from mammo.components.extract_patches.geometry import breast_mask
from mammo.components.extract_patches.logic import run
from mammo.components.imaging import decode_png, read_image, to_uint8
from mammo.components.tfrecords import iter_records, parse_example

SHARED = REAL_DIR
CBIS = SHARED / "cbis-ddsm-dicom"
NORMALS = SHARED / "ddsm-normals-jpeg" / "case0018"
BOX = (300, 240)  # test ROI box, rows x cols (15 x 12 mm at 0.05 mm)


@pytest.fixture(scope="module")
def real_cases(tmp_path_factory):
    if not (CBIS / "labels.csv").exists() or not NORMALS.exists():
        pytest.skip(f"the shared real mammograms are not under {SHARED}")
    from PIL import Image

    root = tmp_path_factory.mktemp("real")
    labels = pd.read_csv(CBIS / "labels.csv").set_index("cbis_id")
    rows, boxes = [], {}
    for cbis_id, label in (("Mass-Test_P_00173_LEFT_CC", "mass_benign"), ("Mass-Test_P_00820_LEFT_CC", "mass_malignant")):
        image_uri = str(CBIS / labels.loc[cbis_id, "file"])
        pixels, info = read_image(image_uri)
        tissue = breast_mask(to_uint8(pixels, info.bits_stored))
        ys, xs = np.nonzero(tissue[::8, ::8])
        cy, cx = int(np.median(ys)) * 8, int(np.median(xs)) * 8  # inside the breast
        y0, x0 = cy - BOX[0] // 2, cx - BOX[1] // 2
        mask = np.zeros(pixels.shape, np.uint8)
        mask[y0 : y0 + BOX[0], x0 : x0 + BOX[1]] = 255
        Image.fromarray(mask).save(root / f"{cbis_id}_mask.png")
        boxes[cbis_id] = (y0, x0, y0 + BOX[0], x0 + BOX[1])
        patient = cbis_id.split("_")[1] + "_" + cbis_id.split("_")[2]
        rows.append({"case_id": f"{cbis_id}_1", "patient_id": patient, "label": label,
                     "label_index": ["calc_benign", "calc_malignant", "mass_benign", "mass_malignant", "normal"].index(label),
                     "split": "test", "subset": "test", "source": "cbis-ddsm", "scanner": "", "abnormality_type": "mass",
                     "view": "CC", "breast_density": 2, "image_uri": image_uri,
                     "roi_mask_uri": str(root / f"{cbis_id}_mask.png"), "cropped_uri": "", "bits_stored": 16,
                     "pixel_spacing_mm": None, "pixel_spacing_source": None})
    for side in ("LEFT", "RIGHT"):
        rows.append({"case_id": f"Normal_A_0018_{side}_CC", "patient_id": "A_0018", "label": "normal", "label_index": 4,
                     "split": "test", "subset": "test", "source": "ddsm-normal", "scanner": "DBA 21",
                     "abnormality_type": None, "view": "CC", "breast_density": 3,
                     "image_uri": str(NORMALS / f"A_0018_1.{side}_CC.jpg"), "roi_mask_uri": None, "cropped_uri": None,
                     "bits_stored": 16, "pixel_spacing_mm": 0.042, "pixel_spacing_source": "ddsm_ics"})
    (root / "ingest").mkdir()
    pd.DataFrame(rows).to_parquet(root / "ingest" / "cases.parquet")
    return root, boxes


def _extract(root, name, patches=PatchConfig()):
    report = run(root / "ingest", root / name, Config(seed=3, patches=patches), workers=1, progress=False)
    manifest = pd.read_parquet(root / name / "manifest.parquet")
    records = {r["patch_id"]: r for r in map(parse_example, iter_records(sorted((root / name).glob("*.tfrecord"))))}
    return report, manifest, records


def test_real_dicoms_give_lesion_patches_in_millimetres(real_cases):
    root, boxes = real_cases
    report, manifest, records = _extract(root, "unbiased")
    assert report.cases_rejected == 0 and report.cases_with_patches == 4
    lesions = manifest[manifest["label"] != "normal"].set_index("case_id")
    for cbis_id, (y0, x0, y1, x1) in boxes.items():
        p = lesions.loc[f"{cbis_id}_1"]
        # 300 px box, margin 1.0 -> 600 px = 30 mm at CBIS-DDSM's default 0.05 mm
        assert (p.crop_size, p.crop_mm, p.pixel_spacing_mm) == (600, 30.0, 0.05)
        assert str(p.spacing_source).startswith("default") and p.padding_fraction == 0.0 and p.bits_stored == 16
        assert p.crop_y0 <= y0 and y1 <= p.crop_y0 + p.crop_size and p.crop_x0 <= x0 and x1 <= p.crop_x0 + p.crop_size
        patch = decode_png(records[p.name]["image"])
        assert patch.shape == (331, 331) and 40 < patch.mean() < 230  # breast tissue, not black or saturated


def test_real_ddsm_normals_use_their_spacing_and_real_bit_depth(real_cases):
    root, _ = real_cases
    _, manifest, records = _extract(root, "unbiased")
    normal = manifest[manifest["label"] == "normal"]
    assert len(normal) == 4
    # 8-bit JPEG files although the .ics says 16 bits: mapped as 8-bit, so not near-black
    assert set(normal["bits_stored"]) == {8} and set(normal["spacing_source"]) == {"ddsm_ics"}
    # unbiased: the side is drawn from the lesion crops' sides in mm (30 mm here) -> 714 px at 42 um
    assert set(normal["crop_mm"].round(1)) == {30.0} and set(normal["crop_size"]) == {714}
    for pid in normal["patch_id"]:
        assert decode_png(records[pid]["image"]).mean() > 60
    _, paper, _ = _extract(root, "paper", PatchConfig(protocol="paper", normal_crop_mm=20.0))
    assert set(paper.loc[paper["label"] == "normal", "crop_size"]) == {476}  # 20 mm / 0.042 mm
