"""Preview of an extraction shard: a 4 x 4 grid PNG of the first patches of each class and one HTML page
(``preview.html``, rendered from ``templates/preview.html.j2``) that the KFP UI shows."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np

from mammo.components.config import CLASS_NAMES
from mammo.components.contracts import PREVIEW_HTML, preview_png
from mammo.components.imaging import decode_png, encode_png

TEMPLATES = Path(__file__).parent / "templates"


def grid(images: list[np.ndarray], columns: int = 4) -> np.ndarray:
    """Square 8-bit patches tiled row by row into a ``columns``-wide grid (empty cells black)."""
    s = images[0].shape[0]
    rows = -(-len(images) // columns)
    out = np.zeros((rows * s, columns * s), dtype=np.uint8)
    for k, img in enumerate(images):
        out[(k // columns) * s : (k // columns + 1) * s, (k % columns) * s : (k % columns + 1) * s] = img
    return out


def write_previews(patches: list[dict], out_dir: Path, per_class: int = 16, shard_index: int = 0,
                   num_shards: int = 1, protocol: str = "") -> list[Path]:
    """Write one grid PNG per class present and the HTML page showing them; returns the PNG paths."""
    import jinja2

    paths, grids = [], []
    for name in CLASS_NAMES:
        mine = [p for p in patches if p["label"] == name]
        if not mine:
            continue
        images = [decode_png(p["png"]) for p in mine[:per_class]]
        png = encode_png(grid(images))
        path = Path(out_dir) / preview_png(name)
        path.write_bytes(png)
        paths.append(path)
        grids.append({"label": name, "shown": len(images), "count": len(mine),
                      "crop_mm": round(float(np.median([p.get("crop_mm", 0.0) for p in mine])), 1),
                      "width": min(4 * images[0].shape[0], 512), "png_b64": base64.b64encode(png).decode()})
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
    html = env.get_template("preview.html.j2").render(grids=grids, total=len(patches), shard_index=shard_index,
                                                      num_shards=num_shards, protocol=protocol)
    (Path(out_dir) / PREVIEW_HTML).write_text(html)
    return paths
