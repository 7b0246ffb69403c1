"""CBIS-DDSM row rules (components/ingest/cbis.py): values checked, mask told from crop by the shared rule."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from mammo.components import storage
from mammo.components.config import Config
from mammo.components.ingest import cbis
from mammo.components.ingest.reasons import RowRejected
from mammo.components.ingest.tree import HeaderCache
from mammo.components.synth.logic import DicomHeader, write_dicom

STUDY, SERIES = "1.3.6.1.4.1.9590.100.1.2.100", "1.3.6.1.4.1.9590.100.1.2.200"
ROW = {
    "patient_id": "P_00001", "breast_density": "3", "left or right breast": "LEFT", "image view": "CC",
    "abnormality id": "1", "abnormality type": "mass", "mass shape": "OVAL", "mass margins": "SPICULATED",
    "assessment": "4", "pathology": "BENIGN_WITHOUT_CALLBACK", "subtlety": "4",
    "image file path": f"Mass-Training_P_00001_LEFT_CC/{STUDY}/{SERIES}/000000.dcm",
    "cropped image file path": f"Mass-Training_P_00001_LEFT_CC_1/{STUDY}/{SERIES}1/000000.dcm",
    "ROI mask file path": f"Mass-Training_P_00001_LEFT_CC_1/{STUDY}/{SERIES}1/000001.dcm",
}
DEFAULTS = Config().patches.spacing_defaults()


def test_a_good_row_becomes_a_plan_with_normalised_values():
    plan = cbis.plan_row(dict(ROW), "mass_case_description_train_set.csv", 7)
    f = plan.fields
    assert (f["case_id"], f["label"], f["split"], f["abnormality_id"], f["breast_density"]) == (
        "Mass-Training_P_00001_LEFT_CC_1", "mass_benign", "train", 1, 3)
    assert plan.paths["mask"].endswith("/000001.dcm")


@pytest.mark.parametrize("change,reason,text", [
    ({"pathology": "MAYBE"}, "unknown_label", "unknown label values"),
    ({"abnormality type": "calcification"}, "unknown_label", "in a mass CSV"),
    ({"image view": "XCC"}, "bad_value", "side/view"),
    ({"abnormality id": "0"}, "bad_value", "abnormality id"),
    ({"patient_id": "P_00002"}, "bad_value", "disagrees with the row"),
    ({"image file path": "../Mass-Training_P_00001_LEFT_CC/a/b/c.dcm"}, "path_outside_root", "leaves the data root"),
    ({"ROI mask file path": ""}, "bad_value", "is empty"),
])
def test_bad_values_are_rejected_with_reason(change, reason, text):
    with pytest.raises(RowRejected) as err:
        cbis.plan_row({**ROW, **change}, "mass_case_description_train_set.csv", 1)
    assert err.value.reason == reason and text in err.value.message


def _hdr(n: int) -> DicomHeader:
    return DicomHeader("P_00001", "X^Y", "19600101", STUDY, SERIES, f"{SERIES}.{n}", dt.date(2016, 7, 20),
                       "101010", "", "test", n, "L", "CC")


def _plan_with_files(tmp_path: Path, mask_shape: tuple[int, int]) -> cbis.Plan:
    write_dicom(tmp_path / "full.dcm", np.zeros((200, 160), np.uint16), _hdr(1))
    write_dicom(tmp_path / "roi" / "000000.dcm", np.zeros((20, 24), np.uint16), _hdr(2))  # the crop
    write_dicom(tmp_path / "roi" / "000001.dcm", np.zeros(mask_shape, np.uint8), _hdr(3))
    files = {e.name: e for e in storage.list_files(tmp_path)}
    plan = cbis.plan_row(dict(ROW), "mass_case_description_train_set.csv", 1)
    roi = [files["000000.dcm"], files["000001.dcm"]]
    plan.found = {"image": ([files["full.dcm"]], "test"), "crop": (roi, "test"), "mask": (roi, "test")}
    return plan


@pytest.mark.parametrize("mask_shape,outcome", [((200, 160), "ok"), ((203, 158), "rescaled"),
                                                ((220, 160), "mask_size_mismatch")])
def test_the_mask_rule_is_the_one_extract_applies(tmp_path, mask_shape, outcome):
    """Same size or within patches.mask_rescale_tolerance (2%): a case; further off: rejected."""
    plan = _plan_with_files(tmp_path, mask_shape)
    if outcome == "mask_size_mismatch":
        with pytest.raises(RowRejected) as err:
            cbis.abnormal_case(plan, HeaderCache(1), 0.02, DEFAULTS)
        assert err.value.reason == outcome and "within 2%" in err.value.message
        return
    case = cbis.abnormal_case(plan, HeaderCache(1), 0.02, DEFAULTS)
    assert case["roi_mask_uri"].endswith("000001.dcm") and case["cropped_uri"].endswith("000000.dcm")
    assert (case["mask_rows"], case["mask_cols"]) == mask_shape
    assert (case["image_rows"], case["image_cols"]) == (200, 160)
    assert (case["pixel_spacing_mm"], case["pixel_spacing_source"]) == (0.05, "default:cbis-ddsm")
