"""Synth: a synthetic dataset in the real CBIS-DDSM download layout (one test per promise)."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from mammo.components.contracts import NORMALS_MANIFEST
from mammo.components.synth.logic import CALC_HEADER, CLASSES, MASS_HEADER, SCANNERS, synthesize

from conftest import REAL_CSV_DIR  # noqa: E402
PER_CLASS = 8
SEED = 3

NBIA_FILE = re.compile(
    r"^(?P<folder>(Mass|Calc)-(Training|Test)_P_\d{5}_(LEFT|RIGHT)_(CC|MLO)(_(?P<abn>\d+))?)/"
    r"\d{2}-\d{2}-\d{4}-DDSM-(NA-)?(?P<study5>\d{5})/"
    r"1\.000000-(?P<desc>full mammogram images|ROI mask images)-(?P<series5>\d{5})/"
    r"1-(?P<n>[12])\.dcm$"
)


# -- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    summary = synthesize(out, per_class=PER_CLASS, seed=SEED, progress=False)
    return out, summary


@pytest.fixture(scope="module")
def tree(synth):
    """(folder, study5, series5) -> files, the way ingest resolves CSV paths."""
    out, _ = synth
    base = out / "cbis" / "CBIS-DDSM"
    index = defaultdict(list)
    for f in sorted(base.rglob("*.dcm")):
        folder, study, series = f.relative_to(base).parts[:3]
        index[(folder, study[-5:], series[-5:])].append(f)
    return index


@pytest.fixture(scope="module")
def rows(synth):
    """All data rows of the four CSVs (cells stripped), each with its CSV name."""
    out, _ = synth
    result = []
    for f in sorted((out / "cbis").glob("*.csv")):
        with open(f, newline="") as fh:
            for row in csv.DictReader(fh):
                row = {k: v.strip() for k, v in row.items()}
                row["csv"] = f.name
                result.append(row)
    return result


@pytest.fixture(scope="module")
def resolved(rows, tree):
    """Per row: full image, ROI mask and crop datasets (mask told apart by size, as ingest does)."""
    cache: dict[Path, pydicom.Dataset] = {}

    def read(p: Path) -> pydicom.Dataset:
        if p not in cache:
            cache[p] = pydicom.dcmread(p)
        return cache[p]

    result = []
    for row in rows:
        full_path = _lookup(tree, row["image file path"])
        assert len(full_path) == 1
        full = read(full_path[0])
        pair = [read(p) for p in _lookup(tree, row["cropped image file path"])]
        masks = [d for d in pair if (d.Rows, d.Columns) == (full.Rows, full.Columns)]
        crops = [d for d in pair if (d.Rows, d.Columns) != (full.Rows, full.Columns)]
        assert len(masks) == 1 and len(crops) == 1
        result.append((row, full, masks[0], crops[0]))
    return result


def _lookup(tree, csv_path: str) -> list[Path]:
    folder, study, series, _name = csv_path.strip().split("/")
    return tree[(folder, study[-5:], series[-5:])]


def _cls(row) -> str:
    kind = "mass" if row["abnormality type"] == "mass" else "calc"
    return f"{kind}_{'malignant' if row['pathology'] == 'MALIGNANT' else 'benign'}"


# -- layout --------------------------------------------------------------------------------------


def test_csv_headers_are_exactly_the_real_ones(synth):
    out, _ = synth
    for name in ("mass_case_description_train_set.csv", "mass_case_description_test_set.csv"):
        assert (out / "cbis" / name).read_bytes().split(b"\r\n")[0].decode() == ",".join(MASS_HEADER)
    for name in ("calc_case_description_train_set.csv", "calc_case_description_test_set.csv"):
        assert (out / "cbis" / name).read_bytes().split(b"\r\n")[0].decode() == ",".join(CALC_HEADER)
    if not REAL_CSV_DIR.is_dir():
        pytest.skip(f"real CBIS-DDSM CSVs not found at {REAL_CSV_DIR}; compared with the literal headers only")
    for f in REAL_CSV_DIR.glob("*.csv"):
        first = f.read_bytes().split(b"\r\n")[0]
        assert (out / "cbis" / f.name).read_bytes().split(b"\r\n")[0] == first, f.name


def test_one_path_per_row_is_quoted_with_embedded_newline_like_real_files(synth):
    """Mass rows: the ROI column (the last one); calc rows: the cropped-image column; CRLF rows."""

    def newline_columns(path: Path) -> Counter:
        with open(path, newline="") as fh:
            data = list(csv.reader(fh))[1:]
        return Counter(tuple(i for i, v in enumerate(r) if "\n" in v) for r in data)

    out, _ = synth
    expected = {"mass": {(13,)}, "calc": {(12,)}}
    for f in sorted((out / "cbis").glob("*.csv")):
        kind = f.name.split("_")[0]
        assert set(newline_columns(f)) == expected[kind], f.name
        text = f.read_bytes()
        assert b'.dcm\n"' in text and text.endswith(b"\r\n")
        if REAL_CSV_DIR.is_dir():
            assert set(newline_columns(f)) == set(newline_columns(REAL_CSV_DIR / f.name)), f.name


def test_nbia_tree_follows_the_download_pattern(synth):
    out, _ = synth
    base = out / "cbis" / "CBIS-DDSM"
    series = defaultdict(list)
    for f in base.rglob("*"):
        if f.is_file():
            rel = f.relative_to(base).as_posix()
            m = NBIA_FILE.match(rel)
            assert m, f"not an NBIA download path: {rel}"
            assert (m["abn"] is None) == (m["desc"] == "full mammogram images"), rel
            series[f.parent].append(f.name)
    for folder, names in series.items():
        expected = ["1-1.dcm"] if "full mammogram images" in folder.name else ["1-1.dcm", "1-2.dcm"]
        assert sorted(names) == expected, folder
    assert any("-DDSM-NA-" in p.name for p in base.glob("*/*")), "no -NA- study folder"


def test_csv_paths_resolve_by_uid_suffixes_to_files_with_those_uids(rows, tree):
    for row in rows:
        for col in ("image file path", "cropped image file path", "ROI mask file path"):
            folder, study, series, name = row[col].split("/")
            assert study.startswith("1.3.6.1.4.1.9590.100.1.2.") and len(study) <= 64
            assert re.fullmatch(r"00000[01]\.dcm", name)
            files = _lookup(tree, row[col])
            assert len(files) == (1 if col == "image file path" else 2), row[col]
            for f in files:
                ds = pydicom.dcmread(f, stop_before_pixels=True)
                assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == (study, series)
                assert ds.PatientID == folder
        image_folder = row["image file path"].split("/")[0]
        assert row["ROI mask file path"].split("/")[0] == f"{image_folder}_{row['abnormality id']}"


def test_crop_and_mask_columns_are_swapped_in_some_rows(rows, tree, resolved):
    """Which CSV name is the mask varies: sometimes the crop column names the full-size file."""
    swapped = plain = 0
    for row, _full, mask, _crop in resolved:
        named_crop = row["cropped image file path"].split("/")[-1]
        if named_crop == row["ROI mask file path"].split("/")[-1]:
            continue  # a few mass rows name 000000.dcm twice, as in the real files
        files = {int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber) - 1: f for f in
                 _lookup(tree, row["cropped image file path"])}
        ds = pydicom.dcmread(files[int(named_crop[:6])], stop_before_pixels=True)
        if ds.SOPInstanceUID == mask.SOPInstanceUID:
            swapped += 1
        else:
            plain += 1
    assert swapped > 0 and plain > swapped
    crop_names = Counter(r["cropped image file path"].split("/")[-1] for r in rows)
    assert set(crop_names) == {"000000.dcm", "000001.dcm"}, "the 000000 / 000001 order varies"


# -- images --------------------------------------------------------------------------------------


def test_mask_has_full_image_size_and_crop_is_a_smaller_cut_of_the_image(resolved):
    for _row, full, mask, crop in resolved:
        assert (full.BitsStored, mask.BitsStored, crop.BitsStored) == (16, 8, 16)
        assert full.PhotometricInterpretation == mask.PhotometricInterpretation == "MONOCHROME2"
        m, img, c = mask.pixel_array, full.pixel_array, crop.pixel_array
        assert m.dtype == np.uint8 and set(np.unique(m)) == {0, 255}
        assert c.shape[0] <= img.shape[0] and c.shape[1] <= img.shape[1] and c.shape != img.shape
        ys, xs = np.nonzero(m)
        h, w = c.shape
        hits = [
            (y0, x0)
            for y0 in range(max(0, ys.max() + 1 - h), min(ys.min(), img.shape[0] - h) + 1)
            for x0 in range(max(0, xs.max() + 1 - w), min(xs.min(), img.shape[1] - w) + 1)
            if np.array_equal(img[y0:y0 + h, x0:x0 + w], c)
        ]
        assert hits, "the crop is not a cut of the full image around the ROI"


def test_lesion_lies_inside_its_mask_and_inside_the_tissue(resolved):
    masks_of_image = defaultdict(list)
    for row, _full, mask, _crop in resolved:
        masks_of_image[row["image file path"]].append(mask.pixel_array > 0)
    for row, full, mask, _crop in resolved:
        img, m = full.pixel_array.astype(np.float64), mask.pixel_array > 0
        around = ndimage.binary_dilation(m, iterations=6)
        assert img[around].min() > 5000, "ROI (or its surroundings) touches the background"
        if row["abnormality type"] == "mass":
            ring = ndimage.binary_dilation(m, iterations=8) & ~ndimage.binary_dilation(m, iterations=3)
            assert img[m].mean() > np.median(img[ring]) + 4000
        else:
            bright = img > 45000
            assert bright[m].any()
            assert not (bright & ~np.logical_or.reduce(masks_of_image[row["image file path"]])).any()


def test_breast_lies_against_the_chest_wall_of_its_side(resolved):
    for row, full, _mask, _crop in resolved:
        img = full.pixel_array
        w = img.shape[1]
        left, right = img[:, : w // 10].mean(), img[:, -w // 10:].mean()
        assert (left > right) == (row["left or right breast"] == "LEFT")


def test_lesion_classes_differ_in_what_a_patch_shows(resolved):
    """Malignant calcifications: more separate specks; malignant masses: a less convex outline."""
    from skimage.morphology import convex_hull_image

    specks, solidity = defaultdict(list), defaultdict(list)
    for row, full, mask, _crop in resolved:
        img, m = full.pixel_array, mask.pixel_array > 0
        if row["abnormality type"] == "mass":
            solidity[_cls(row)].append(m.sum() / convex_hull_image(m).sum())
        else:
            specks[_cls(row)].append(ndimage.label((img > 40000) & m)[1])
    assert np.mean(specks["calc_malignant"]) > 2 * np.mean(specks["calc_benign"])
    assert np.mean(solidity["mass_malignant"]) < np.mean(solidity["mass_benign"]) - 0.02


def test_dicom_headers_carry_fake_phi_and_consistent_uids(resolved):
    for _row, full, mask, crop in resolved:
        for ds in (full, mask, crop):
            assert ds.Modality == "MG"
            assert str(ds.PatientName).startswith("SYNTH^PATIENT")
            assert ds.PatientBirthDate and ds.AccessionNumber
            assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
            assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert mask.SeriesInstanceUID == crop.SeriesInstanceUID != full.SeriesInstanceUID
        assert mask.SOPInstanceUID != crop.SOPInstanceUID


# -- cases ---------------------------------------------------------------------------------------


def test_per_class_counts_are_as_requested(synth, rows):
    out, summary = synth
    counts = Counter(_cls(r) for r in rows)
    assert counts == {c: PER_CLASS for c in CLASSES}
    assert summary.abnormalities_per_class == {c: PER_CLASS for c in CLASSES}
    assert summary.rows_per_csv == dict(Counter(r["csv"] for r in rows))
    assert all(n > 0 for n in summary.rows_per_csv.values()), "every CSV (train and test) has rows"
    json.dumps(asdict(summary))


def test_each_abnormality_has_a_cc_and_an_mlo_row_of_one_breast(rows):
    views = defaultdict(list)
    breasts = defaultdict(set)
    for r in rows:
        views[(r["patient_id"], r["left or right breast"], r["abnormality id"])].append(r)
        breasts[r["patient_id"]].add((r["csv"].split("_")[0], r["left or right breast"]))
    for pair in views.values():
        assert sorted(r["image view"] for r in pair) == ["CC", "MLO"]
        assert pair[0]["image file path"] != pair[1]["image file path"]
        strip = ("image view", "image file path", "cropped image file path", "ROI mask file path")
        assert [{k: v for k, v in r.items() if k not in strip} for r in pair][0] == {
            k: v for k, v in pair[1].items() if k not in strip
        }
    assert all(len(b) == 1 for b in breasts.values()), "a patient is one breast, mass or calc"


def test_some_images_carry_two_abnormalities(rows):
    by_image = defaultdict(list)
    for r in rows:
        by_image[r["image file path"]].append(r)
    multi = [rs for rs in by_image.values() if len(rs) > 1]
    assert multi
    for rs in multi:
        assert sorted(r["abnormality id"] for r in rs) == ["1", "2"]
        assert len({r["ROI mask file path"].split("/")[0] for r in rs}) == 2


def test_values_look_like_the_real_ones(rows):
    train = {r["patient_id"] for r in rows if "train" in r["csv"]}
    test = {r["patient_id"] for r in rows if "test" in r["csv"]}
    assert train and test and not train & test
    assert {r["pathology"] for r in rows} == {"MALIGNANT", "BENIGN", "BENIGN_WITHOUT_CALLBACK"}
    for r in rows:
        folder = r["image file path"].split("/")[0]
        kind = "Mass" if r["abnormality type"] == "mass" else "Calc"
        prefix = f"{kind}-{'Test' if 'test' in r['csv'] else 'Training'}"
        assert folder == f"{prefix}_{r['patient_id']}_{r['left or right breast']}_{r['image view']}"
        assert re.fullmatch(r"P_\d{5}", r["patient_id"])
        density = r.get("breast_density", r.get("breast density"))
        assert density in {"1", "2", "3", "4"} and r["subtlety"] in {"1", "2", "3", "4", "5"}
        cls = _cls(r)
        if cls == "mass_benign":
            assert r["mass shape"] in {"ROUND", "OVAL"}
        elif cls == "mass_malignant":
            assert "IRREGULAR" in r["mass shape"] and "SPICULATED" in r["mass margins"]
        if r["pathology"] == "MALIGNANT":
            assert r["assessment"] in {"4", "5"}


# -- normals -------------------------------------------------------------------------------------


def test_normals_manifest_matches_the_files(synth):
    out, summary = synth
    normals = out / "normals"
    with open(normals / NORMALS_MANIFEST, newline="") as fh:
        manifest = list(csv.DictReader(fh))
    assert list(manifest[0]) == ["patient_id", "side", "view", "path", "scanner", "bits_stored"]
    on_disk = sorted(p.relative_to(normals).as_posix() for p in normals.rglob("*.dcm"))
    assert sorted(m["path"] for m in manifest) == on_disk
    assert len(manifest) == summary.normal_images == 4 * round(PER_CLASS / 2)
    assert sum(m["view"] == "CC" for m in manifest) == PER_CLASS
    for m in manifest:
        assert m["path"] == f"{m['patient_id']}/{m['patient_id']}_{m['side']}_{m['view']}.dcm"
        ds = pydicom.dcmread(normals / m["path"])
        assert ds.Manufacturer == m["scanner"] and int(m["bits_stored"]) == SCANNERS[m["scanner"]] == ds.BitsStored
        assert ds.pixel_array.max() < 2 ** ds.BitsStored
        assert ds.PatientID == m["patient_id"] and str(ds.PatientName).startswith("SYNTH^")


# -- determinism and arguments -------------------------------------------------------------------


def _all_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    kwargs = dict(per_class=4, image_shape=(256, 160), progress=False)
    synthesize(tmp_path / "a", seed=7, **kwargs)
    synthesize(tmp_path / "b", seed=7, **kwargs)
    synthesize(tmp_path / "c", seed=8, **kwargs)
    a, b, c = (_all_bytes(tmp_path / x) for x in "abc")
    assert a == b
    assert a["cbis/mass_case_description_train_set.csv"] != c.get("cbis/mass_case_description_train_set.csv")
    pixels_a = [pydicom.dcmread(tmp_path / "a" / p).pixel_array for p in sorted(a) if p.endswith(".dcm")]
    pixels_b = [pydicom.dcmread(tmp_path / "b" / p).pixel_array for p in sorted(b) if p.endswith(".dcm")]
    assert all(np.array_equal(x, y) for x, y in zip(pixels_a, pixels_b, strict=True))


def test_too_small_image_shape_is_refused(tmp_path):
    with pytest.raises(ValueError, match="too small"):
        synthesize(tmp_path, per_class=2, image_shape=(32, 32), progress=False)
