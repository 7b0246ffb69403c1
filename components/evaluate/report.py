"""The evaluation report (self-contained HTML: inline SVG plots and PNG data URIs) from Jinja2 templates.

:func:`render_html` renders ``templates/evaluation.html.j2`` from the plain record that
:func:`mammo.components.evaluate.logic.run` writes as ``metrics.json`` (plus the figures that are
not stored there), so a report can be re-rendered from that file. :func:`environment` is shared
with the gate's report, which embeds the same evaluation sections (``templates/macros.html.j2``).
"""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

from mammo.components.config import CLASS_ABBREVIATIONS, CLASS_NAMES

TEMPLATES = Path(__file__).parent / "templates"
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]
#: side of the square plots in pixels
PLOT_SIZE = 260


def fmt(x: Any, digits: int = 4) -> str:
    """A number for a table cell; "n/a" for None / NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def fmt_ci(value: Any, interval: list[float] | None, digits: int = 4) -> str:
    """``value [low, high]`` (the interval only when there is one with finite bounds)."""
    if not interval or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in interval):
        return fmt(value, digits)
    return f"{fmt(value, digits)} [{fmt(interval[0], digits)}, {fmt(interval[1], digits)}]"


def class_label(name: str) -> str:
    """``MM (mass_malignant)`` for a class name; other names unchanged."""
    return f"{CLASS_ABBREVIATIONS[name]} ({name})" if name in CLASS_ABBREVIATIONS else str(name)


def data_uri(png: bytes) -> str:
    """PNG bytes as a ``data:`` URI for an ``<img>`` in a self-contained page."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def curve_points(xs: list[float], ys: list[float], size: int = PLOT_SIZE) -> str:
    """SVG polyline points of a curve in the unit square (y up) drawn in the plot frame."""
    return " ".join(f"{30 + x * size:.1f},{10 + (1 - y) * size:.1f}" for x, y in zip(xs, ys))


def roc_series(roc: dict, micro: dict | None = None) -> list[dict]:
    """The ROC curves to draw: every class (its colour), then the pooled micro average (dashed)."""
    series = [{"label": class_label(name), "points": curve_points(c["fpr"], c["tpr"]), "color": COLORS[k % len(COLORS)],
               "dash": False} for k, (name, c) in enumerate(roc.items())]
    if micro:
        series.append({"label": "micro average", "points": curve_points(micro["fpr"], micro["tpr"]), "color": "#444",
                       "dash": True})
    return series


def reliability_series(bins: list[dict], bins_after: list[dict] | None = None) -> list[dict]:
    """Reliability diagram series: accuracy vs mean confidence per bin, dot area ~ count."""
    series = []
    for k, (label, data) in enumerate((("raw outputs", bins), ("after temperature", bins_after or []))):
        if not data:
            continue
        total = sum(b["count"] for b in data) or 1
        series.append({"label": label, "color": COLORS[k],
                       "points": curve_points([b["confidence"] for b in data], [b["accuracy"] for b in data]),
                       "dots": [{"x": 30 + b["confidence"] * PLOT_SIZE, "y": 10 + (1 - b["accuracy"]) * PLOT_SIZE,
                                 "r": 2 + 8 * math.sqrt(b["count"] / total), "count": b["count"]} for b in data]})
    return series


def environment(*extra: Path):
    """The Jinja2 environment of the reports (autoescaped; ``extra`` template folders searched first)."""
    import jinja2

    from mammo.components.evaluate.logic import SMALL_SUBGROUP, SUBGROUP_COLUMNS

    env = jinja2.Environment(loader=jinja2.FileSystemLoader([*map(str, extra), str(TEMPLATES)]),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined,
                             extensions=["jinja2.ext.do"])
    env.filters.update(fmt=fmt, fmt_ci=fmt_ci, class_label=class_label, data_uri=data_uri)
    env.globals.update(CLASS_NAMES=CLASS_NAMES, ABBREVIATIONS=CLASS_ABBREVIATIONS, SUBGROUP_COLUMNS=SUBGROUP_COLUMNS,
                       SMALL_SUBGROUP=SMALL_SUBGROUP, PLOT_SIZE=PLOT_SIZE, roc_series=roc_series,
                       reliability_series=reliability_series, zip_rows=lambda rows: list(zip(CLASS_NAMES, rows)))
    return env


def render_html(result: dict, figures: dict | None = None) -> str:
    """One backbone's evaluation report (test first: it is what the gate decides on).

    ``figures`` holds what ``metrics.json`` does not: ``gradcam`` (overlays from
    :func:`mammo.components.explain.gradcam.gradcam_gallery`) and ``heatmaps``.
    """
    return environment().get_template("evaluation.html.j2").render(result=result, figures=figures or {})
