"""``mammo predict``: classify patches, or scan whole mammograms into heatmaps, with a local
SavedModel or TF Serving (REST / gRPC).

Every path reads PNG / JPEG / TIFF / DICOM files the same way (:func:`load_image`: the documented
8-bit mapping of :mod:`mammo.components.imaging`, so a 12-bit DICOM becomes the same 8-bit image as
in training), with the pixel budget ``deploy.max_image_pixels`` checked from the header before any
pixel is decoded.

**Per-file answers.** Each input gets one JSON-ready entry, in input order: a result
``{"file", "class_name", "class_index", "probabilities": {class: p}}`` or ``{"file", "error"}``
(a one-line reason: unreadable, over the pixel budget, server error, ...). One bad file never
costs the others their answer; a batch the server refuses is retried one file at a time so the
error lands on the file that caused it. Class names come from the served model's own
``class_names`` output.

**Heatmaps** (:func:`heatmap_files`): each whole image is scanned by
:func:`mammo.components.explain.heatmap.sliding_window_maps` with windows of the model's patch
size in millimetres (its record's ``patch_mm``; for a remote model, or a model without one,
``patches.normal_crop_mm``) at the image's pixel spacing (the DICOM header's; otherwise the
model record's ``pixel_spacing_mm`` or ``patches.default_pixel_spacing_mm``; ``--pixel-spacing-mm``
overrides both). Windows go to the model in batches: uint8 pixels (``predict_pixels``) to a local
model or over gRPC, PNGs (``serving_default``, four times smaller than JSON integer lists) over
REST. Per image it writes ``<stem>.heatmap.png`` (panels: the image with the top regions, then the
malignancy, abnormality and per-class maps), ``<stem>.maps.npy`` (float32 ``[maps, rows, cols]``
on the window grid, names in the JSON) and ``<stem>.regions.json`` (geometry, map names, the top
regions with boxes in pixels and mm, class and probability).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mammo.components.config import CLASS_NAMES, Config
from mammo.components.contracts import HEATMAP_MAPS, HEATMAP_OVERLAY, HEATMAP_REGIONS, write_json
from mammo.components.deploy.export import DEFAULT_SIGNATURE, PIXELS_SIGNATURE, read_model_record
from mammo.components.deploy.serving_client import (
    SIGNATURES, Backend, GrpcClient, LocalModel, RestClient, ServingError, check_signature,
)

logger = logging.getLogger(__name__)

#: images sent per request / per local call when classifying
BATCH_SIZE = 32


# -- reading -----------------------------------------------------------------------------------


def load_image_info(path: str | Path, max_pixels: int | None = None) -> tuple[np.ndarray, Any]:
    """A file as uint8 ``[H, W]`` (documented mapping) and its :class:`ImageInfo`; the header's size
    is checked against ``max_pixels`` before decoding."""
    from PIL import Image

    from mammo.components.imaging import ImageTooLarge, read_image, to_uint8

    try:
        pixels, info = read_image(str(path), max_pixels)
    except ImageTooLarge as err:
        raise ImageTooLarge(str(err).replace("patches.max_pixels", "deploy.max_image_pixels")) from None
    except Image.DecompressionBombError as err:  # PIL's own header check fired first
        raise ImageTooLarge(f"{path}: {err} Refused before decoding (pixel budget {max_pixels:,}, "
                            "deploy.max_image_pixels)") from None
    return to_uint8(pixels, info.bits_stored, info.photometric, info.signed), info


def load_image(path: str | Path, size: int | None = None, max_pixels: int | None = None) -> np.ndarray:
    """A file as a uint8 ``[H, W]`` image, resized to ``size`` x ``size`` with the training resampler
    when ``size`` is given."""
    from mammo.components.imaging import resize_uint8

    image, _ = load_image_info(path, max_pixels)
    return resize_uint8(image, int(size)) if size else image


def load_patch(path: str | Path, size: int) -> np.ndarray:
    """A file as the uint8 ``[size, size, 1]`` patch the model sees (mapping + training resampler)."""
    return load_image(path, size)[:, :, np.newaxis]


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


# -- backends ----------------------------------------------------------------------------------


def open_backend(model: str | None = None, server: str | None = None, rest: str | None = None,
                 model_name: str = "mammo", version: int | None = None, timeout_s: float = 30) -> Backend:
    """The backend of exactly one of ``model`` (SavedModel dir), ``server`` (gRPC) or ``rest`` (URL)."""
    given = [name for name, value in (("model", model), ("server", server), ("rest", rest)) if value]
    if len(given) != 1:
        raise ValueError(f"give exactly one of a SavedModel directory, a gRPC server or a REST URL (got {given or 'none'})")
    if model:
        return LocalModel(model)
    if server:
        return GrpcClient(server, model_name, version, timeout_s)
    return RestClient(str(rest), model_name, version, timeout_s)


def _to_results(files: Sequence[str], outputs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The signature's column outputs (numpy / lists; strings as bytes or str) as result dicts."""
    probabilities = np.asarray(outputs["probabilities"], dtype=np.float64)
    class_index = np.asarray(outputs["class_index"]).reshape(-1)
    class_name = [_text(v) for v in np.asarray(outputs["class_name"], dtype=object).reshape(-1)]
    class_names = np.asarray(outputs["class_names"], dtype=object)
    if len(class_name) != len(files) or probabilities.shape[0] != len(files):
        raise ServingError(f"the model answered {len(class_name)} predictions for {len(files)} images")
    return [{"file": file, "class_name": class_name[i], "class_index": int(class_index[i]),
             "probabilities": {_text(n): float(p) for n, p in zip(class_names[i], probabilities[i])}}
            for i, file in enumerate(files)]


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# -- classification ----------------------------------------------------------------------------


def predict_files(backend: Backend, image_paths: Sequence[str | Path], signature: str = DEFAULT_SIGNATURE,
                  size: int | None = None, max_pixels: int | None = None,
                  batch_size: int = BATCH_SIZE) -> list[dict[str, Any]]:
    """One entry per file, in order: its result or ``{"file", "error"}`` (see the module docstring)."""
    check_signature(signature)
    answers: dict[int, dict[str, Any]] = {}
    pending: list[tuple[int, str, np.ndarray]] = []

    def flush() -> None:
        if pending:
            _predict_batch(backend, signature, pending, answers)
            pending.clear()

    for i, path in enumerate(image_paths):
        try:
            image = load_image(path, size, max_pixels)
        except Exception as err:  # noqa: BLE001 - any unreadable input is that file's answer
            answers[i] = {"file": str(path), "error": _one_line(err)}
            logger.warning("%s: %s", path, answers[i]["error"])
            continue
        # a predict_pixels batch is one uint8 tensor: one image shape per batch
        if pending and (len(pending) >= batch_size or (signature == PIXELS_SIGNATURE and image.shape != pending[0][2].shape)):
            flush()
        pending.append((i, str(path), image))
    flush()
    return [answers[i] for i in range(len(image_paths))]


def _predict_batch(backend: Backend, signature: str, items: list[tuple[int, str, np.ndarray]],
                   answers: dict[int, dict[str, Any]]) -> None:
    try:
        results = _to_results([f for _, f, _ in items], backend.predict(signature, [im for _, _, im in items]))
    except (ServingError, ValueError, KeyError) as err:
        if len(items) > 1:  # find the file the server refuses
            for item in items:
                _predict_batch(backend, signature, [item], answers)
            return
        answers[items[0][0]] = {"file": items[0][1], "error": _one_line(err)}
        logger.warning("%s: %s", items[0][1], answers[items[0][0]]["error"])
        return
    for (i, _, _), result in zip(items, results):
        answers[i] = result


def predict_local(model_dir: str | Path, image_paths: Sequence[str | Path], signature: str = DEFAULT_SIGNATURE,
                  size: int | None = None, max_pixels: int | None = None) -> list[dict[str, Any]]:
    """Classify ``image_paths`` with an exported SavedModel directory (a version directory or an export)."""
    check_signature(signature)
    return predict_files(LocalModel(model_dir), image_paths, signature, size, max_pixels)


def predict_grpc(host_port: str, model_name: str, image_paths: Sequence[str | Path], size: int | None = None,
                 timeout_s: float = 30, version: int | None = None, signature: str = DEFAULT_SIGNATURE,
                 max_pixels: int | None = None) -> list[dict[str, Any]]:
    """Classify ``image_paths`` through TF Serving's gRPC ``PredictionService/Predict`` at ``host_port``."""
    check_signature(signature)
    with GrpcClient(host_port, model_name, version, timeout_s) as client:
        return predict_files(client, image_paths, signature, size, max_pixels)


def predict_rest(url: str, model_name: str, image_paths: Sequence[str | Path], size: int | None = None,
                 timeout_s: float = 30, version: int | None = None, signature: str = DEFAULT_SIGNATURE,
                 max_pixels: int | None = None) -> list[dict[str, Any]]:
    """Classify ``image_paths`` through TF Serving's REST API at ``url`` (e.g. ``http://host:8501``)."""
    check_signature(signature)
    return predict_files(RestClient(url, model_name, version, timeout_s), image_paths, signature, size, max_pixels)


# -- heatmaps ----------------------------------------------------------------------------------


def heatmap_settings(backend: Backend, cfg: Config, patch_mm: float | None = None,
                     size: int | None = None) -> dict[str, Any]:
    """Window size in mm, model input side, default spacing and class names for ``backend``."""
    record = read_model_record(backend.model_dir) if isinstance(backend, LocalModel) else {}
    spacing_default = record.get("pixel_spacing_mm") or cfg.patches.spacing_defaults().get("all")
    return {
        "patch_mm": float(patch_mm or record.get("patch_mm") or cfg.patches.normal_crop_mm),
        "patch_mm_source": "option" if patch_mm else ("model record" if record.get("patch_mm") else "patches.normal_crop_mm"),
        "input_size": int(size or record.get("image_size") or cfg.patches.image_size),
        "default_spacing_mm": float(spacing_default) if spacing_default else None,
        "class_names": list(record.get("class_names") or CLASS_NAMES),
        # uint8 tensors locally and over gRPC; PNGs over REST (far smaller than JSON integer lists)
        "signature": DEFAULT_SIGNATURE if isinstance(backend, RestClient) else PIXELS_SIGNATURE,
    }


def heatmap_files(backend: Backend, image_paths: Sequence[str | Path], out_dir: str | Path, cfg: Config,
                  patch_mm: float | None = None, pixel_spacing_mm: float | None = None, stride: float | None = None,
                  batch: int | None = None, size: int | None = None, progress: bool = False) -> list[dict[str, Any]]:
    """Scan each whole image and write its overlay, maps and regions (see the module docstring).

    Returns one entry per file: ``{"file", "overlay", "maps", "regions", "seconds", "n_windows",
    "top_regions"}`` or ``{"file", "error"}``.
    """
    from mammo.components.explain import heatmap

    d = cfg.deploy
    settings = heatmap_settings(backend, cfg, patch_mm, size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    signature = settings["signature"]

    def predict_fn(windows: np.ndarray) -> np.ndarray:
        return np.asarray(backend.predict(signature, list(windows))["probabilities"], dtype=np.float32)

    answers = []
    used: set[str] = set()
    for path in image_paths:
        try:
            image, info = load_image_info(path, d.max_image_pixels)
            spacing, spacing_source = _spacing(pixel_spacing_mm, info, settings["default_spacing_mm"])
            result = heatmap.sliding_window_maps(
                predict_fn, image, spacing, settings["patch_mm"], stride or d.heatmap_stride, batch or d.heatmap_batch,
                min_breast_fraction=d.heatmap_min_breast_fraction, input_size=settings["input_size"],
                class_names=settings["class_names"], progress=progress, description=Path(str(path)).name)
            stem = _unique_stem(Path(str(path)).name, used)
            answers.append(write_heatmap(result, image, out, stem, str(path), spacing_source, settings,
                                         d.heatmap_top_regions))
        except Exception as err:  # noqa: BLE001 - one bad image never costs the others their maps
            answers.append({"file": str(path), "error": _one_line(err)})
            logger.warning("%s: %s", path, answers[-1]["error"])
    return answers


def _spacing(option: float | None, info: Any, default: float | None) -> tuple[float, str]:
    if option:
        return float(option), "option"
    if getattr(info, "pixel_spacing_mm", None):
        return float(info.pixel_spacing_mm), "header"
    if default:
        return float(default), "default"
    raise ValueError("the image states no pixel spacing and none is configured: pass --pixel-spacing-mm")


def _unique_stem(name: str, used: set[str]) -> str:
    stem = name.rsplit(".", 1)[0] if "." in name else name
    candidate, k = stem, 1
    while candidate in used:
        k += 1
        candidate = f"{stem}-{k}"
    used.add(candidate)
    return candidate


def write_heatmap(result: Any, image: np.ndarray, out: Path, stem: str, source: str, spacing_source: str,
                  settings: Mapping[str, Any], k: int) -> dict[str, Any]:
    """Write ``<stem>`` + overlay / maps / regions into ``out``; returns the file's answer."""
    from mammo.components.explain import heatmap, overlay

    maps = heatmap.derived_maps(result)
    names = [heatmap.MALIGNANT, heatmap.ABNORMAL] + [n for n in result.class_names if n != "normal"]
    names = [n for n in names if n in maps] + [n for n in maps if n not in names]
    regions = heatmap.top_regions(result, k=k)
    paths = {key: out / f"{stem}{suffix}" for key, suffix in
             (("overlay", HEATMAP_OVERLAY), ("maps", HEATMAP_MAPS), ("regions", HEATMAP_REGIONS))}
    np.save(paths["maps"], np.stack([maps[n] for n in names]).astype(np.float32))
    shown = [n for n in names if n != "normal"]
    overlay.save_png(overlay.panels(image, {n: maps[n] for n in shown}, [r.box_px for r in regions],
                                    [f"{i + 1} {r.class_name} {r.probability:.2f}" for i, r in enumerate(regions)]),
                     paths["overlay"])
    record = {"file": source, **result.summary(), "pixel_spacing_source": spacing_source,
              "patch_mm_source": settings["patch_mm_source"], "input_size": settings["input_size"],
              "map_names": names, "map_cell_px": result.cell_px,
              "top_regions": [r.to_dict() for r in regions]}
    write_json(paths["regions"], record)
    return {"file": source, **{key: str(p) for key, p in paths.items()}, "seconds": round(result.seconds, 3),
            "n_windows": result.n_windows, "top_regions": record["top_regions"]}


__all__ = ["SIGNATURES", "load_image", "load_patch", "open_backend", "predict_files", "predict_local",
           "predict_grpc", "predict_rest", "heatmap_files", "heatmap_settings"]
