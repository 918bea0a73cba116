"""One summary across categories: the papers' table shape (a row per category, an average row).

For each metric, a table with one row per category and one column per arm (mean over seeds of the
first evaluation model, usually the segmenter), read from each category's ``report.json``; the
``average`` row is the mean over the categories that have a value. Failed categories are listed with
their error. Written to ``<out>/summary/summary.{json,csv,md,html}``.
"""

from __future__ import annotations

import csv
import html
import json
import math
from pathlib import Path
from typing import Any

SUMMARY_METRICS = ("image_auroc", "pixel_ap", "pixel_aupro")


def _category_table(report: dict[str, Any], metric: str) -> tuple[str, dict[str, float]]:
    model = report["models"][0] if report.get("models") else "segmenter"
    values: dict[str, float] = {}
    for s in report.get("summary", []):
        mean = s.get("stat", {}).get("mean")
        if s.get("model") == model and s.get("metric") == metric and mean is not None:
            values[s["arm"]] = float(mean)
    return model, values


def build_summary(categories: list[dict[str, Any]], metrics: tuple[str, ...] = SUMMARY_METRICS) -> dict[str, Any]:
    """`categories`: dicts with name, status ("ok"/"failed"), report_json (path) or error."""
    arms: list[str] = []
    rows: dict[str, dict[str, dict[str, float]]] = {m: {} for m in metrics}
    model = None
    failed = []
    for c in categories:
        if c.get("status") != "ok" or not c.get("report_json") or not Path(c["report_json"]).is_file():
            failed.append({"category": c["name"], "error": c.get("error", "no report")})
            continue
        report = json.loads(Path(c["report_json"]).read_text())
        for a in report.get("arms", []):
            name = a["name"] if isinstance(a, dict) else str(a)
            if name not in arms:
                arms.append(name)
        for m in metrics:
            model, rows[m][c["name"]] = _category_table(report, m)
    tables = {}
    for m in metrics:
        avg = {}
        for arm in arms:
            vals = [r[arm] for r in rows[m].values() if arm in r and not math.isnan(r[arm])]
            if vals:
                avg[arm] = sum(vals) / len(vals)
        tables[m] = {"rows": rows[m], "average": avg}
    return {"model": model, "arms": arms, "metrics": list(metrics), "tables": tables, "failed": failed}


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{100 * v:.1f}"


def write_summary(out_dir: str | Path, categories: list[dict[str, Any]]) -> dict[str, Path]:
    """Write summary.json/csv/md/html under `out_dir`; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    s = build_summary(categories)
    s["categories"] = categories
    paths = {k: out / f"summary.{k}" for k in ("json", "csv", "md", "html")}
    paths["json"].write_text(json.dumps(s, indent=2, default=str))
    with paths["csv"].open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["metric", "category", *s["arms"]])
        for m, t in s["tables"].items():
            for cat, r in t["rows"].items():
                w.writerow([m, cat, *(f"{r[a]:.6f}" if a in r else "" for a in s["arms"])])
            w.writerow([m, "average", *(f"{t['average'][a]:.6f}" if a in t["average"] else "" for a in s["arms"])])
    md = [f"# Benchmark summary (model: {s['model']}, mean over seeds, x100)", ""]
    parts = ["<html><head><meta charset='utf-8'><title>anoaug benchmark summary</title></head><body>"]
    parts.append(f"<h1>Benchmark summary</h1><p>model: {html.escape(str(s['model']))}; mean over seeds, x100</p>")
    for m, t in s["tables"].items():
        md += [f"## {m}", "", "| category | " + " | ".join(s["arms"]) + " |", "|---" * (len(s["arms"]) + 1) + "|"]
        parts.append(f"<h2>{html.escape(m)}</h2><table border='1' cellpadding='4'><tr><th>category</th>")
        parts += [f"<th>{html.escape(a)}</th>" for a in s["arms"]] + ["</tr>"]
        for cat, r in [*t["rows"].items(), ("average", t["average"])]:
            cells = [_fmt(r.get(a)) for a in s["arms"]]
            md.append(f"| {cat} | " + " | ".join(cells) + " |")
            tag = "th" if cat == "average" else "td"
            parts.append(f"<tr><{tag}>{html.escape(cat)}</{tag}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        md.append("")
        parts.append("</table>")
    if s["failed"]:
        md += ["## Failed categories", ""] + [f"- {f['category']}: {f['error']}" for f in s["failed"]]
        parts.append("<h2>Failed categories</h2><ul>")
        parts += [f"<li>{html.escape(f['category'])}: {html.escape(str(f['error']))}</li>" for f in s["failed"]]
        parts.append("</ul>")
    links = [c for c in categories if c.get("report")]
    if links:
        parts.append("<h2>Per-category reports</h2><ul>")
        parts += [f"<li><a href='{html.escape(str(c['report']))}'>{html.escape(c['name'])}</a></li>" for c in links]
        parts.append("</ul>")
    parts.append("</body></html>")
    paths["md"].write_text("\n".join(md) + "\n")
    paths["html"].write_text("\n".join(parts) + "\n")
    return paths
