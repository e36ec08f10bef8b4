"""``index.html``: the report as one static page that works from ``file://``.

The summary is written here as HTML; the gallery is drawn by ``static/page.js`` from the data
embedded in the page. CSS and JavaScript are inlined and a Content-Security-Policy forbids
anything but the page's own folder, so opening it makes no network request.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from .tide import ERROR_TYPES

STATIC = Path(__file__).parent / "static"
CSP = "default-src 'self' 'unsafe-inline' file: data:"  # no http(s): nothing is fetched from a network
ERROR_NAMES = {  # what each TIDE error type means, as the page explains it
    "cls": "classification: a good box (IoU ≥ 0.5) with the wrong class",
    "loc": "localisation: the right class, IoU 0.1–0.5 with the object",
    "both": "both: the wrong class and badly placed",
    "dupe": "duplicate: a second box on an object already found",
    "bkg": "background: a box on nothing (IoU ≤ 0.1 with every object)",
    "miss": "missed: an object no detection comes near",
}
LEGEND = [("tp", "TP", "true positive"), ("cls", "CLS", "wrong class"), ("loc", "LOC", "badly placed"),
          ("both", "BOTH", "class and place wrong"), ("dupe", "DUPE", "duplicate"), ("bkg", "BKG", "background"),
          ("miss", "MISS", "missed object"), ("fn", "FN", "object not found, a wrong box points at it"),
          ("gt", "GT", "object found")]


def _table(header: list[str], rows: list[list[Any]], attrs: str = "") -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table {attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(v: Any) -> str:
    if v is None:
        return '<span class="muted">–</span>'
    if isinstance(v, float):
        return f"{v:.4f}"
    return escape(str(v))


def _headline(s: dict[str, Any]) -> str:
    stats = [("mAP@0.5", f"{s['map50']:.4f}"), ("mAP@[.5:.95]", f"{s['map50_95']:.4f}"), ("images", s["n_images"]),
             ("objects", s["n_objects"]), ("detections", s["n_detections"]),
             (f"shown (score ≥ {s['conf']})", s["n_shown"])]
    cards = "".join(f'<div class="stat"><b>{escape(str(v))}</b>{escape(k)}</div>' for k, v in stats)
    model = s.get("model") or {}
    settings = "".join(f"<tr><td>{escape(k)}</td><td>{escape(json.dumps(v) if isinstance(v, (dict, list)) else str(v))}</td></tr>"
                       for k, v in model.items())
    settings = f"<details><summary>model and settings</summary><table>{settings}</table></details>" if settings \
        else '<p class="muted">model settings unknown (no model folder or run summary next to the detections)</p>'
    return f'<div class="headline">{cards}</div>{settings}'


def _errors(s: dict[str, Any]) -> str:
    e, counts = s["errors"], s["error_counts"]
    top = max([e[t] for t in ERROR_TYPES] + [1e-9])
    bars = "".join(f'<span title="{escape(ERROR_NAMES[t])}">{t}</span>'
                   f'<div class="bar" style="width:{100 * e[t] / top:.1f}%;background:var(--{t})"></div>'
                   f"<span>dAP {e[t]:.4f} · {counts[t]}</span>" for t in ERROR_TYPES)
    per_class = _table(["class", "AP@0.5", *[f"d{t}" for t in ERROR_TYPES]],
                       [[c, s["ap50"][c], *[e["per_class"][c][t] for t in ERROR_TYPES]] for c in s["classes"]])
    names = "".join(f"<li><b>{t}</b>: {escape(ERROR_NAMES[t])}</li>" for t in ERROR_TYPES)
    return (f'<p>mAP@0.5 gained if the errors of one type were fixed (TIDE, IoU foreground {s["pos_iou"]}, '
            f'background {s["bg_iou"]}), and how many there are (every detection, every score).</p>'
            f'<div class="bars" id="error-bars">{bars}</div><ul class="muted">{names}</ul>{per_class}')


def _sizes(s: dict[str, Any]) -> str:
    sizes = s["sizes"]
    how = "COCO's areas" if sizes["scheme"] == "coco" else "tertiles of this split's object areas (most objects fall in one COCO bin)"
    rows = [[b["name"], f"{b['low']:.0f}–" + ("" if b["high"] is None else f"{b['high']:.0f}"), b["n_objects"], b["map50"],
             b["recall"], b["recall_at_conf"]] for b in sizes["bins"]]
    return (f"<p>Bins: {escape(how)}, in square pixels.</p>"
            + _table(["size", "area (px²)", "objects", "mAP@0.5", "recall", f"recall (score ≥ {s['conf']})"], rows))


def _gallery(s: dict[str, Any]) -> str:
    errors = "".join(f'<option value="{t}">{t}</option>' for t in (*ERROR_TYPES, "fn", "tp"))
    legend = "".join(f'<span><svg width="28" height="14"><rect class="box k-{k}" x="2" y="2" width="24" height="10"/></svg>'
                     f"<b>{tag}</b> {escape(text)}</span>" for k, tag, text in LEGEND)
    return f"""
<p class="muted">Detections scoring at least {s['conf']}; click an image for its full view and a table of its boxes.</p>
<div class="controls">
  <label>sort <select id="sort"><option value="worst">worst first (FP + FN)</option>
    <option value="ap">image AP, lowest first</option><option value="name">file name</option></select></label>
  <label>class <select id="filter-class"><option value="">all</option></select></label>
  <label>error <select id="filter-error"><option value="">any</option>{errors}</select></label>
  <label>per page <select id="per-page"><option>30</option><option selected>60</option><option>120</option>
    <option>240</option></select></label>
</div>
<div class="legend">{legend}</div>
<p id="count"></p>
<div id="gallery"></div>
<div class="pager"><button id="prev">previous</button><span id="page"></span><button id="next">next</button></div>
<dialog id="viewer"><p><b id="viewer-title"></b> <button id="viewer-close">close</button></p>
  <div id="viewer-image"></div>
  <table id="viewer-table"><thead><tr><th>box</th><th>class</th><th>score</th><th>IoU (best object)</th><th>verdict</th>
  </tr></thead><tbody></tbody></table></dialog>"""


def render_page(summary: dict[str, Any], images: list[dict[str, Any]]) -> str:
    """The whole ``index.html``: ``summary`` (report.json's numbers) as HTML, ``images`` (gallery entries) as data."""
    data = json.dumps({"classes": summary["classes"], "images": images}, separators=(",", ":"))
    data = data.replace("<", "\\u003c")  # the JSON can neither close its <script> element nor open a comment
    plots = "".join(f'<img src="{escape(p)}" alt="{escape(p)}">' for p in summary.get("plots", []))
    title = f"rcnn report: {summary['split']} split"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>{(STATIC / "page.css").read_text()}</style></head>
<body>
<h1>{escape(title)}</h1>
<p class="muted">{escape(summary.get("source", ""))}</p>
{_headline(summary)}
<h2>AP per class, precision-recall and confusion</h2>
{_table(["class", "AP@0.5", "objects"], [[c, summary["ap50"][c], summary["objects_per_class"][c]] for c in summary["classes"]])}
<div class="plots">{plots}</div>
<h2>Errors (TIDE)</h2>
{_errors(summary)}
<h2>Object size</h2>
{_sizes(summary)}
<h2>Gallery</h2>
{_gallery(summary)}
<script type="application/json" id="report-data">{data}</script>
<script>{(STATIC / "page.js").read_text()}</script>
</body></html>
"""
