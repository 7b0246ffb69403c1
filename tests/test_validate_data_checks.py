"""validate_data's pure checks (no great-expectations run): derived columns, class coverage, declared
bit depth and patch intensity, each as a decision table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from validate_data_cases import make_cases

from mammo.components.config import CLASS_NAMES, ValidateConfig
from mammo.components.contracts import CASE_COLUMNS
from mammo.components.imaging import to_uint8
from mammo.components.validate_data.checks import (
    DERIVED_COLUMNS,
    check_class_coverage,
    check_declared_bit_depth,
    check_patch_intensity,
    check_patches,
    derive_check_columns,
    load_suite_spec,
    patch_intensity_stats,
)

# -- derived columns: one planted fault per row, the column that must turn False ----------------------


@pytest.mark.parametrize("column, fault", [
    ("label_consistent", {"pathology": "malignant"}),  # a calc_benign row saying malignant
    ("label_index_consistent", {"label_index": 3}),
    ("mask_matches_image", {"mask_rows": 3999}),
    ("roi_mask_consistent", {"roi_mask_uri": ""}),
    ("source_consistent", {"source": "ddsm-normal"}),
    ("subset_consistent", {"subset": "test"}),  # an official training row in the test subset
])
def test_derived_column_flags_the_faulty_row_only(column, fault) -> None:
    cases = make_cases()
    row = cases.index[(cases["label"] == "calc_benign") & (cases["split"] == "train")][0]
    for key, value in fault.items():
        cases.loc[row, key] = value
    derived = derive_check_columns(cases)
    assert list(derived.index[~derived[column]]) == [row]


def test_patient_overlap_columns_tell_validation_leaks_from_the_official_overlap() -> None:
    cases = make_cases()
    train, validation, test = (cases.index[(cases["label"] == "mass_benign") & (cases["subset"] == s)][0]
                               for s in ("train", "validation", "test"))
    cases.loc[[validation, test], "patient_id"] = cases.loc[train, "patient_id"]
    derived = derive_check_columns(cases)
    assert sorted(derived.index[derived["patient_in_train_and_validation"]]) == sorted([train, validation])
    assert sorted(derived.index[derived["patient_in_both_splits"]]) == sorted([train, validation, test])


def test_suite_column_set_is_the_contract_schema_plus_derived_columns() -> None:
    spec = load_suite_spec()
    (column_set,) = [e["kwargs"]["column_set"] for e in spec["expectations"]
                     if e["type"] == "expect_table_columns_to_match_set"]
    assert column_set == CASE_COLUMNS + list(DERIVED_COLUMNS)
    assert list(derive_check_columns(make_cases()).columns) == column_set


# -- class coverage: every class in validation and test, for cases and for patches ----------------------


def _rows(counts: dict[tuple[str, str], int], split_column: str = "subset") -> pd.DataFrame:
    return pd.DataFrame([{"label": label, split_column: split} for (label, split), n in counts.items()
                         for _ in range(n)])


FULL = {(c, s): 2 for c in CLASS_NAMES for s in ("train", "validation", "test")}


@pytest.mark.parametrize("removed, expected", [
    ([], []),
    ([("calc_benign", "validation")], ["class_coverage: class calc_benign in validation: no case (8 cases of other classes in validation)"]),
    ([("normal", "test")], ["class_coverage: class normal in test: no case (8 cases of other classes in test)"]),
    ([("mass_malignant", "train")], []),  # training without a class is the suite's min_per_class business
    ([("calc_malignant", "validation"), ("calc_malignant", "test")],
     ["class_coverage: class calc_malignant in validation: no case (8 cases of other classes in validation)",
      "class_coverage: class calc_malignant in test: no case (8 cases of other classes in test)"]),
])
def test_class_coverage_on_cases(removed, expected) -> None:
    counts = {k: (0 if k in removed else n) for k, n in FULL.items()}
    assert [str(f) for f in check_class_coverage(_rows(counts))] == expected


def test_class_coverage_on_patches_uses_the_given_split_column_and_unit() -> None:
    counts = {k: (0 if k == ("mass_benign", "test") else n) for k, n in FULL.items()}
    patches = _rows(counts, split_column="assigned_split")
    (failure,) = check_class_coverage(patches, split_column="assigned_split", unit="patch")
    assert (failure.check, failure.subject, failure.severity) == ("class_coverage", "class mass_benign in test", "critical")
    assert failure.detail == "no patch (8 patches of other classes in test)"


def test_class_coverage_names_missing_columns() -> None:
    with pytest.raises(ValueError, match=r"needs column\(s\) \['subset'\]"):
        check_class_coverage(pd.DataFrame({"label": ["normal"]}))


# -- declared bit depth per class and source ----------------------------------------------------------


@pytest.mark.parametrize("image_format, bits, fails", [
    ("jpeg", 8, False),
    ("jpeg", 12, True),   # an 8-bit file scaled as 12-bit: near-black patches
    ("jpeg", 16, True),
    ("png", 12, False),   # a 16-bit PNG may hold 12-bit data
    ("png", 16, False),
    ("dicom", 12, False),
])
def test_declared_bit_depth(image_format, bits, fails) -> None:
    cases = make_cases()
    normals = cases["label"] == "normal"
    cases.loc[normals, "image_format"], cases.loc[normals, "bits_stored"] = image_format, bits
    failures = check_declared_bit_depth(cases)
    assert [f.subject for f in failures] == (["class normal, source ddsm-normal"] if fails else [])


# -- patch intensity: real failure modes through the real 8-bit mapping ----------------------------------

RNG = np.random.default_rng(0)
TISSUE_12 = RNG.integers(600, 3600, size=(64, 64)).astype(np.uint16)  # 12-bit data
TISSUE_8 = RNG.integers(30, 225, size=(64, 64)).astype(np.uint8)  # an 8-bit PNG / JPEG
TISSUE_16 = RNG.integers(9000, 60000, size=(64, 64)).astype(np.uint16)  # full 16-bit data


@pytest.mark.parametrize("pixels, bits, photometric, verdict", [
    (TISSUE_12, 12, "MONOCHROME2", None),
    (TISSUE_12, 12, "MONOCHROME1", None),
    (TISSUE_8, 8, "MONOCHROME2", None),
    (TISSUE_16, 16, "MONOCHROME2", None),
    (TISSUE_12, 16, "MONOCHROME2", "near-black"),  # 12 bits in a 16-bit container, scaled as 16-bit
    (TISSUE_8, 12, "MONOCHROME2", "near-black"),   # an 8-bit file whose metadata says 12 bits
    (TISSUE_16, 8, "MONOCHROME2", "saturated"),    # 16-bit data scaled as 8-bit
])
def test_patch_intensity_on_mapped_pixels(pixels, bits, photometric, verdict) -> None:
    stats = patch_intensity_stats(to_uint8(pixels, bits, photometric))
    patches = [{"label": "normal", "source": "ddsm-normal", "scanner": "HOWTEK", **stats}] * 5
    failures = check_patch_intensity(patches, ValidateConfig())
    if verdict is None:
        assert failures == []
    else:
        (failure,) = failures
        assert failure.subject == "class normal, source ddsm-normal"
        assert failure.detail.startswith(f"5 of 5 patches are {verdict}") and "scanner(s) HOWTEK" in failure.detail


OK_PATCH = {"intensity_p01": 40, "intensity_p99": 200}
DARK_PATCH = {"intensity_p01": 0, "intensity_p99": 14}
WHITE_PATCH = {"intensity_p01": 255, "intensity_p99": 255}


@pytest.mark.parametrize("bad, of, fails", [
    (0, 20, False),
    (2, 20, False),   # 10%: at the limit
    (3, 20, True),    # 15%: above max_bad_patch_fraction
    (20, 20, True),
])
def test_patch_intensity_fails_a_group_above_the_allowed_share(bad, of, fails) -> None:
    patches = ([{"label": "mass_benign", "source": "cbis-ddsm", **DARK_PATCH}] * bad
               + [{"label": "mass_benign", "source": "cbis-ddsm", **OK_PATCH}] * (of - bad))
    assert bool(check_patch_intensity(pd.DataFrame(patches), ValidateConfig(max_bad_patch_fraction=0.1))) == fails


def test_patch_intensity_names_each_failing_class_and_source_only() -> None:
    patches = pd.DataFrame(
        [{"label": "normal", "source": "ddsm-normal", **DARK_PATCH}] * 4
        + [{"label": "normal", "source": "other-site", **OK_PATCH}] * 4
        + [{"label": "calc_benign", "source": "cbis-ddsm", **WHITE_PATCH}] * 4
        + [{"label": "calc_malignant", "source": "cbis-ddsm", **OK_PATCH}] * 4)
    assert [(f.subject, "near-black" in f.detail, "saturated" in f.detail) for f in check_patch_intensity(patches)] == [
        ("class calc_benign, source cbis-ddsm", False, True),
        ("class normal, source ddsm-normal", True, False),
    ]


def test_patch_intensity_needs_its_columns() -> None:
    with pytest.raises(ValueError, match="intensity_p01"):
        check_patch_intensity(pd.DataFrame([{"label": "normal", "source": "ddsm-normal"}]))


# -- on real DDSM normals: 8-bit JPEG files whose .ics says 12 bits ---------------------------------------

REAL_NORMALS = next((p for p in (Path(__file__).resolve().parents[2] / "shared/data/real/ddsm-normals-jpeg",
                                 Path("/work/shared/data/real/ddsm-normals-jpeg")) if p.is_dir()), None)


def test_real_jpeg_normals_scaled_as_declared_12_bits_are_flagged_near_black() -> None:
    if REAL_NORMALS is None:
        pytest.skip("shared real data not found (../shared/data/real/ddsm-normals-jpeg)")
    from mammo.components.imaging import read_image

    patches = []
    for path in sorted(REAL_NORMALS.glob("case0018/*CC.jpg")):
        pixels, info = read_image(str(path))
        assert info.bits_stored == 8  # what the file holds
        ys, xs = np.nonzero(pixels > np.percentile(pixels, 90))  # inside the breast
        cy, cx = int(np.median(ys)), int(np.median(xs))
        window = (slice(max(0, cy - 128), cy + 128), slice(max(0, cx - 128), cx + 128))
        for bits, source in ((8, "file bit depth"), (12, "ics bit depth")):
            patches.append({"label": "normal", "source": source, **patch_intensity_stats(to_uint8(pixels, bits)[window])})
    assert len(patches) == 4
    assert [(f.subject, f.detail.split(" (")[0]) for f in check_patch_intensity(patches)] == [
        ("class normal, source ics bit depth", "2 of 2 patches are near-black")]


def test_check_patches_joins_coverage_and_intensity_on_a_manifest() -> None:
    rows = []
    for label in CLASS_NAMES:
        for split in ("train", "validation", "test", ""):  # "": a dropped overlap patient's patch
            if (label, split) == ("calc_benign", "validation"):
                continue
            stats = DARK_PATCH if label == "normal" else OK_PATCH
            rows += [{"label": label, "source": "ddsm-normal" if label == "normal" else "cbis-ddsm",
                      "assigned_split": split, **stats}] * 2
    assert [str(f).split(" (")[0] for f in check_patches(pd.DataFrame(rows), ValidateConfig())] == [
        "class_coverage: class calc_benign in validation: no patch",
        "patch_intensity: class normal, source ddsm-normal: 8 of 8 patches are near-black",
    ]
