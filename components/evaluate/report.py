"""Self-contained HTML reports (inline SVG plots, no external files) for evaluation and the gate.

* :func:`render_html`: one backbone's evaluation (the evaluate step's ``HTML`` artifact).
* :func:`render_gate_html`: the promotion decision and its reasons at the top, the comparison table
  of all backbones (the shape of the paper's Table 2, with training time), then the selected
  backbone's full evaluation (the gate step's ``HTML`` artifact).

Both read the plain dicts that :mod:`mammo.components.evaluate.logic` and
:mod:`mammo.components.select_and_gate.logic` write as JSON, so a report can be re-rendered from those files.
"""

from __future__ import annotations

import html
import math
from typing import Any, Iterable

from mammo.components.config import CLASS_NAMES

ABBREVIATIONS = dict(zip(CLASS_NAMES, ("BC", "MC", "BM", "MM", "N")))
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]
STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:1em auto;color:#222}"
         "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #aaa;padding:3px 8px;text-align:right}"
         "th{background:#f0f0f0}td.l,th.l{text-align:left}.box{padding:.6em 1em;border-radius:6px;margin:.5em 0}"
         ".pass{background:#e3f4e3;border:2px solid #2e7d32}.fail{background:#fbe4e4;border:2px solid #c62828}"
         ".forced{background:#fff4dc;border:2px solid #e69500}.note{color:#555;font-size:90%}"
         ".bad{color:#c62828;font-weight:bold}.good{color:#2e7d32}svg{margin-right:1em}")


def fmt(x: Any, digits: int = 4) -> str:
    """A number for a table cell; "n/a" for None / NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, float)):
        return f"{x:.{digits}f}" if isinstance(x, float) else str(x)
    return html.escape(str(x))


def fmt_ci(value: Any, interval: list[float] | None, digits: int = 4) -> str:
    """``value [low, high]`` (the interval only when there is one)."""
    if not interval:
        return fmt(value, digits)
    return f"{fmt(value, digits)} [{fmt(interval[0], digits)}, {fmt(interval[1], digits)}]"


def class_label(name: str) -> str:
    return f"{ABBREVIATIONS.get(name, '')} ({html.escape(name)})" if name in ABBREVIATIONS else html.escape(name)


def _page(title: str, body: Iterable[str]) -> str:
    return "\n".join([f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                      f"<style>{STYLE}</style></head><body>", *body, "</body></html>"])


def _table(header: list[str], rows: Iterable[list[str]], left_columns: int = 1) -> str:
    def cells(tag: str, values: list[str]) -> str:
        return "".join(f"<{tag}{' class=l' if i < left_columns else ''}>{v}</{tag}>" for i, v in enumerate(values))

    return ("<table><tr>" + cells("th", header) + "</tr>"
            + "".join("<tr>" + cells("td", row) + "</tr>" for row in rows) + "</table>")


# -- evaluation report ----------------------------------------------------------------------------


def render_html(result: dict) -> str:
    """One backbone's evaluation report (test first: it is what the gate decides on)."""
    name = result["backbone"]
    return _page(f"mammo evaluation: {name}", [f"<h1>Evaluation of {html.escape(name)}</h1>",
                                               *evaluation_sections(result)])


def headline(result: dict) -> str:
    """Test accuracy and macro AUC with their intervals, calibration, in one line."""
    t = result["test"]
    ci = t.get("ci") or {}
    parts = [f"test n={t['n']} patches" + (f" from {t['n_patients']} patients" if t.get("n_patients") else ""),
             f"accuracy <b>{fmt_ci(t['accuracy'], ci.get('accuracy'))}</b>",
             f"macro AUC <b>{fmt_ci(t['macro_auc'], ci.get('macro_auc'))}</b>",
             f"macro F1 {fmt(t['macro_f1'])}", f"ECE {fmt(t.get('ece'))}"]
    cal = result.get("calibration")
    if cal:
        parts.append(f"temperature {fmt(cal['temperature'], 3)} (ECE after {fmt(cal['test_ece_after'])})")
    text = "; ".join(parts)
    if ci:
        text += (f"<div class=note>[..] = {100 * ci['level']:.0f}% {html.escape(ci['method'])} interval, "
                 f"{ci['n_resamples']} resamples of {ci['n_patients']} patients, seed {ci['seed']}</div>")
    return f"<div class='box'>{text}</div>"


def evaluation_sections(result: dict) -> list[str]:
    """The body of an evaluation report (also embedded in the gate report)."""
    t = result["test"]
    parts = [headline(result), "<h2>Test split</h2>", per_class_table(t), confusion_table(t),
             roc_svg(t.get("roc", {}), t.get("micro_roc")),
             reliability_svg(t.get("reliability", []), (result.get("calibration") or {}).get("test_reliability_after")),
             calibration_table(t, result.get("calibration")), subgroup_tables(t.get("subgroups") or {})]
    if "validation" in result:
        v = result["validation"]
        parts += [f"<h2>Validation split</h2><p>n={v['n']}, accuracy {fmt(v['accuracy'])}, macro AUC "
                  f"{fmt(v['macro_auc'])}, macro F1 {fmt(v['macro_f1'])}, ECE {fmt(v.get('ece'))}</p>",
                  per_class_table(v), confusion_table(v)]
    if result.get("train"):
        tr = result["train"]
        parts.append("<h2>Training</h2>" + _table(["setting", "value"],
                                                  ([html.escape(k), fmt(v)] for k, v in tr.items())))
    return parts


def per_class_table(m: dict) -> str:
    ci = (m.get("ci") or {}).get("per_class_auc", {})
    specs = sorted({s for pc in m["per_class"].values() for s in pc.get("sensitivity_at_specificity", {})})
    header = ["class", "sensitivity", "specificity", "precision", "F-measure", "AUC" + (" [CI]" if ci else "")]
    header += [f"sensitivity at specificity {s}" for s in specs] + ["support"]
    rows = []
    for name, pc in m["per_class"].items():
        at = pc.get("sensitivity_at_specificity", {})
        rows.append([class_label(name), *(fmt(pc[k]) for k in ("sensitivity", "specificity", "precision", "f1")),
                     fmt_ci(pc["auc"], ci.get(name)), *(fmt(at.get(s, {}).get("sensitivity")) for s in specs),
                     str(pc["support"])])
    return "<h3>Per class (one-vs-rest)</h3>" + _table(header, rows)


def confusion_table(m: dict) -> str:
    header = ["true \\ predicted", *(ABBREVIATIONS.get(c, c) for c in CLASS_NAMES)]
    rows = [[class_label(name), *(str(v) for v in row)] for name, row in zip(CLASS_NAMES, m["confusion_matrix"])]
    return "<h3>Confusion matrix (rows true, columns predicted; the paper's order)</h3>" + _table(header, rows)


def calibration_table(m: dict, cal: dict | None) -> str:
    rows = [["ECE", fmt(m.get("ece"))], ["negative log-likelihood", fmt(m.get("nll"))],
            ["Brier score", fmt(m.get("brier"))]]
    header = ["test split", "raw model outputs"]
    if cal:
        header.append(f"after temperature {fmt(cal['temperature'], 3)}")
        rows[0].append(fmt(cal["test_ece_after"]))
        rows[1].append(fmt(cal["test_nll_after"]))
        rows[2].append(fmt(cal["test_brier_after"]))
    note = ("<p class=note>The gate's metrics are those of the raw outputs; the temperature is fitted on the "
            "validation split and stored with the selected model (<code>calibration.json</code>).</p>" if cal else "")
    return "<h3>Calibration</h3>" + _table(header, rows) + note


def subgroup_tables(subgroups: dict) -> str:
    from mammo.components.evaluate.logic import SMALL_SUBGROUP, SUBGROUP_COLUMNS

    if not subgroups:
        return ""
    parts = ["<h2>Subgroups (test split)</h2><p class=note>AUC within a subgroup is one-vs-rest among the "
             f"subgroup's patches (for masses: benign vs malignant). * = fewer than {SMALL_SUBGROUP} patches.</p>"]
    for col, sg in subgroups.items():
        title = SUBGROUP_COLUMNS.get(col, col)
        if not sg.get("available"):
            parts.append(f"<h3>By {html.escape(title)}</h3><p class=note>not available: "
                         f"{html.escape(sg.get('note', ''))}</p>")
            continue
        header = ["value", "patches", "patients", "accuracy", "macro AUC (within)",
                  *(f"recall {ABBREVIATIONS[c]}" for c in CLASS_NAMES)]
        rows = [[html.escape(g["value"]) + ("*" if g.get("small") else ""), str(g["n"]), fmt(g.get("n_patients")),
                 fmt(g["accuracy"]), fmt(g["macro_auc"]), *(fmt(g["recall"].get(c)) for c in CLASS_NAMES)]
                for g in sg["groups"]]
        parts.append(f"<h3>By {html.escape(title)}</h3>" + _table(header, rows))
    return "\n".join(parts)


def _axes(title: str, xlabel: str, ylabel: str, size: int) -> list[str]:
    """A heading and the opening of a unit-square SVG plot (frame, diagonal, axis labels)."""
    mid = 10 + size / 2
    return [f"<h3>{html.escape(title)}</h3><svg width='{size + 190}' height='{size + 40}' "
            f"xmlns='http://www.w3.org/2000/svg' role='img' aria-label='{html.escape(title)}'>",
            f"<rect x='30' y='10' width='{size}' height='{size}' fill='none' stroke='#999'/>",
            f"<line x1='30' y1='{size + 10}' x2='{size + 30}' y2='10' stroke='#ccc' stroke-dasharray='4'/>",
            f"<text x='{30 + size / 2}' y='{size + 32}' font-size='11' text-anchor='middle'>{xlabel}</text>",
            f"<text x='12' y='{mid}' font-size='11' text-anchor='middle' "
            f"transform='rotate(-90 12 {mid})'>{ylabel}</text>"]


def roc_svg(roc: dict, micro: dict | None = None, size: int = 260) -> str:
    """One-vs-rest ROC curves of every class (plus the pooled micro average, dashed)."""
    lines = _axes("One-vs-rest ROC", "false positive rate", "true positive rate", size)
    curves = [(name, curve, COLORS[k % len(COLORS)], "") for k, (name, curve) in enumerate(roc.items())]
    if micro:
        curves.append(("micro average", micro, "#444", " stroke-dasharray='6 3'"))
    for k, (name, curve, color, dash) in enumerate(curves):
        pts = " ".join(f"{30 + f * size:.1f},{10 + (1 - t) * size:.1f}" for f, t in zip(curve["fpr"], curve["tpr"]))
        lines.append(f"<polyline points='{pts}' fill='none' stroke='{color}' stroke-width='2'{dash}/>")
        label = class_label(name) if name in ABBREVIATIONS else name
        lines.append(f"<text x='{size + 40}' y='{30 + 18 * k}' fill='{color}' font-size='12'>{label}</text>")
    return "\n".join(lines + ["</svg>"])


def reliability_svg(bins: list[dict], bins_after: list[dict] | None = None, size: int = 260) -> str:
    """Reliability diagram: accuracy vs mean confidence per bin (dot area ~ count); diagonal = calibrated."""
    lines = _axes("Reliability (top-class confidence)", "mean confidence", "accuracy", size)
    series = [("raw outputs", bins, COLORS[0])]
    if bins_after:
        series.append(("after temperature", bins_after, COLORS[1]))
    for k, (label, data, color) in enumerate(series):
        if not data:
            continue
        total = sum(b["count"] for b in data) or 1
        pts = [(30 + b["confidence"] * size, 10 + (1 - b["accuracy"]) * size, b["count"]) for b in data]
        lines.append(f"<polyline points='{' '.join(f'{x:.1f},{y:.1f}' for x, y, _ in pts)}' fill='none' "
                     f"stroke='{color}' stroke-width='1.5'/>")
        lines += [f"<circle cx='{x:.1f}' cy='{y:.1f}' r='{2 + 8 * math.sqrt(c / total):.1f}' fill='{color}' "
                  f"fill-opacity='0.6'><title>{c} patches</title></circle>" for x, y, c in pts]
        lines.append(f"<text x='{size + 40}' y='{30 + 18 * k}' fill='{color}' font-size='12'>{label}</text>")
    return "\n".join(lines + ["</svg>"])


# -- gate report ----------------------------------------------------------------------------------


def render_gate_html(decision: dict, evaluations: list[dict]) -> str:
    """The decision and its reasons first, then the comparison of all backbones, then the selected one."""
    forced, promoted = decision.get("forced", False), decision["promoted"]
    verdict = "FORCED PROMOTION" if forced else ("PROMOTED" if promoted else "NOT PROMOTED")
    css = "forced" if forced else ("pass" if promoted else "fail")
    champion = (f"champion: version {decision['champion_version']}, test {decision['metric']} "
                f"{fmt(decision['champion_value'])}" if decision.get("champion_version") is not None
                else "no champion served yet")
    parts = [f"<h1>Promotion gate: {verdict}</h1>",
             f"<div class='box {css}'><b>{html.escape(decision['selected_backbone'])}</b>: "
             f"{html.escape(decision['reason'])}<div class=note>{html.escape(champion)}</div></div>"]
    checks = decision.get("checks") or []
    if checks:
        rows = [[html.escape(c["check"]), fmt(c.get("value")), html.escape(str(c.get("required", ""))),
                 "<span class=good>pass</span>" if c["passed"] else "<span class=bad>FAIL</span>"] for c in checks]
        parts.append("<h2>Checks (test split)</h2>" + _table(["check", "value", "required", "result"], rows))
    parts.append("<h2>Backbones</h2><p class=note>Selected by validation macro AUC, then validation accuracy "
                 "(the test split never selects). Shape of the paper's Table 2, plus the test split.</p>"
                 + comparison_table(evaluations, decision))
    best = next((e for e in evaluations if e["backbone"] == decision["selected_backbone"]), None)
    if best is not None:
        parts += [f"<h2>Selected: {html.escape(best['backbone'])}</h2>", *evaluation_sections(best)]
    return _page(f"mammo gate: {verdict}", parts)


def comparison_table(evaluations: list[dict], decision: dict | None = None) -> str:
    selected = (decision or {}).get("selected_backbone")
    header = ["model", "validation accuracy", "validation AUC", "training time (min)", "test accuracy [CI]",
              "test macro AUC [CI]", "test ECE", "selected"]
    rows = []
    for e in evaluations:
        ci = e["test"].get("ci") or {}
        seconds = (e.get("train") or {}).get("seconds")
        rows.append([html.escape(e["backbone"]), fmt(e["validation"]["accuracy"]), fmt(e["validation"]["macro_auc"]),
                     fmt(seconds / 60.0, 1) if seconds is not None else "n/a",
                     fmt_ci(e["test"]["accuracy"], ci.get("accuracy")),
                     fmt_ci(e["test"]["macro_auc"], ci.get("macro_auc")), fmt(e["test"].get("ece")),
                     "&#10004;" if e["backbone"] == selected else ""])
    champ = (decision or {}).get("champion") or {}
    if champ:
        tm = champ.get("test_metrics") or {}
        rows.append([f"champion v{fmt(champ.get('version'))} ({html.escape(str(champ.get('backbone', '?')))})",
                     fmt((champ.get("validation_metrics") or {}).get("accuracy")),
                     fmt((champ.get("validation_metrics") or {}).get("macro_auc")), "n/a",
                     fmt_ci(tm.get("accuracy"), tm.get("accuracy_ci")),
                     fmt_ci(tm.get("macro_auc"), tm.get("macro_auc_ci")), fmt(tm.get("ece")), "served"])
    return _table(header, rows)
