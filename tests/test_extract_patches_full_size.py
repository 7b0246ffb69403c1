"""Patch extraction on full-size synthetic mammograms (5000 x 3000 px, 16 bit) with the paper's
patch settings (the ``paper`` protocol; the millimetre defaults give the paper's 256 / 600 px at the
default 0.05 mm spacing): lesions centred, normal patches without background, byte-identical re-runs, and
ROI masks that are swapped, mis-sized, empty or at the image border (handled as documented in
mammo.components.extract_patches.logic). A handful of images keeps it to well under a minute."""

import datetime as dt
import shutil

import numpy as np
import pandas as pd
import pytest

from pathlib import Path

from mammo.components.config import Config, PatchConfig
from mammo.components.extract_patches.geometry import mask_bbox
from mammo.components.extract_patches.logic import run
from mammo.components.imaging import decode_png, read_image
from mammo.components.ingest.logic import run as ingest_run
from mammo.components.synth.logic import DicomHeader, synthesize, write_dicom
from mammo.components.tfrecords import iter_records, parse_example

FULL = PatchConfig(protocol="paper")  # 331 px patches, margin 1.0, 30 mm = 600 px normal crops, no background
MIN_CROP_PX, NORMAL_CROP_PX = 256, 600  # the defaults in mm at CBIS-DDSM's default spacing


def extract_patches(cases_path, out, patches=FULL, seed=7, **kw):
    return run(Path(cases_path).parent, out, Config(seed=seed, patches=patches), progress=False, **kw)


@pytest.fixture(scope="module")
def full_size(tmp_path_factory):
    """A full-size synthetic download (8 abnormal images, 4 normal views), ingested and extracted."""
    root = tmp_path_factory.mktemp("full")
    synthesize(root, per_class=2, seed=11, image_shape=(5000, 3000), progress=False)
    cases_path = ingest_run(root / "cbis", root / "normals", root / "ingest", Config()).cases_path
    report = extract_patches(cases_path, root / "a", workers=2)
    yield root, cases_path, report
    shutil.rmtree(root, ignore_errors=True)  # ~0.5 GB of DICOMs: do not leave them to pytest's tmp retention


def _records(folder) -> dict[str, dict]:
    return {r["patch_id"]: r for r in (parse_example(x) for x in iter_records(sorted(folder.glob("*.tfrecord"))))}


def test_full_size_lesions_are_centred_in_their_patches(full_size):
    root, cases_path, report = full_size
    cases = pd.read_parquet(cases_path).set_index("case_id")
    manifest = pd.read_parquet(root / "a/manifest.parquet")
    records = _records(root / "a")
    abnormal = manifest[manifest["label"] != "normal"]
    assert len(abnormal) == 8 and report.cases_rejected == 0
    for p in abnormal.itertuples():
        assert (p.patch_source, p.mask_status, p.bits_stored) == ("mask", "ok", 16)
        y0, x0, y1, x1 = mask_bbox(read_image(cases.loc[p.case_id, "roi_mask_uri"])[0] > 0)
        # the crop is centred on the mask's box, with the lesion filling 1 / (1 + margin) of it
        assert abs((y0 + y1) / 2 - (p.crop_y0 + p.crop_size / 2)) <= 1
        assert abs((x0 + x1) / 2 - (p.crop_x0 + p.crop_size / 2)) <= 1
        assert p.crop_size == max(MIN_CROP_PX, round(max(y1 - y0, x1 - x0) * (1 + FULL.context_margin)))
        patch = decode_png(records[p.patch_id]["image"])
        assert patch.shape == (331, 331) and patch.dtype == np.uint8
        # ... and the brightest structure (mass body, calcification specks) sits in the middle
        bright = patch.astype(float) > (int(patch.max()) + float(np.median(patch))) / 2
        ys, xs = np.nonzero(bright)
        assert abs(ys.mean() - 165) < 33 and abs(xs.mean() - 165) < 33, p.patch_id


def test_full_size_normal_patches_contain_no_background(full_size):
    root, cases_path, _ = full_size
    cases = pd.read_parquet(cases_path).set_index("case_id")
    normal = pd.read_parquet(root / "a/manifest.parquet").query("label == 'normal'")
    assert len(normal) == 2 * FULL.normal_patches_per_image  # two CC views (MLO normals are not used)
    for p in normal.itertuples():
        assert cases.loc[p.case_id, "view"] == "CC" and p.crop_size == NORMAL_CROP_PX
        full, _ = read_image(cases.loc[p.case_id, "image_uri"])
        region = full[p.crop_y0:p.crop_y0 + p.crop_size, p.crop_x0:p.crop_x0 + p.crop_size]
        assert region.shape == (600, 600)
        # synthetic background is <= 300 (16 bit) / <= 19 (12 bit), the thinnest tissue >= 10000 / 625
        assert int(region.min()) > (1000 if p.bits_stored == 16 else 62), p.patch_id


def test_full_size_rerun_yields_byte_identical_shards(full_size):
    root, cases_path, first = full_size
    again = extract_patches(cases_path, root / "b", workers=1)
    assert again.files == first.files
    for name in first.files + [f"preview_{c}.png" for c in first.patches_per_class]:
        assert (root / "a" / name).read_bytes() == (root / "b" / name).read_bytes(), name


def _mask_dicom(path, pixels):
    hdr = DicomHeader(patient_id="Mass-Training_P_09999_LEFT_CC_1", patient_name="SYNTH^TEST", birth_date="19600101",
                      study_uid="1.2.3.4", series_uid="1.2.3.5", sop_uid="1.2.3.6", date=dt.date(2016, 7, 1),
                      time="120000", accession="1", series_description="ROI mask images", instance_number=2,
                      laterality="L", view="CC")
    write_dicom(path, pixels, hdr)
    return str(path)


def test_full_size_swapped_and_mis_sized_masks_are_handled_as_documented(full_size, tmp_path):
    root, cases_path, _ = full_size
    cases = pd.read_parquet(cases_path)
    base = cases[cases["label"] == "mass_malignant"].iloc[0].to_dict()
    mask = read_image(base["roi_mask_uri"])[0]
    h, w = mask.shape
    from PIL import Image

    def resized(shape):
        return np.asarray(Image.fromarray(mask).resize((shape[1], shape[0]), Image.Resampling.NEAREST))

    edge = np.zeros_like(mask)  # a lesion at the chest wall, so the crop leaves the image
    cols = slice(0, 150) if base["side"] == "LEFT" else slice(w - 150, w)
    edge[h // 2 - 100 : h // 2 + 100, cols] = 255
    variants = {
        "swapped": {"roi_mask_uri": base["cropped_uri"], "cropped_uri": base["roi_mask_uri"]},
        "rescaled": {"roi_mask_uri": _mask_dicom(tmp_path / "small.dcm", resized((h - 50, w - 30)))},
        "far_off": {"roi_mask_uri": _mask_dicom(tmp_path / "half.dcm", resized((h // 2, w // 2)))},
        "empty": {"roi_mask_uri": _mask_dicom(tmp_path / "empty.dcm", np.zeros_like(mask))},
        "empty_no_crop": {"roi_mask_uri": str(tmp_path / "empty.dcm"), "cropped_uri": ""},
        "far_off_no_crop": {"roi_mask_uri": str(tmp_path / "half.dcm"), "cropped_uri": ""},
        "edge": {"roi_mask_uri": _mask_dicom(tmp_path / "edge.dcm", edge)},
    }
    rows = [base] + [{**base, "case_id": f"{base['case_id']}-{name}", **change} for name, change in variants.items()]
    pd.DataFrame(rows).to_parquet(tmp_path / "cases.parquet")
    report = extract_patches(tmp_path / "cases.parquet", tmp_path / "out", workers=1)
    assert report.images == 1  # all variants share the full image: read once
    m = pd.read_parquet(tmp_path / "out/manifest.parquet").set_index("case_id")
    got = {k.rsplit("-", 1)[-1] if k != base["case_id"] else "base": (r.patch_source, r.mask_status)
           for k, r in m.iterrows()}
    assert got == {"base": ("mask", "ok"), "swapped": ("mask", "swapped"), "rescaled": ("mask", "rescaled"),
                   "far_off": ("cropped", "size_mismatch"), "empty": ("cropped", "empty"),
                   "edge": ("mask", "ok")}
    rejects = pd.read_parquet(tmp_path / "out/rejects.parquet").set_index("case_id")["reason"].to_dict()
    assert rejects == {f"{base['case_id']}-empty_no_crop": "empty_mask",
                       f"{base['case_id']}-far_off_no_crop": "mask_size_mismatch"}
    assert report.mask_status == {"ok": 2, "swapped": 1, "rescaled": 1, "size_mismatch": 1, "empty": 1}
    ref = m.loc[base["case_id"]]
    records = _records(tmp_path / "out")
    # a swapped row gives exactly the patch of the correct row
    assert records[base["case_id"]]["image"] == records[f"{base['case_id']}-swapped"]["image"]
    # a rescaled mask moves the crop by at most the size difference (50 x 30 px), and keeps its size
    r = m.loc[f"{base['case_id']}-rescaled"]
    assert abs(r.crop_y0 - ref.crop_y0) <= 50 and abs(r.crop_x0 - ref.crop_x0) <= 30
    assert abs(r.crop_size - ref.crop_size) <= 0.02 * ref.crop_size
    # the cropped-image fallback is centred on the crop (no position in the full image)
    assert (m.loc[f"{base['case_id']}-empty", ["crop_y0", "crop_x0"]] == -1).all()
    # the edge lesion's crop is zero-padded where it leaves the image (zero = background), and
    # holds the breast's tissue inside
    e = m.loc[f"{base['case_id']}-edge"]
    inside = (e.crop_x0 + e.crop_size) if base["side"] == "LEFT" else (w - e.crop_x0)  # crop columns in the image
    assert 0 < inside < e.crop_size
    patch = decode_png(records[f"{base['case_id']}-edge"]["image"])
    if base["side"] != "LEFT":
        patch = patch[:, ::-1]
    pad = round((e.crop_size - inside) * 331 / e.crop_size)  # padded patch columns, on the left
    assert patch[:, : pad - 3].max() == 0 and patch[:, pad + 3 :].mean() > 20
    assert e.padding_fraction == pytest.approx(1 - inside / e.crop_size, abs=1e-3)


def test_full_size_unbiased_default_shifts_the_edge_lesion_inside(full_size, tmp_path):
    """The default protocol: the same chest-wall lesion gets a window shifted inside the image, so
    the patch holds no zero padding and the lesion is still whole in view."""
    root, cases_path, _ = full_size
    base = pd.read_parquet(cases_path).query("label == 'mass_malignant'").iloc[0].to_dict()
    mask = read_image(base["roi_mask_uri"])[0]
    h, w = mask.shape
    edge = np.zeros_like(mask)
    cols = slice(0, 150) if base["side"] == "LEFT" else slice(w - 150, w)
    edge[h // 2 - 100 : h // 2 + 100, cols] = 255
    pd.DataFrame([{**base, "roi_mask_uri": _mask_dicom(tmp_path / "edge.dcm", edge)}]).to_parquet(tmp_path / "cases.parquet")
    extract_patches(tmp_path / "cases.parquet", tmp_path / "out", PatchConfig(), workers=1)
    e = pd.read_parquet(tmp_path / "out/manifest.parquet").iloc[0]
    assert e.protocol == "unbiased" and e.padding_fraction == 0.0
    assert 0 <= e.crop_x0 and e.crop_x0 + e.crop_size <= w and e.crop_size == 400
    assert e.crop_x0 <= cols.start and cols.stop <= e.crop_x0 + e.crop_size  # the lesion whole in view
    patch = decode_png(_records(tmp_path / "out")[base["case_id"]]["image"])
    assert min(patch[:, :10].mean(), patch[:, -10:].mean()) > 20  # no black padding band on either side
