"""Whole-mammogram heatmaps: sliding windows of the patch's physical size over the breast, batched and
streamed; overlays; ``mammo predict --heatmap`` with a local SavedModel and with TF Serving over REST and
gRPC (``FakeTFServingREST`` / ``FakeTFServingGRPC``: test doubles in ``serving_doubles.py`` that run
the real SavedModel); and the real CBIS-DDSM DICOMs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared_data import REAL_DIR
from mammo.components.config import CLASS_NAMES, load_config
from mammo.components.explain import heatmap, overlay

REAL_DICOMS = REAL_DIR / "cbis-ddsm-dicom"
MASS_MALIGNANT = CLASS_NAMES.index("mass_malignant")


def synthetic_mammogram(rows: int = 1200, cols: int = 800, lesion: tuple[int, int] = (700, 350)) -> np.ndarray:
    """A breast (a bright half-disc against the left edge, textured), a film label apart from it, and one
    bright round lesion inside the breast."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:rows, 0:cols]
    breast = ((yy - rows / 2) / (rows * 0.45)) ** 2 + (xx / (cols * 0.8)) ** 2 <= 1.0
    image = np.where(breast, 110 + rng.normal(0, 8, (rows, cols)), 5).clip(0, 255)
    image[30:80, cols - 120 : cols - 30] = 250  # a film label: bright, but not breast
    image[(yy - lesion[0]) ** 2 + (xx - lesion[1]) ** 2 <= 40**2] = 235
    return image.astype(np.uint8)


def brightness_model(windows: np.ndarray) -> np.ndarray:
    """A stand-in classifier: the brighter the window, the more 'malignant mass'."""
    share = windows.reshape(len(windows), -1).mean(axis=1) / 255.0
    p = np.full((len(windows), len(CLASS_NAMES)), 0.05)
    p[:, MASS_MALIGNANT] = share**4 * 5
    return p / p.sum(axis=1, keepdims=True)


# -- the windows -----------------------------------------------------------------------------------


def test_window_geometry_is_the_patch_size_in_millimetres() -> None:
    assert heatmap.window_geometry(0.05, 30.0, 0.5) == (600, 300)
    assert heatmap.window_geometry(0.1, 30.0, 0.25) == (300, 75)
    for bad in ((0.0, 30.0, 0.5), (0.05, -1.0, 0.5), (0.05, 30.0, 0.0), (0.05, 30.0, 1.5)):
        with pytest.raises(ValueError):
            heatmap.window_geometry(*bad)


def test_windows_cover_the_breast_only_and_reach_the_far_edges() -> None:
    image = synthetic_mammogram()
    calls: list[tuple[int, ...]] = []

    def model(windows: np.ndarray) -> np.ndarray:
        calls.append(windows.shape)
        return brightness_model(windows)

    result = heatmap.sliding_window_maps(model, image, 0.1, 10.0, stride=0.5, batch=7, input_size=32)
    assert (result.window_px, result.stride_px, result.cell_px) == (100, 50, 50)
    assert all(shape[0] <= 7 and shape[1:] == (32, 32) for shape in calls)  # batched, resized to the model input
    assert sum(shape[0] for shape in calls) == result.n_windows > 0
    from mammo.components.extract_patches.geometry import breast_mask

    mask = breast_mask(image)
    for y0, x0, y1, x1 in result.boxes:
        assert mask[y0:y1, x0:x1].mean() >= 0.5  # over the breast
    assert not any(x1 > 700 and y0 < 100 for y0, _, _, x1 in result.boxes)  # never on the film label
    assert result.maps.shape == (len(CLASS_NAMES), 24, 16)
    assert np.isnan(result.maps[0, 0, -1]) and np.isfinite(result.maps[0, 12, 2])  # background vs breast


def test_the_top_region_is_on_the_lesion_with_its_box_in_pixels_and_mm() -> None:
    result = heatmap.sliding_window_maps(brightness_model, synthetic_mammogram(lesion=(700, 350)), 0.1, 10.0)
    top = heatmap.top_regions(result, k=3)
    assert len(top) == 3 and top[0].class_name in ("mass_malignant", "malignant")
    y0, x0, y1, x1 = top[0].box_px
    assert y0 <= 700 <= y1 and x0 <= 350 <= x1
    assert top[0].box_mm == tuple(round(v * 0.1, 2) for v in top[0].box_px)
    assert top[0].probability >= top[1].probability >= top[2].probability
    boxes = [np.array(r.box_px) for r in top]  # distinct places
    assert all(heatmap._iou(a, b) <= 0.3 for i, a in enumerate(boxes) for b in boxes[i + 1:])
    maps = heatmap.derived_maps(result)
    peak = np.unravel_index(np.nanargmax(maps["malignant"]), maps["malignant"].shape)
    assert abs(peak[0] * 50 + 25 - 700) <= 100 and abs(peak[1] * 50 + 25 - 350) <= 100


def test_derived_maps_sum_the_malignant_classes_and_invert_normal() -> None:
    rng = np.random.default_rng(1)

    def model(windows: np.ndarray) -> np.ndarray:
        p = rng.random((len(windows), len(CLASS_NAMES)))
        return p / p.sum(axis=1, keepdims=True)

    result = heatmap.sliding_window_maps(model, synthetic_mammogram(), 0.1, 10.0, use_breast_mask=False)
    maps = heatmap.derived_maps(result)
    calc, mass = CLASS_NAMES.index("calc_malignant"), CLASS_NAMES.index("mass_malignant")
    np.testing.assert_allclose(maps["malignant"], result.maps[calc] + result.maps[mass], rtol=1e-6)
    np.testing.assert_allclose(maps["abnormal"], 1 - result.maps[CLASS_NAMES.index("normal")], rtol=1e-6)
    np.testing.assert_allclose(np.nansum(result.maps, axis=0), 1.0, atol=1e-5)  # cells are means of windows


def test_an_image_smaller_than_a_window_is_one_padded_window() -> None:
    result = heatmap.sliding_window_maps(brightness_model, np.full((50, 40), 120, np.uint8), 0.1, 10.0,
                                         use_breast_mask=False)
    assert result.n_windows == 1 and result.boxes.tolist() == [[0, 0, 100, 100]]


def test_a_model_answering_the_wrong_shape_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="answered shape"):
        heatmap.sliding_window_maps(lambda w: np.ones((len(w), 2)), synthetic_mammogram(), 0.1, 10.0)


# -- overlays --------------------------------------------------------------------------------------


def test_blend_colours_only_where_the_map_says_something() -> None:
    gray = np.full((40, 60), 100, np.uint8)
    values = np.full((4, 6), np.nan, np.float32)
    values[1:3, 1:3] = 0.9
    values[3, 5] = 0.1
    rgb = overlay.blend(gray, values, alpha=0.5, threshold=0.5)
    assert rgb.shape == (40, 60, 3) and rgb.dtype == np.uint8
    assert (rgb[0, 0] == 100).all() and (rgb[35, 55] == 100).all()  # NaN and below threshold stay gray
    assert not (rgb[20, 20] == 100).all() and rgb[20, 20, 0] > rgb[20, 20, 2]  # 0.9 on "jet": red, not blue


def test_outline_boxes_and_panels() -> None:
    gray = np.zeros((100, 80), np.uint8)
    mask = np.zeros((100, 80), bool)
    mask[20:60, 20:50] = True
    out = overlay.draw_outline(gray, mask, color=(0, 255, 0), width=1)
    assert (out[20, 30] == (0, 255, 0)).all() and (out[40, 35] == 0).all()  # edge drawn, inside untouched
    boxed = overlay.draw_boxes(gray, [(10, 10, 30, 30)], color=(255, 0, 0), width=1)
    assert (boxed[10, 20] == (255, 0, 0)).all() and (boxed[20, 20] == 0).all()
    picture = overlay.panels(gray, {"a": np.ones((5, 4)), "b": np.zeros((5, 4))}, height=50)
    assert picture.shape[0] == 50 + 18 and picture.shape[1] == 3 * 40 + 2 * 4


# -- mammo predict --heatmap -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir() -> Path:
    from serving_doubles import tiny_export

    return tiny_export(metadata={"patch_mm": 10.0, "pixel_spacing_mm": 0.1})


@pytest.fixture(scope="module")
def full_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from serving_doubles import write_dicom

    from mammo.components.imaging import encode_png

    folder = tmp_path_factory.mktemp("full")
    image = synthetic_mammogram()
    png = folder / "left_cc.png"
    png.write_bytes(encode_png(image))
    dcm = write_dicom(folder / "right_cc.dcm", image.astype(np.uint16) * 16, bits_stored=12, pixel_spacing_mm=0.2)
    jpg = folder / "left_mlo.jpg"
    from PIL import Image

    Image.fromarray(image).save(jpg, quality=95)
    return {"png": png, "dcm": dcm, "jpg": jpg}


def test_heatmap_files_write_overlay_maps_and_regions(model_dir: Path, full_images: dict[str, Path], tmp_path: Path) -> None:
    from mammo.components.deploy.predict import heatmap_files
    from mammo.components.deploy.serving_client import LocalModel

    cfg = load_config("demo")
    answers = heatmap_files(LocalModel(model_dir), [full_images["png"], full_images["dcm"], full_images["jpg"]],
                            tmp_path / "out", cfg)
    png, dcm, jpg = answers
    assert "error" not in png and "error" not in dcm and "error" not in jpg
    record = json.loads(Path(png["regions"]).read_text())
    assert record["patch_mm"] == 10.0 and record["patch_mm_source"] == "model record"
    assert record["pixel_spacing_mm"] == 0.1 and record["pixel_spacing_source"] == "default"  # the model record's
    assert record["window_px"] == 100 and record["input_size"] == 16 and record["n_windows"] == png["n_windows"]
    maps = np.load(png["maps"])
    assert maps.shape == (len(record["map_names"]), *record["map_shape"]) and record["map_names"][0] == "malignant"
    assert len(record["top_regions"]) == cfg.deploy.heatmap_top_regions
    region = record["top_regions"][0]
    assert region["box_mm"]["x1"] == pytest.approx(region["box_px"]["x1"] * 0.1)
    from PIL import Image

    with Image.open(png["overlay"]) as picture:
        assert picture.mode == "RGB" and picture.size[1] == 800 + 18
    dcm_record = json.loads(Path(dcm["regions"]).read_text())
    assert dcm_record["pixel_spacing_source"] == "header" and dcm_record["window_px"] == 50  # 10 mm at 0.2 mm
    assert Path(jpg["overlay"]).is_file()


def test_rest_and_grpc_doubles_give_the_local_maps_in_batched_requests(
    model_dir: Path, full_images: dict[str, Path], tmp_path: Path
) -> None:
    from serving_doubles import FakeTFServingGRPC, FakeTFServingREST

    from mammo.components.deploy.predict import heatmap_files
    from mammo.components.deploy.serving_client import GrpcClient, LocalModel, RestClient

    cfg = load_config("demo")
    options = {"patch_mm": 10.0, "pixel_spacing_mm": 0.1, "batch": 16}
    (local,) = heatmap_files(LocalModel(model_dir), [full_images["png"]], tmp_path / "local", cfg, **options)
    with FakeTFServingREST("mammo", model_dir) as rest, FakeTFServingGRPC("mammo", model_dir) as server:
        (over_rest,) = heatmap_files(RestClient(rest.url, "mammo"), [full_images["png"]], tmp_path / "rest", cfg,
                                     size=16, **options)
        with GrpcClient(server.host_port, "mammo") as client:
            (over_grpc,) = heatmap_files(client, [full_images["png"]], tmp_path / "grpc", cfg, size=16, **options)
        batches = -(-local["n_windows"] // 16)
        assert len(rest.bodies) == batches and rest.bodies[0]["signature_name"] == "serving_default"
        assert len(server.requests) == batches and server.requests[0].model_spec.signature_name == "predict_pixels"
        assert max(len(b["instances"]) for b in rest.bodies) == 16
    for remote in (over_rest, over_grpc):
        np.testing.assert_allclose(np.load(remote["maps"]), np.load(local["maps"]), atol=1e-5)
        assert [r["box_px"] for r in remote["top_regions"]] == [r["box_px"] for r in local["top_regions"]]


def test_cli_predict_heatmap_answers_every_file(model_dir: Path, full_images: dict[str, Path], tmp_path: Path,
                                                capsys: Any) -> None:
    from mammo.pipelines.cli import main

    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"DICM" * 10)
    capsys.readouterr()
    code = main(["predict", "--model", str(model_dir), "--heatmap", str(tmp_path / "out"), "--stride", "1",
                 str(full_images["png"]), str(broken)])
    captured = capsys.readouterr()
    good, bad = json.loads(captured.out)
    assert code == 1 and "error" in bad and "Traceback" not in captured.err
    assert Path(good["overlay"]).is_file() and json.loads(Path(good["regions"]).read_text())["stride_px"] == 100


@pytest.mark.skipif(not REAL_DICOMS.is_dir(), reason=f"real CBIS-DDSM DICOMs not found at {REAL_DICOMS}")
def test_heatmap_on_a_real_cbis_ddsm_dicom(tmp_path: Path) -> None:
    """An RLE-compressed 16-bit CBIS-DDSM mammogram: no PixelSpacing in its header and none in this
    model's record, so the configured default (0.05 mm) applies; 30 mm windows are 600 px."""
    from serving_doubles import tiny_export

    from mammo.components.deploy.predict import heatmap_files
    from mammo.components.deploy.serving_client import LocalModel

    model_dir = tiny_export()

    dicom = REAL_DICOMS / "sfm-benign-0" / "1-130.dcm"  # Mass-Test_P_00173_LEFT_CC, 4432 x 2864
    cfg = load_config("demo")
    (answer,) = heatmap_files(LocalModel(model_dir), [dicom], tmp_path, cfg, patch_mm=30.0, pixel_spacing_mm=None)
    assert "error" not in answer, answer.get("error")
    record = json.loads(Path(answer["regions"]).read_text())
    assert record["image_shape"] == [4432, 2864] and record["window_px"] == 600 and record["pixel_spacing_mm"] == 0.05
    assert record["pixel_spacing_source"] == "default" and 10 < record["n_windows"] < 100
    assert np.isfinite(np.load(answer["maps"])).any()
