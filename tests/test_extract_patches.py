"""Patch extraction: geometry helpers, lesion-centred patches, normal tissue crops, determinism.

Full-size (5000 x 3000) images and swapped / mis-sized / empty masks: tests/test_extract_full_size.py."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mammo.components.config import Config, PatchConfig
from mammo.components.extract_patches.geometry import (
    breast_mask, crop_padded, mask_bbox, normal_crops, padding_fraction, place_window, roi_pixels, scale_bbox,
    square_around,
)
from mammo.components.extract_patches.logic import run
from mammo.components.imaging import decode_png, read_image
from mammo.components.ingest.logic import run as ingest_run
from mammo.components.masks import size_within
from mammo.components.splits import seeded_rng
from mammo.components.tfrecords import iter_records, parse_example

# 24 / 48 px at the synthetic data's default spacing of 0.05 mm
PATCHES = PatchConfig(image_size=32, min_crop_mm=1.2, normal_crop_mm=2.4, normal_patches_per_image=2,
                      records_per_shard=50)
CFG = Config(seed=1, patches=PATCHES)
PAPER = Config(seed=1, patches=PatchConfig(**{**PATCHES.__dict__, "protocol": "paper"}))


def extract_patches(cases_path, out, cfg=CFG, **kw):
    """The step's entry point on an ingest output folder (``cases_path`` is its cases table)."""
    kw.setdefault("progress", False)
    return run(Path(cases_path).parent, out, cfg, **kw)


def test_bbox_and_square_are_centred_on_the_lesion():
    mask = np.zeros((100, 80), bool)
    mask[40:50, 20:36] = True
    assert mask_bbox(mask) == (40, 20, 50, 36)
    y0, x0, side = square_around((40, 20, 50, 36), margin=1.0, min_size=10)
    assert side == 32 and (y0 + side / 2, x0 + side / 2) == (45, 28)
    assert mask_bbox(np.zeros((4, 4), bool)) is None


def test_roi_is_the_mask_above_half_its_maximum():
    mask = np.zeros((20, 20), np.uint8)
    mask[5:10, 6:12] = 255
    mask[4, 6:12] = mask[10, 6:12] = 9  # JPEG ringing around the edge
    assert mask_bbox(roi_pixels(mask)) == (5, 6, 10, 12)
    assert mask_bbox(roi_pixels((mask == 255).astype(np.uint8))) == (5, 6, 10, 12)  # a 0/1 mask
    assert mask_bbox(roi_pixels(np.zeros((4, 4), np.uint8))) is None


def test_small_lesions_get_the_minimum_crop():
    assert square_around((10, 10, 12, 12), margin=1.0, min_size=64)[2] == 64


def test_crop_at_the_border_is_zero_padded():
    img = np.arange(1, 101, dtype=np.uint16).reshape(10, 10)
    crop = crop_padded(img, -2, 7, 5)
    assert crop.shape == (5, 5)
    assert (crop[:2] == 0).all() and (crop[:, 3:] == 0).all()
    assert crop[2, 0] == img[0, 7]


def test_normal_crops_contain_only_tissue():
    tissue = np.zeros((200, 120), bool)
    yy, xx = np.mgrid[:200, :120]
    tissue[((yy - 100) / 90) ** 2 + (xx / 100) ** 2 <= 1] = True  # half ellipse on the left edge
    corners = normal_crops(tissue, 3, 40, 1.0, np.random.default_rng(0))
    assert len(corners) == 3
    for y, x in corners:
        assert tissue[y:y + 40, x:x + 40].all()


def test_no_crop_when_the_breast_is_too_small():
    tissue = np.zeros((100, 100), bool)
    tissue[:10, :10] = True
    assert normal_crops(tissue, 2, 40, 0.98, np.random.default_rng(0)) == []


def test_breast_mask_separates_tissue_from_background():
    img = np.zeros((50, 50), np.uint8)
    img[:, :25] = 120
    m = breast_mask(img)
    assert m[:, :25].all() and not m[:, 25:].any()


def test_breast_mask_keeps_fat_inside_the_breast_and_drops_film_labels():
    img = np.zeros((100, 100), np.uint8)
    img[10:90, :60] = 150  # the breast, at the chest wall (left edge)
    img[40:60, 20:40] = 30  # fat: darker than Otsu's threshold, but inside the breast
    img[5:12, 80:95] = 250  # a film label, bright and apart from the breast
    m = breast_mask(img)
    assert m[10:90, :60].all() and m.sum() == 80 * 60


@pytest.fixture(scope="module")
def cases_path(synth_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ingest")
    return ingest_run(synth_data / "cbis", synth_data / "normals", out, Config()).cases_path


def test_extract_writes_every_case_as_patches_or_rejects(cases_path, tmp_path):
    report = extract_patches(cases_path, tmp_path, workers=2, progress=False)
    cases = pd.read_parquet(cases_path)
    used = cases[(cases["label"] != "normal") | (cases["view"] == "CC")]
    assert report.cases_in == len(used) == report.cases_with_patches + report.cases_rejected
    manifest = pd.read_parquet(tmp_path / "manifest.parquet")
    assert set(manifest["case_id"]) | set(pd.read_parquet(tmp_path / "rejects.parquet")["case_id"]) == set(used["case_id"])
    assert (manifest[manifest["label"] == "normal"].groupby("case_id").size() <= 2).all()
    records = [parse_example(r) for r in iter_records(sorted(tmp_path.glob("*.tfrecord")))]
    assert len(records) == len(manifest)
    assert all(decode_png(r["image"]).shape == (32, 32) for r in records)
    assert {r["patch_id"] for r in records} == set(manifest["patch_id"])
    for name in ("calc_benign", "mass_malignant", "normal"):
        assert (tmp_path / f"preview_{name}.png").exists()
    assert "data:image/png;base64" in (tmp_path / "preview.html").read_text()


def test_lesion_is_centred_and_brighter_than_its_surroundings(cases_path, tmp_path):
    extract_patches(cases_path, tmp_path, workers=1, progress=False)
    records = [parse_example(r) for r in iter_records(sorted(tmp_path.glob("*.tfrecord")))]
    masses = [decode_png(r["image"]).astype(float) for r in records if r["label_name"].startswith("mass")]
    centre = np.mean([m[12:20, 12:20].mean() for m in masses])
    border = np.mean([np.concatenate([m[:3].ravel(), m[-3:].ravel()]).mean() for m in masses])
    assert centre > border + 10


def test_rerunning_a_shard_yields_the_same_bytes(cases_path, tmp_path):
    a = extract_patches(cases_path, tmp_path / "a", shard_index=1, num_shards=2, workers=2, progress=False)
    b = extract_patches(cases_path, tmp_path / "b", shard_index=1, num_shards=2, workers=1, progress=False)
    assert a.files == b.files
    for f in a.files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


def test_shards_partition_the_cases(cases_path, tmp_path):
    reports = [extract_patches(cases_path, tmp_path / str(i), shard_index=i, num_shards=3, workers=1,
                               progress=False) for i in range(3)]
    whole = extract_patches(cases_path, tmp_path / "all", workers=1, progress=False)
    assert sum(r.cases_in for r in reports) == whole.cases_in
    ids = [set(pd.read_parquet(tmp_path / str(i) / "manifest.parquet")["patch_id"]) for i in range(3)]
    assert set.union(*ids) == set(pd.read_parquet(tmp_path / "all/manifest.parquet")["patch_id"])
    assert sum(len(s) for s in ids) == len(set.union(*ids))


def test_bad_shard_index_is_an_error(cases_path, tmp_path):
    with pytest.raises(ValueError, match="shard_index"):
        extract_patches(cases_path, tmp_path, shard_index=3, num_shards=3)


def test_every_abnormality_of_a_multi_lesion_image_gets_its_own_centred_patch(cases_path, tmp_path):
    cases = pd.read_parquet(cases_path)
    abnormal = cases[cases["label"] != "normal"]
    shared = abnormal[abnormal.duplicated("image_uri", keep=False)]
    assert len(shared), "the synthetic data should have images with two abnormalities"
    extract_patches(cases_path, tmp_path, PAPER, workers=1)  # paper: windows centred on the lesion
    manifest = pd.read_parquet(tmp_path / "manifest.parquet").set_index("case_id")
    for image_uri, rows in shared.groupby("image_uri"):
        crops = set()
        for row in rows.itertuples():
            p = manifest.loc[row.case_id]
            assert (p["patch_source"], p["mask_status"]) == ("mask", "ok")
            y0, x0, y1, x1 = mask_bbox(read_image(row.roi_mask_uri)[0] > 0)
            assert abs((y0 + y1) / 2 - (p["crop_y0"] + p["crop_size"] / 2)) <= 1
            assert abs((x0 + x1) / 2 - (p["crop_x0"] + p["crop_size"] / 2)) <= 1
            crops.add((p["crop_y0"], p["crop_x0"]))
        assert len(crops) == len(rows)  # one patch per abnormality, each around its own lesion


def test_mask_bbox_is_rescaled_by_the_size_ratio():
    assert scale_bbox((10, 20, 30, 40), (50, 100), (100, 150)) == (20, 30, 60, 60)
    assert size_within((4950, 2990), (5000, 3000), 0.02) and not size_within((4800, 3000), (5000, 3000), 0.02)


def test_normal_crops_are_deterministic_per_seed_and_case():
    tissue = np.zeros((400, 300), bool)
    tissue[20:380, :250] = True
    crops = lambda case, seed: normal_crops(tissue, 3, 60, 1.0, seeded_rng(case, seed))
    assert crops("Normal_N_1_LEFT_CC", 1) == crops("Normal_N_1_LEFT_CC", 1)
    assert crops("Normal_N_1_LEFT_CC", 1) != crops("Normal_N_1_LEFT_CC", 2)
    assert crops("Normal_N_1_LEFT_CC", 1) != crops("Normal_N_2_LEFT_CC", 1)


def test_unbiased_windows_shift_inside_the_image_and_keep_the_lesion_whole():
    # a lesion at the top-left corner: the paper's centred window would be 3/4 padding
    y0, x0, side = square_around((0, 0, 10, 10), margin=1.0, min_size=20)
    assert (y0, x0) == (-5, -5) and padding_fraction(y0, x0, side, (100, 80)) == pytest.approx(1 - 15 * 15 / 400)
    assert place_window(y0, x0, side, (100, 80)) == (0, 0)
    assert place_window(90, 70, 20, (100, 80)) == (80, 60)  # bottom-right: shifted up and left
    # an image narrower than the window: padding is unavoidable along that axis only
    assert place_window(-5, -5, 20, (100, 12)) == (0, -5)
    assert padding_fraction(0, -5, 20, (100, 12)) == pytest.approx(1 - 12 / 20)


def test_unbiased_default_records_physical_size_and_no_padding(cases_path, tmp_path):
    report = extract_patches(cases_path, tmp_path, workers=1)
    manifest = pd.read_parquet(tmp_path / "manifest.parquet")
    from mammo.components.contracts import MANIFEST_COLUMNS

    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert report.protocol == "unbiased" and set(manifest["protocol"]) == {"unbiased"}
    # the synthetic data states no spacing: the per-source default
    assert all(str(v).startswith("default") for v in manifest["spacing_source"])
    np.testing.assert_allclose(manifest["crop_mm"], manifest["crop_size"] * 0.05)
    lesions = manifest[manifest["patch_source"] == "mask"]
    cases = pd.read_parquet(cases_path).set_index("case_id")
    for p in lesions.itertuples():
        rows, cols = cases.loc[p.case_id, ["image_rows", "image_cols"]]
        if p.crop_size <= min(rows, cols):
            assert p.padding_fraction == 0.0 and 0 <= p.crop_y0 <= rows - p.crop_size
        y0, x0, y1, x1 = mask_bbox(read_image(cases.loc[p.case_id, "roi_mask_uri"])[0] > 0)
        assert p.crop_y0 <= y0 and y1 <= p.crop_y0 + p.crop_size and p.crop_x0 <= x0 and x1 <= p.crop_x0 + p.crop_size
    assert report.padded_patches == int((manifest["padding_fraction"] > 0).sum())


def test_unbiased_normal_sides_are_drawn_from_the_lesion_sides(cases_path, tmp_path):
    extract_patches(cases_path, tmp_path / "u", workers=1)
    manifest = pd.read_parquet(tmp_path / "u/manifest.parquet")
    lesion_sides = set(manifest.loc[manifest["label"] != "normal", "crop_mm"].round(3))
    normal_sides = manifest.loc[manifest["label"] == "normal", "crop_mm"].round(3)
    assert len(normal_sides) and set(normal_sides) <= lesion_sides
    assert normal_sides.nunique() > 1  # not one fixed field of view
    extract_patches(cases_path, tmp_path / "p", PAPER, workers=1)
    paper = pd.read_parquet(tmp_path / "p/manifest.parquet")
    assert set(paper.loc[paper["label"] == "normal", "crop_mm"].round(3)) == {2.4}


def test_millimetres_become_pixels_from_each_images_spacing(cases_path, tmp_path):
    cases = pd.read_parquet(cases_path)
    cases["pixel_spacing_mm"] = 0.025  # twice the default resolution: twice the pixels for the same mm
    cases["pixel_spacing_source"] = "manifest"
    (tmp_path / "in").mkdir()
    cases.to_parquet(tmp_path / "in" / "cases.parquet")
    extract_patches(tmp_path / "in" / "cases.parquet", tmp_path / "out", PAPER, workers=1)
    manifest = pd.read_parquet(tmp_path / "out/manifest.parquet")
    assert set(manifest["spacing_source"]) == {"manifest"}
    normal = manifest[manifest["label"] == "normal"]
    assert set(normal["crop_size"]) <= {96} and (manifest["crop_size"] >= 48).all()


def _side_auc(manifest: pd.DataFrame) -> float:
    """How well the crop side (mm) and padding alone tell normal patches from lesion patches (folded
    rank AUC of a logistic regression fitted on those two columns: 0.5 = no information)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    x = manifest[["crop_mm", "padding_fraction"]].to_numpy()
    y = (manifest["label"] == "normal").to_numpy()
    score = LogisticRegression().fit(x, y).predict_proba(x)[:, 1]
    auc = roc_auc_score(y, score)
    return max(auc, 1 - auc)


def test_the_field_of_view_shortcut_is_gone_under_the_unbiased_protocol(cases_path, tmp_path):
    extract_patches(cases_path, tmp_path / "p", PAPER, workers=1)
    extract_patches(cases_path, tmp_path / "u", workers=1)
    paper, unbiased = (pd.read_parquet(tmp_path / d / "manifest.parquet") for d in ("p", "u"))
    assert _side_auc(paper) > 0.7
    assert _side_auc(unbiased) < 0.65


def test_cli_runs_the_same_entry_point_as_the_component(cases_path, tmp_path, capsys):
    """``mammo extract_patches`` / ``mammo balance_split`` call ``run`` with the whole config: the same
    bytes as a direct call, and the protocol override reaches extraction."""
    from mammo.pipelines.cli import main

    extract_patches(cases_path, tmp_path / "direct", PAPER, workers=1)
    sets = ["--set", "seed=1", "--set", "patches.image_size=32", "--set", "patches.min_crop_mm=1.2",
            "--set", "patches.normal_crop_mm=2.4", "--set", "patches.records_per_shard=50",
            "--set", "patches.protocol=paper"]
    main(["extract_patches", "--cases", str(Path(cases_path).parent), "--out", str(tmp_path / "cli"),
          "--workers", "1", *sets])
    for f in sorted(p.name for p in (tmp_path / "direct").glob("*.tfrecord")):
        assert (tmp_path / "cli" / f).read_bytes() == (tmp_path / "direct" / f).read_bytes()
    main(["balance_split", "--patches", str(tmp_path / "cli"), "--out", str(tmp_path / "bal"), *sets])
    assert (tmp_path / "bal" / "splits.parquet").exists() and (tmp_path / "bal" / "counts.md").exists()
    assert '"protocol": "paper"' in capsys.readouterr().out
