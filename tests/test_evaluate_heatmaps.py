"""Heatmaps of full test images in the evaluation report: ROI outline and whether the top region hits it."""

import numpy as np
import pandas as pd

from mammo.components.config import load_config
from mammo.components.evaluate.heatmaps import heatmap_gallery, pick_cases, top_region_hits


def bright_spot_probabilities(windows: np.ndarray) -> np.ndarray:
    """A stand-in scorer with a localised response: mass_malignant grows with a window's brightest area."""
    peak = windows.reshape(len(windows), -1).astype(np.float32)
    score = np.sort(peak, axis=1)[:, -16:].mean(axis=1) / 255.0
    probs = np.zeros((len(windows), 5), np.float32)
    probs[:, 3] = score
    probs[:, 4] = 1.0 - score
    return probs


def write_case(tmp_path, name, lesion_at=None):
    from PIL import Image

    rng = np.random.default_rng(len(name))
    image = np.zeros((200, 140), np.uint8)
    image[20:180, 10:130] = rng.normal(90, 10, (160, 120)).clip(0, 255).astype(np.uint8)  # the breast
    mask = np.zeros_like(image)
    if lesion_at:
        y, x = lesion_at
        image[y:y + 12, x:x + 12] = 240
        mask[y:y + 12, x:x + 12] = 255
    Image.fromarray(image).save(tmp_path / f"{name}.png")
    Image.fromarray(mask).save(tmp_path / f"{name}_mask.png")
    return str(tmp_path / f"{name}.png"), str(tmp_path / f"{name}_mask.png") if lesion_at else None


def test_heatmaps_show_the_roi_and_count_top_region_hits(tmp_path):
    rows = []
    for name, label, at in (("m1", "mass_malignant", (120, 90)), ("m2", "mass_malignant", (40, 20)),
                            ("n1", "normal", None)):
        image_uri, mask_uri = write_case(tmp_path, name, at)
        rows.append({"case_id": name, "label": label, "image_uri": image_uri, "roi_mask_uri": mask_uri,
                     "pixel_spacing_mm": 0.5})
    rows.append({"case_id": "gone", "label": "calc_benign", "image_uri": str(tmp_path / "missing.png"),
                 "roi_mask_uri": None, "pixel_spacing_mm": 0.5})
    cases = pd.DataFrame(rows)
    cfg = load_config("demo", overrides=["patches.normal_crop_mm=16", "evaluate.heatmap_images_per_class=2",
                                         "deploy.heatmap_stride=0.25"])
    summary, figures = heatmap_gallery(bright_spot_probabilities, 32, cases, {"m1", "m2", "n1", "gone"}, cfg)
    assert summary["localisation"] == {"mass_malignant": {"n": 2, "hits": 2, "rate": 1.0}}
    assert [r["case_id"] for r in summary["images"]] == ["m1", "m2", "n1"]
    assert summary["images"][2]["hit"] is None  # a normal image has no ROI to hit
    assert summary["errors"][0]["case_id"] == "gone" and "missing.png" in summary["errors"][0]["error"]
    assert all(f["png"].startswith(b"\x89PNG") for f in figures)
    # the figure shows the ROI outline in green
    from io import BytesIO

    from PIL import Image

    rgb = np.asarray(Image.open(BytesIO(figures[0]["png"])).convert("RGB"))
    assert ((rgb[..., 1] > 200) & (rgb[..., 0] < 60) & (rgb[..., 2] < 60)).any()


def test_pick_cases_only_takes_test_cases_with_images():
    cases = pd.DataFrame({"case_id": ["a", "b", "c", "d"], "label": ["normal", "normal", "normal", "mass_benign"],
                          "image_uri": ["x", "y", "", "z"]})
    picked = pick_cases(cases, {"a", "b", "c"}, per_class=5, seed=0)
    assert sorted(picked["case_id"]) == ["a", "b"]


def test_top_region_hits():
    roi = np.zeros((10, 10), bool)
    roi[6:8, 6:8] = True
    assert top_region_hits((5, 5, 10, 10), roi) and not top_region_hits((0, 0, 5, 5), roi)
