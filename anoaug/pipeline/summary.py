"""One summary across categories in the papers' table layout (a row per category, an average row).

For every arm, a table with one row per category and the papers' columns: image AUROC / AP / F1-max,
pixel AUROC / AP / F1-max, AUPRO and AC accuracy as mean over seeds with the 95% CI (from each category's
``report.json`` ``summary``: the first model of ``models`` that reports the metric, so AC accuracy
comes from the classifier), then the generation-quality columns of ``report.json``'s
``generation_quality[<arm>]`` (``—`` where a category has none; left out when no category has any).
The ``average`` row is the mean over the categories that have a value; its CI is the t-interval over
the per-seed means across categories when those categories share the same seeds, else none.
A category whose run failed (or whose report.json is missing or unreadable) is a row saying so.

Written atomically to ``<out>/summary/summary.{json,csv,md,html}``. ``summary.json`` also keeps the
older per-metric tables (``tables``: rows of arm means per category, and their average).
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from anoaug.atomic import atomic_write_text

SUMMARY_METRICS = ("image_auroc", "pixel_ap", "pixel_aupro")
BENCHMARK_METRICS = (
    "image_auroc",
    "image_ap",
    "image_f1max",
    "pixel_auroc",
    "pixel_ap",
    "pixel_f1max",
    "pixel_aupro",
    "ac_accuracy",
)
METRIC_LABELS = {
    "image_auroc": "image AUROC",
    "image_ap": "image AP",
    "image_f1max": "image F1-max",
    "pixel_auroc": "pixel AUROC",
    "pixel_ap": "pixel AP",
    "pixel_f1max": "pixel F1-max",
    "pixel_aupro": "AUPRO",
    "ac_accuracy": "AC accuracy",
}
# Keys of report.json's generation_quality[<arm>] (the generation-quality stage writes them).
QUALITY_KEYS = ("fidelity_mmd", "diversity", "mask_alignment", "memorisation", "kid", "is", "ic_lpips")
QUALITY_LABELS = {
    "fidelity_mmd": "fidelity MMD",
    "diversity": "diversity",
    "mask_alignment": "mask alignment",
    "memorisation": "memorisation",
    "kid": "KID",
    "is": "IS",
    "ic_lpips": "IC-LPIPS",
}
AVERAGE = "average"
MISSING = "—"


def _category_table(report: dict[str, Any], metric: str) -> tuple[str, dict[str, float]]:
    model = report["models"][0] if report.get("models") else "segmenter"
    values: dict[str, float] = {}
    for s in report.get("summary", []):
        mean = s.get("stat", {}).get("mean")
        if s.get("model") == model and s.get("metric") == metric and mean is not None:
            values[s["arm"]] = float(mean)
    return model, values


def _arm_names(report: dict[str, Any]) -> list[str]:
    return [a["name"] if isinstance(a, dict) else str(a) for a in report.get("arms", [])]


def _cells(report: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """{arm: {metric: {mean, ci_low, ci_high, half_width, n, values, seeds, model}}} of one report."""
    order = {m: i for i, m in enumerate(report.get("models") or [])}
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for s in sorted(report.get("summary", []), key=lambda s: order.get(s.get("model"), len(order))):
        stat = s.get("stat") or {}
        if s.get("metric") not in BENCHMARK_METRICS or stat.get("mean") is None:
            continue
        arm = out.setdefault(str(s.get("arm")), {})
        if s["metric"] in arm:  # an earlier model of `models` already reports it
            continue
        arm[s["metric"]] = {
            **{k: stat.get(k) for k in ("mean", "std", "ci_low", "ci_high", "half_width", "n")},
            "values": list(s.get("values") or []),
            "seeds": list(s.get("seeds") or []),
            "model": s.get("model"),
        }
    return out


def _number(v: Any) -> float | None:
    """A quality figure: a number, or a dict holding one under mean/value; None when absent or NaN."""
    if isinstance(v, dict):
        v = v.get("mean", v.get("value"))
    if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(float(v)):
        return None
    return float(v)


def _quality(report: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """{arm: {quality key: value or None}} from generation_quality (entries that are not arms are skipped)."""
    gq = report.get("generation_quality") or {}
    if isinstance(gq.get("arms"), dict):
        gq = gq["arms"]
    out = {}
    for arm, rec in gq.items():
        if isinstance(rec, dict) and any(k in rec for k in QUALITY_KEYS):
            out[str(arm)] = {k: _number(rec.get(k)) for k in QUALITY_KEYS}
    return out


def _average_cell(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean of the categories' means; CI over the per-seed means when every category has the same seeds.

    The categories' CIs are t-intervals over the same n seeds (``anoaug.evaluation.metrics.mean_ci``), so
    they all carry the same quantile t = half_width * sqrt(n) / std; the average's interval reuses it, which
    keeps torch / anomalib (imported by that module) out of the summary, which `anoaug run` writes even
    when every stage is up to date.
    """
    mean = sum(c["mean"] for c in cells) / len(cells)
    out: dict[str, Any] = {"mean": mean, "ci_low": None, "ci_high": None, "half_width": None, "n": 0}
    seeds, n = cells[0]["seeds"], len(cells[0]["seeds"])
    same = n >= 2 and all(c["seeds"] == seeds and len(c["values"]) == n and c.get("n") == n for c in cells)
    quantiles = [c["half_width"] * math.sqrt(n) / c["std"] for c in cells if same and c.get("std") and c["half_width"]]
    constant = same and all(c.get("std") == 0 for c in cells)  # every seed gave the same value: a zero-width CI
    if quantiles or constant:
        per_seed = np.mean([c["values"] for c in cells], axis=0)
        half = float(quantiles[0] * per_seed.std(ddof=1) / math.sqrt(n)) if quantiles else 0.0
        out.update({"ci_low": mean - half, "ci_high": mean + half, "half_width": half, "n": n})
    out["categories"] = len(cells)
    return out


def _load(c: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """(report, None) or (None, why the category has no results)."""
    if c.get("status") != "ok":
        return None, str(c.get("error") or "run failed")
    path = Path(c["report_json"]) if c.get("report_json") else None
    if path is None or not path.is_file():
        return None, f"no report.json ({path})" if path else "no report"
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return None, f"{path}: unreadable report.json ({exc})"
    if not isinstance(report, dict):
        return None, f"{path}: report.json is not an object"
    return report, None


def build_summary(categories: list[dict[str, Any]], metrics: tuple[str, ...] = SUMMARY_METRICS) -> dict[str, Any]:
    """`categories`: dicts with name, status ("ok"/"failed"), report_json (path) or error.

    Returns {model, arms, metrics, tables (per-metric arm means), failed, benchmark (the papers' layout:
    metrics, quality, arms, rows [{category, status, error?, cells, quality}], average {cells, quality})}.
    """
    arms: list[str] = []
    rows: dict[str, dict[str, dict[str, float]]] = {m: {} for m in metrics}
    model = None
    failed = []
    bench_rows: list[dict[str, Any]] = []
    for c in categories:
        report, error = _load(c)
        if report is None:
            failed.append({"category": c["name"], "error": error})
            bench_rows.append({"category": c["name"], "status": "failed", "error": error})
            continue
        for name in _arm_names(report):
            if name not in arms:
                arms.append(name)
        for m in metrics:
            model, rows[m][c["name"]] = _category_table(report, m)
        bench_rows.append({"category": c["name"], "status": "ok", "cells": _cells(report), "quality": _quality(report)})
    tables = {}
    for m in metrics:
        avg = {}
        for arm in arms:
            vals = [r[arm] for r in rows[m].values() if arm in r and not math.isnan(r[arm])]
            if vals:
                avg[arm] = sum(vals) / len(vals)
        tables[m] = {"rows": rows[m], "average": avg}
    ok = [r for r in bench_rows if r["status"] == "ok"]
    for r in ok:  # arms that only appear in results (not in the arms list) still get a table
        for arm in [*r["cells"], *r["quality"]]:
            if arm not in arms:
                arms.append(arm)
    avg_cells: dict[str, dict[str, Any]] = {}
    avg_quality: dict[str, dict[str, float | None]] = {}
    for arm in arms:
        for m in BENCHMARK_METRICS:
            cells = [r["cells"][arm][m] for r in ok if m in r["cells"].get(arm, {})]
            if cells:
                avg_cells.setdefault(arm, {})[m] = _average_cell(cells)
        for k in QUALITY_KEYS:
            vals = [v for r in ok if (v := r["quality"].get(arm, {}).get(k)) is not None]
            avg_quality.setdefault(arm, {})[k] = sum(vals) / len(vals) if vals else None
    benchmark = {
        "metrics": list(BENCHMARK_METRICS),
        "quality": list(QUALITY_KEYS) if any(r["quality"] for r in ok) else [],
        "arms": arms,
        "rows": bench_rows,
        "average": {"cells": avg_cells, "quality": avg_quality},
    }
    return {"model": model, "arms": arms, "metrics": list(metrics), "tables": tables, "failed": failed,
            "benchmark": benchmark}  # fmt: skip


# --- rendering --------------------------------------------------------------------------------


def _fmt_cell(cell: dict[str, Any] | None) -> str:
    """x100, "mean ± CI half-width" (the mean alone when there is no CI)."""
    if not cell or cell.get("mean") is None:
        return MISSING
    m = f"{100 * cell['mean']:.1f}"
    return f"{m} ± {100 * cell['half_width']:.1f}" if cell.get("half_width") is not None else m


def _fmt_quality(v: float | None) -> str:
    return MISSING if v is None else f"{v:.3g}"


def _header(b: dict[str, Any]) -> list[str]:
    return ["category", *(METRIC_LABELS[m] for m in b["metrics"]), *(QUALITY_LABELS[k] for k in b["quality"])]


def _arm_rows(b: dict[str, Any], arm: str) -> list[tuple[str, list[str] | str]]:
    """(category, cells) per row of one arm's table, then the average; a failed category's cells are its error."""
    out: list[tuple[str, list[str] | str]] = []
    for r in b["rows"]:
        if r["status"] != "ok":
            out.append((r["category"], f"run failed: {r['error']}"))
            continue
        out.append((r["category"], _row_cells(b, r["cells"].get(arm, {}), r["quality"].get(arm, {}))))
    out.append((AVERAGE, _row_cells(b, b["average"]["cells"].get(arm, {}), b["average"]["quality"].get(arm, {}))))
    return out


def _row_cells(b: dict[str, Any], cells: dict[str, Any], quality: dict[str, Any]) -> list[str]:
    return [*(_fmt_cell(cells.get(m)) for m in b["metrics"]), *(_fmt_quality(quality.get(k)) for k in b["quality"])]


def _models_line(b: dict[str, Any]) -> str:
    used: dict[str, set[str]] = {}
    for r in b["rows"]:
        for arm_cells in r.get("cells", {}).values():
            for m, c in arm_cells.items():
                used.setdefault(str(c.get("model")), set()).add(m)
    parts = [
        f"{model}: {', '.join(METRIC_LABELS[m] for m in BENCHMARK_METRICS if m in ms)}" for model, ms in used.items()
    ]
    return "; ".join(parts) or "none"


_INTRO = (
    "Mean over seeds ± 95% CI half-width (two-sided t-interval over seeds), x100; {missing} = not measured. "
    "The average row is the mean over the categories with a value (its CI: over the per-seed means across "
    "categories, when they share the seeds)."
)
_QUALITY_INTRO = (
    " Generation quality: report.json's generation_quality per arm, raw values (fidelity MMD, KID: lower = "
    "closer to the held-out real defects; memorisation: near 0 = copies of the training defects)."
)


def _intro(b: dict[str, Any]) -> str:
    return _INTRO.format(missing=MISSING) + (_QUALITY_INTRO if b["quality"] else "")


def _csv_text(b: dict[str, Any]) -> str:
    """Wide CSV, a row per category and the average row; values in [0, 1] (not x100)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    cols = []
    for arm in b["arms"]:
        for m in b["metrics"]:
            cols += [(arm, m, "mean"), (arm, m, "ci_low"), (arm, m, "ci_high")]
        cols += [(arm, k, "quality") for k in b["quality"]]
    names = [f"{a}/{m}" if s in ("mean", "quality") else f"{a}/{m}/{s}" for a, m, s in cols]
    w.writerow(["category", "status", "error", *names])

    def num(v: Any) -> str:
        return "" if v is None else f"{v:.6f}"

    def values(cells: dict[str, Any], quality: dict[str, Any]) -> list[str]:
        return [
            num(quality.get(a, {}).get(m)) if s == "quality" else num(cells.get(a, {}).get(m, {}).get(s))
            for a, m, s in cols
        ]

    for r in b["rows"]:
        if r["status"] != "ok":
            w.writerow([r["category"], "failed", r["error"], *([""] * len(cols))])
        else:
            w.writerow([r["category"], "ok", "", *values(r["cells"], r["quality"])])
    w.writerow([AVERAGE, "ok", "", *values(b["average"]["cells"], b["average"]["quality"])])
    return buf.getvalue()


def _markdown(s: dict[str, Any], categories: list[dict[str, Any]]) -> str:
    b = s["benchmark"]
    header = _header(b)
    md = ["# Benchmark summary", "", _intro(b), "", f"Models: {_models_line(b)}.", ""]
    for arm in b["arms"]:
        md += [f"## Arm `{arm}`", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        for cat, cells in _arm_rows(b, arm):
            if isinstance(cells, str):
                cells = [cells] + [MISSING] * (len(header) - 2)
            name = f"**{cat}**" if cat == AVERAGE else cat
            md.append(f"| {name} | " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        md.append("")
    md += [f"## Arms side by side (model: {s['model']}, mean over seeds, x100)", ""]
    for m, t in s["tables"].items():
        md += [f"### {METRIC_LABELS.get(m, m)}", "", "| category | " + " | ".join(s["arms"]) + " |"]
        md.append("|---" * (len(s["arms"]) + 1) + "|")
        for cat, r in [*t["rows"].items(), (AVERAGE, t["average"])]:
            md.append(f"| {cat} | " + " | ".join(_fmt_cell({"mean": r.get(a)}) for a in s["arms"]) + " |")
        md.append("")
    if s["failed"]:
        md += ["## Failed categories", ""] + [f"- {f['category']}: {f['error']}" for f in s["failed"]] + [""]
    links = [c for c in categories if c.get("report")]
    if links:
        md += ["## Per-category reports", ""] + [f"- [{c['name']}]({c['report']})" for c in links] + [""]
    return "\n".join(md)


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1400px;color:#222}"
    "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
    "th,td{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#f2f2f2}"
    "td:first-child,th:first-child{text-align:left}tr.avg td{font-weight:bold;background:#fafafa}"
    "td.failed{color:#a00;text-align:left}"
)


def _html(s: dict[str, Any], categories: list[dict[str, Any]]) -> str:
    e = html.escape
    b = s["benchmark"]
    header = _header(b)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>anoaug benchmark summary</title>',
        f"<style>{_CSS}</style></head><body>",
        "<h1>Benchmark summary</h1>",
        f"<p>{e(_intro(b))}</p><p>Models: {e(_models_line(b))}.</p>",
    ]
    for arm in b["arms"]:
        parts.append(f"<h2>Arm <code>{e(arm)}</code></h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header))
        parts.append("</tr>")
        for cat, cells in _arm_rows(b, arm):
            if isinstance(cells, str):
                span = len(header) - 1
                parts.append(f"<tr><td>{e(cat)}</td><td class='failed' colspan='{span}'>{e(cells)}</td></tr>")
                continue
            cls = " class='avg'" if cat == AVERAGE else ""
            parts.append(f"<tr{cls}><td>{e(cat)}</td>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
        parts.append("</table>")
    parts.append(f"<h2>Arms side by side</h2><p>model: {e(str(s['model']))}; mean over seeds, x100</p>")
    for m, t in s["tables"].items():
        parts.append(f"<h3>{e(METRIC_LABELS.get(m, m))}</h3><table><tr><th>category</th>")
        parts += [f"<th>{e(a)}</th>" for a in s["arms"]] + ["</tr>"]
        for cat, r in [*t["rows"].items(), (AVERAGE, t["average"])]:
            cls = " class='avg'" if cat == AVERAGE else ""
            cells = "".join(f"<td>{_fmt_cell({'mean': r.get(a)})}</td>" for a in s["arms"])
            parts.append(f"<tr{cls}><td>{e(cat)}</td>{cells}</tr>")
        parts.append("</table>")
    if s["failed"]:
        parts.append("<h2>Failed categories</h2><ul>")
        parts += [f"<li>{e(f['category'])}: {e(str(f['error']))}</li>" for f in s["failed"]]
        parts.append("</ul>")
    links = [c for c in categories if c.get("report")]
    if links:
        parts.append("<h2>Per-category reports</h2><ul>")
        parts += [f"<li><a href='{e(str(c['report']))}'>{e(c['name'])}</a></li>" for c in links]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_summary(out_dir: str | Path, categories: list[dict[str, Any]]) -> dict[str, Path]:
    """Write summary.json/csv/md/html under `out_dir` (each atomically); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    s = build_summary(categories)
    s["categories"] = categories
    paths = {k: out / f"summary.{k}" for k in ("json", "csv", "md", "html")}
    atomic_write_text(paths["json"], json.dumps(s, indent=2, default=str))
    atomic_write_text(paths["csv"], _csv_text(s["benchmark"]))
    atomic_write_text(paths["md"], _markdown(s, categories) + "\n")
    atomic_write_text(paths["html"], _html(s, categories))
    return paths
