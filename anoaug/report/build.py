"""Turn a run directory (``anoaug.evaluation.run_evaluation``) into report.json / .md / .html and results.csv."""

from __future__ import annotations

import csv
import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from anoaug.budget import is_capped, note
from anoaug.errors import AnoaugError
from anoaug.evaluation.metrics import ALL_METRICS, mean_ci
from anoaug.evaluation.protocol import NONE_ARM, REAL_ARM, parse_arm
from anoaug.report import figures
from anoaug.report.schema import Gain, Report, RunResult, Stat, Summary
from anoaug.shards.format import RUN_FILE as GENERATION_RUN_FILE

CSV_COLUMNS = {  # our metric key -> anomalib-benchmark-style column
    "image_auroc": "image_AUROC",
    "image_ap": "image_AUPR",
    "image_f1max": "image_F1Max",
    "pixel_auroc": "pixel_AUROC",
    "pixel_ap": "pixel_AUPR",
    "pixel_f1max": "pixel_F1Max",
    "pixel_aupro": "pixel_AUPRO",
    "ac_accuracy": "AC_accuracy",
}
QUALITY_KEYS = ("fidelity_mmd", "diversity", "mask_alignment", "memorisation", "kid", "is", "ic_lpips")
TABLE_METRICS = ("image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "pixel_aupro", "ac_accuracy")


def load_runs(run_dir: Path) -> list[RunResult]:
    runs = []
    for path in sorted(run_dir.glob("runs/*/*/seed*/metrics.json")):
        d = json.loads(path.read_text())
        metrics = {k: float(v) for k, v in d["metrics"].items() if v is not None and not math.isnan(float(v))}
        runs.append(
            RunResult(
                model=d["model"],
                arm=d["arm"],
                seed=int(d["seed"]),
                implementation=d.get("implementation", d["model"]),
                metrics=metrics,
                seconds=float(d.get("seconds", 0.0)),
                confusion_matrix=d.get("confusion_matrix"),
                classes=d.get("classes"),
            )
        )
    return runs


def arm_record(arm: dict[str, Any]) -> dict[str, Any]:
    """An arm of run.json with its ``generator``, ``variant`` and ``generator_params``: as recorded, or, for
    a record without ``variant``, from the generation record of its shard folder (``<source>/run.json``)."""
    if "variant" in arm or not arm.get("source"):
        return arm
    try:
        generation = json.loads((Path(arm["source"]) / GENERATION_RUN_FILE).read_text())
    except (OSError, ValueError):
        return arm
    if not isinstance(generation, dict) or "generator" not in generation:
        return arm
    keys = ("generator", "variant", "generator_params")
    extra = {k: generation[k] for k in ("training", "base_training") if isinstance(generation.get(k), dict)}
    return {**arm, **{k: generation.get(k) for k in keys}, **extra}


CAPPED_MARK = " †"  # beside an arm whose generator's training its time cap stopped early


def capped_arms(arms: list[dict[str, Any]]) -> dict[str, str]:
    """Arm name -> its note ("trained 156 / 2500 steps (time cap)") for arms whose generator's training, or
    the pretrained base model it runs on (``base_training``), the time cap stopped before its planned steps."""
    out: dict[str, str] = {}
    for a in arms:
        notes = [note(a["training"])] if is_capped(a.get("training")) else []
        if is_capped(a.get("base_training")):
            notes.append("base model " + note(a["base_training"]))
        if notes:
            out[str(a["name"])] = "; ".join(notes)
    return out


def arm_label(arm: str, capped: dict[str, str]) -> str:
    """An arm's name as the tables show it: marked when its training was capped."""
    return arm + CAPPED_MARK if arm in capped else arm


def arm_generators(arms: list[dict[str, Any]]) -> dict[str, str | None]:
    """Arm name -> the generator its shards came from, from run.json ``arms`` (a variant's ``generator``
    is the generator it runs; older records name the arm's producer there)."""
    return {str(a["name"]): a.get("generator") for a in arms}


def _learned(generator: str | None) -> bool | None:
    """Whether ``generator`` has learned weights (its class's ``learned``); None for no or an unknown one."""
    from anoaug.generators.base import get_generator

    if generator is None:
        return None
    try:
        return bool(get_generator(generator).learned)
    except AnoaugError:  # not registered here (a plugin not installed, an older record naming a variant)
        return None


def _baselines(arm: str, arms: set[str], generators: dict[str, str | None]) -> list[str]:
    """Arms that ``arm`` is compared with, paired by seed: 'none' and 'real-few' always; for a learned
    generator's arm also every model-free generator arm with the same use of the real few."""
    out = [NONE_ARM, REAL_ARM]
    a = parse_arm(arm)
    if _learned(generators.get(arm, a.generator)):
        for other in sorted(arms):
            b = parse_arm(other)
            if _learned(generators.get(other, b.generator)) is False and b.use_real == a.use_real:
                out.append(other)
    return out


def gain_baselines(gains: list[Gain]) -> list[str]:
    """The baselines present in ``gains``: 'none', 'real-few', then the model-free arms."""
    present = {g.baseline for g in gains}
    return [b for b in (NONE_ARM, REAL_ARM) if b in present] + sorted(present - {NONE_ARM, REAL_ARM})


def summarise(
    runs: list[RunResult], arm_order: list[str], generators: dict[str, str | None] | None = None
) -> tuple[list[Summary], list[Gain]]:
    """Mean/CI per (model, arm, metric), and paired gains of every arm over 'none' and 'real-few' (and of
    learned generators over the model-free ones, see `_baselines`). ``generators`` maps an arm to its
    generator (see `arm_generators`); arms missing there are read by their name."""
    generators = generators or {}
    by: dict[tuple[str, str], dict[int, dict[str, float]]] = {}
    for r in runs:
        by.setdefault((r.model, r.arm), {})[r.seed] = r.metrics
    all_arms = {arm for _, arm in by}
    order = {a: i for i, a in enumerate(arm_order)}
    keys = sorted(by, key=lambda k: (k[0], order.get(k[1], len(order)), k[1]))
    summary, gains = [], []
    for model, arm in keys:
        seeds = sorted(by[model, arm])
        for metric in ALL_METRICS:
            vals = [(s, by[model, arm][s][metric]) for s in seeds if metric in by[model, arm][s]]
            if not vals:
                continue
            stat = Stat(**mean_ci([v for _, v in vals]))
            summary.append(
                Summary(
                    model=model,
                    arm=arm,
                    metric=metric,
                    values=[v for _, v in vals],
                    seeds=[s for s, _ in vals],
                    stat=stat,
                )
            )
            for baseline in _baselines(arm, all_arms, generators):
                if arm in (baseline, NONE_ARM) or (model, baseline) not in by:
                    continue
                base = by[model, baseline]
                paired = [(s, v - base[s][metric]) for s, v in vals if s in base and metric in base[s]]
                if not paired:
                    continue
                st = Stat(**mean_ci([d for _, d in paired]))
                sig = st.ci_low is not None and (st.ci_low > 0 or (st.ci_high is not None and st.ci_high < 0))
                gains.append(
                    Gain(
                        model=model,
                        arm=arm,
                        baseline=baseline,
                        metric=metric,
                        seeds=[s for s, _ in paired],
                        differences=[d for _, d in paired],
                        stat=st,
                        significant=bool(sig),
                    )
                )
    return summary, gains


def _fmt(stat: Stat | None, signed: bool = False) -> str:
    if stat is None or stat.mean is None:
        return "–"
    m = f"{stat.mean:+.3f}" if signed else f"{stat.mean:.3f}"
    return f"{m} ± {stat.half_width:.3f}" if stat.half_width is not None else m


def _write_csv(path: Path, runs: list[RunResult], dataset: str, category: str) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["dataset", "category", "model", "arm", "seed", "implementation", *CSV_COLUMNS.values(), "seconds"])
        for r in sorted(runs, key=lambda r: (r.model, r.arm, r.seed)):
            vals = [f"{r.metrics[k]:.6f}" if k in r.metrics else "" for k in CSV_COLUMNS]
            w.writerow([dataset, category, r.model, r.arm, r.seed, r.implementation, *vals, f"{r.seconds:.2f}"])


def _extras_grid(source: str | None, arm: str, path: Path, per_type: int = 2) -> Path | None:
    """A contact sheet of an arm's shards (``per_type`` samples of each defect type, the first ones) with
    their extra images beside image and mask; None when the arm has no shards or they carry no extras."""
    from anoaug.shards.reader import iter_samples

    if not source or not Path(source).is_dir():
        return None
    chosen: list[Any] = []
    counts: dict[str, int] = {}
    try:
        for s in iter_samples(Path(source)):
            if not s.extras:
                return None  # every sample of a generator carries the same extras, or none
            t = str(s.meta.get("defect_type"))
            if counts.get(t, 0) < per_type:
                counts[t] = counts.get(t, 0) + 1
                chosen.append(s)
            if len(chosen) >= 8:
                break
    except AnoaugError:
        return None
    if not chosen:
        return None
    names = sorted(chosen[0].extras)
    return figures.sample_grid(
        np.stack([s.image for s in chosen]),
        np.stack([s.mask for s in chosen]),
        np.array([s.meta.get("defect_type") for s in chosen]),
        f"synthetic training pairs: {arm}, with the generator's {', '.join(names)} image(s)",
        path,
        extras={n: np.stack([s.extras[n] for s in chosen]) for n in names},
    )


def _figures(run_dir: Path, out: Path, report: Report, arm_order: list[str]) -> dict[str, str]:
    figs: dict[str, Path | None] = {}
    fig_dir = out / "figures"
    models = sorted({g.model for g in report.gains})
    for model in models:
        for base in gain_baselines(report.gains):
            figs[f"gain_{model}_vs_{base}"] = figures.gain_bars(
                report.gains, model, base, fig_dir / f"gain_{model}_vs_{base}.png"
            )
    # PR curves and anomaly-map overlays from the saved predictions.
    real = _load_npz(run_dir / "samples" / "real.npz")
    ad_models = sorted({r.model for r in report.runs if "image_auroc" in r.metrics})
    for model in ad_models:
        preds: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        for arm in arm_order:
            for seed in report.seeds:
                p = _load_npz(run_dir / "runs" / model / arm / f"seed{seed}" / "predictions.npz")
                if p is None:
                    continue
                preds.setdefault(arm, []).append((p["scores"], p["labels"]))
                if real is not None and seed == report.seeds[0]:
                    idx = {str(i): k for k, i in enumerate(p["ids"])}
                    sel = [idx[str(i)] for i in real["ids"] if str(i) in idx]
                    if sel:
                        figs[f"maps_{model}_{arm}"] = figures.map_overlays(
                            real["images"][: len(sel)],
                            p["maps"][sel],
                            p["masks"][sel],
                            real["defect_types"],
                            f"{model} / {arm} (seed {seed}): held-out real defects, anomaly map",
                            fig_dir / f"maps_{model}_{arm}.png",
                        )
                        if "reconstructions" in p:  # detectors that reconstruct (diffusionad) save them
                            figs[f"recon_{model}_{arm}"] = figures.map_overlays(
                                real["images"][: len(sel)],
                                p["maps"][sel],
                                p["masks"][sel],
                                real["defect_types"],
                                f"{model} / {arm} (seed {seed}): held-out real defects, input / reconstruction / map",
                                fig_dir / f"recon_{model}_{arm}.png",
                                recons=p["reconstructions"][sel],
                            )
        figs[f"pr_{model}"] = figures.pr_curves(preds, model, fig_dir / f"pr_{model}.png")
    # Training pairs of each arm beside the held-out real defects.
    for name in ["real", "real-few", *arm_order]:
        s = _load_npz(run_dir / "samples" / f"{name}.npz")
        if s is None or f"samples_{name}" in figs:
            continue
        title = {
            "real": "held-out real defects (evaluation set)",
            "real-few": "real few (generator-training defects)",
        }.get(name, f"synthetic training pairs: {name}")
        figs[f"samples_{name}"] = figures.sample_grid(
            s["images"], s["masks"], s["defect_types"], title, fig_dir / f"samples_{name}.png"
        )
    # Arms whose generator writes extra images (dualanodiff's part): image, extras, mask, from the shards.
    drawn: set[str] = set()
    for a in report.arms:
        if a.get("source") in drawn:  # a '+real' arm shares its producer's shards
            continue
        drawn.add(a.get("source"))
        grid = _extras_grid(a.get("source"), str(a["name"]), fig_dir / f"samples_{a['name']}_extras.png")
        if grid is not None:
            figs[f"samples_{a['name']}_extras"] = grid
    # Confusion matrices of the defect-type classifier (summed over seeds).
    for arm in arm_order:
        cms = [r for r in report.runs if r.model == "classifier" and r.arm == arm and r.confusion_matrix]
        if cms:
            total = np.sum([np.array(r.confusion_matrix) for r in cms], axis=0)
            figs[f"confusion_{arm}"] = figures.confusion(
                total,
                cms[0].classes or [],
                f"classifier / {arm}: summed over {len(cms)} seed(s)",
                fig_dir / f"confusion_{arm}.png",
            )
    return {k: str(v.relative_to(out)) for k, v in figs.items() if v is not None}


def _load_npz(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def masks_notes(summary: dict[str, Any] | None) -> list[str]:
    """Report notes from the masks stage's summary.json: the kind with its evidence and confidence, and the
    normal images left out of mask placement (unusable foreground) with their reasons."""
    if not summary:
        return []
    notes = [f"Masks: kind {summary.get('kind')} ({summary.get('kind_reason')})."]
    bad = summary.get("bad_images") or []
    if bad:
        names = "; ".join(f"{b['relpath']} ({b['reason']})" for b in bad[:20])
        more = f" and {len(bad) - 20} more" if len(bad) > 20 else ""
        notes.append(f"{len(bad)} normal image(s) excluded from mask placement (unusable foreground): {names}{more}.")
    return notes


def _quality_file(source: str | None) -> Path | None:
    """``<run>/quality/<producer>/quality.json`` beside a pipeline arm's ``<run>/generate/<producer>`` shards."""
    if not source:
        return None
    shards = Path(source)
    return shards.parent.parent / "quality" / shards.name / "quality.json"


def generation_quality(arms: list[dict[str, Any]], quality: dict[str, Path] | None) -> dict[str, dict[str, Any]]:
    """``{arm: {fidelity_mmd, diversity, mask_alignment, memorisation, kid, is, ic_lpips, networks, ...}}`` for
    every arm with synthetic pairs whose producer has a quality.json (``quality``: producer -> path; None: look
    beside each arm's shard folder). A '+real' arm shows its producer's figures."""
    from anoaug.evaluation.quality.stage import read_quality

    out: dict[str, dict[str, Any]] = {}
    for a in arms:
        producer = parse_arm(str(a["name"])).generator
        if producer is None:
            continue
        path = quality.get(producer) if quality is not None else _quality_file(a.get("source"))
        q = read_quality(path) if path is not None else None
        if q is None:
            continue
        out[str(a["name"])] = {
            **{k: q.get(k) for k in QUALITY_KEYS},
            "networks": q.get("networks", {}),
            "producer": producer,
            "generator": q.get("generator"),
            "memorisation_real_reference": (q.get("detail") or {}).get("memorisation_real_reference"),
            "counts": q.get("counts", {}),
        }
    return out


def quality_notes(gq: dict[str, dict[str, Any]]) -> list[str]:
    """What the reader must know about the quality figures: no leakage, which network figures, which weights."""
    from anoaug.evaluation.quality.stage import LEAKAGE_NOTE

    if not gq:
        return []
    notes = [LEAKAGE_NOTE]
    for arm, q in gq.items():
        n = q.get("networks") or {}
        if n.get("computed"):
            files = ", ".join(f"{k}: {v}" for k, v in (n.get("files") or {}).items())
            label = " MEANINGLESS: random stand-in weights." if n.get("meaningless") else ""
            notes.append(
                f"Generation quality of '{arm}': {', '.join(n['computed'])} computed with the weights in "
                f"{n.get('weights_dir')} ({files}).{label}"
            )
        missing = [k for k in ("kid", "is", "ic_lpips") if k not in (n.get("computed") or [])]
        if missing:
            notes.append(f"Generation quality of '{arm}': {', '.join(missing)} not computed: {n.get('reason')}.")
    return list(dict.fromkeys(notes))


def write_report(
    run_dir: Path,
    out_dir: Path | None = None,
    quality: dict[str, Path] | None = None,
    masks_summary: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write report.json, report.md, report.html, results.csv (+ figures/) for a run directory.

    ``quality`` maps a producer to its quality.json (the pipeline passes its quality stages' outputs); None
    looks for ``quality/<producer>/quality.json`` beside each arm's shard folder. The masks stage's summary
    (``masks_summary``), when given, adds its kind evidence and excluded images to the notes."""
    run_dir = Path(run_dir)
    meta_path = run_dir / "run.json"
    if not meta_path.is_file():
        raise AnoaugError("not an evaluation run directory (no run.json)", run_dir)
    meta = json.loads(meta_path.read_text())
    out = Path(out_dir) if out_dir else run_dir
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(run_dir)
    if not runs:
        raise AnoaugError("the run directory holds no finished runs (runs/*/*/seed*/metrics.json)", run_dir)
    arms = [arm_record(a) for a in meta["arms"]]
    arm_order = [a["name"] for a in arms]
    summary, gains = summarise(runs, arm_order, arm_generators(arms))
    gq = generation_quality(arms, quality)
    notes = [meta["none_arm"], meta["protocol"]["selection"], *quality_notes(gq)]
    if not gq:  # no quality stage ran: the evaluation's own note on the network figures
        notes.append(meta["generation_quality"]["note"])
    notes += masks_notes(masks_summary)
    if not meta.get("pre_trained"):
        notes.append("Backbones of anomalib models and the classifier were randomly initialised (pre_trained=False).")
    if meta.get("status") != "complete":
        notes.append(f"The run is not complete (status: {meta.get('status')}); partial results.")
    for arm, text in capped_arms(arms).items():
        notes.append(f"{arm}{CAPPED_MARK}: {text}; its numbers are not those of a fully trained generator.")
    report = Report(
        dataset=meta["dataset"],
        category=meta["category"],
        profile=meta["profile"],
        seeds=meta["seeds"],
        models=meta["models"],
        arms=arms,
        protocol=meta["protocol"],
        config=meta["config"],
        notes=notes,
        generation_quality=gq,
        runs=runs,
        summary=summary,
        gains=gains,
        figures={},
    )
    report.figures = _figures(run_dir, out, report, arm_order)
    bars = figures.quality_bars(gq, out / "figures" / "quality.png")
    if bars is not None:
        report.figures["quality"] = str(bars.relative_to(out))
    paths = {
        "json": out / "report.json",
        "md": out / "report.md",
        "html": out / "report.html",
        "csv": out / "results.csv",
    }
    paths["json"].write_text(report.model_dump_json(indent=2))
    paths["md"].write_text(render_markdown(report))
    paths["html"].write_text(render_html(report))
    _write_csv(paths["csv"], runs, report.dataset, report.category)
    return paths


# --- rendering --------------------------------------------------------------------------------


def arm_rows(arms: list[dict[str, Any]]) -> list[list[str]]:
    """One row per arm: its name (the label used everywhere), generator, variant, generator params, and
    whether it adds the real few. Records without ``variant`` / ``generator_params`` show '–'."""
    rows = []
    capped = capped_arms(arms)
    for a in arms:
        params = a.get("generator_params")
        rows.append(
            [
                arm_label(str(a["name"]), capped),
                a.get("generator") or "–",
                a.get("variant") or "–",
                json.dumps(params, sort_keys=True) if params else "–",
                "yes" if a.get("use_real") else "no",
            ]
        )
    return rows


def _tables(report: Report) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of the arms table, the metric table and the gain tables, shared by md and html."""
    out = [("Arms", ["arm", "generator", "variant", "generator params", "real few"], arm_rows(report.arms))]
    capped = capped_arms(report.arms)
    stats = {(s.model, s.arm, s.metric): s.stat for s in report.summary}
    pairs = list(dict.fromkeys((s.model, s.arm) for s in report.summary))
    metrics = [m for m in TABLE_METRICS if any(s.metric == m for s in report.summary)]
    rows = [[m, arm_label(a, capped), *(_fmt(stats.get((m, a, k))) for k in metrics)] for m, a in pairs]
    out.append(("Metrics (mean ± 95% CI half-width over seeds)", ["model", "arm", *metrics], rows))
    if report.generation_quality:
        out.append(quality_table(report.generation_quality))
    for base in gain_baselines(report.gains):
        g = {(x.model, x.arm, x.metric): x for x in report.gains if x.baseline == base}
        gpairs = list(dict.fromkeys((x.model, x.arm) for x in report.gains if x.baseline == base))
        if not gpairs:
            continue
        grows = []
        for m, a in gpairs:
            cells = []
            for k in metrics:
                x = g.get((m, a, k))
                cells.append("–" if x is None else _fmt(x.stat, signed=True) + (" *" if x.significant else ""))
            grows.append([m, arm_label(a, capped), *cells])
        out.append((f"Gain over '{base}' (paired by seed; * = 95% CI excludes 0)", ["model", "arm", *metrics], grows))
    return out


def _num(v: Any) -> str:
    return "–" if v is None else f"{float(v):.4f}"


def quality_table(gq: dict[str, dict[str, Any]]) -> tuple[str, list[str], list[list[str]]]:
    """(title, header, rows) of the generation-quality table: one row per arm; network figures computed with
    stand-in weights are marked '(meaningless)'."""
    rows = []
    for arm, q in gq.items():
        n = q.get("networks") or {}
        tag = " (meaningless)" if n.get("meaningless") else ""
        cells = [_num(q.get(k)) for k in QUALITY_KEYS[:4]]
        cells += [_num(q.get(k)) + (tag if q.get(k) is not None else "") for k in QUALITY_KEYS[4:]]
        generated = str((q.get("counts") or {}).get("generated", "–"))
        ref = _num(q.get("memorisation_real_reference"))
        rows.append([arm, str(q.get("generator") or q.get("producer")), *cells, ref, generated])
    title = (
        "Generation quality (fidelity: kernel distance of texture features to held-out real defects, lower is "
        "closer; diversity: mean pairwise distance within nearest-training-defect clusters; mask alignment: "
        "share of changed pixels inside the mask; memorisation: distance to the nearest training defect, ~0 = copy; "
        "real ref.: the same distance for the held-out real defects)"
    )
    return title, ["arm", "generator", *QUALITY_KEYS, "memorisation real ref.", "generated"], rows


def render_markdown(report: Report) -> str:
    lines = [f"# anoaug evaluation: {report.dataset} / {report.category}", ""]
    p = report.protocol
    lines += [
        f"Seeds: {report.seeds}. Models: {', '.join(report.models)}. Profile: {report.profile}.",
        f"Train: {p['train_normal']} normal images (+ {p['train_defect_real']} real defects in 'real-few' arms). "
        f"Evaluation: {p['eval_normal']} normal + {p['eval_defect']} held-out real defects. "
        f"Leakage check: {p['leakage_check']}.",
        "",
    ]
    for title, header, rows in _tables(report):
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines.append("")
    lines += ["## Figures", ""]
    lines += [f"### {name}\n\n![{name}]({path})\n" for name, path in report.figures.items()]
    lines += ["## Notes", ""] + [f"- {n}" for n in report.notes] + [""]
    return "\n".join(lines)


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f2f2f2}td:first-child,td:nth-child(2){text-align:left}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
.note{color:#555}
"""


def render_html(report: Report) -> str:
    e = html.escape
    p = report.protocol
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>anoaug evaluation: {e(report.dataset)} / {e(report.category)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>anoaug evaluation: {e(report.dataset)} / {e(report.category)}</h1>",
        f"<p>Seeds {e(str(report.seeds))}; models {e(', '.join(report.models))}; profile {e(report.profile)}. "
        f"Train: {p['train_normal']} normal images (+ {p['train_defect_real']} real defects in 'real-few' arms). "
        f"Evaluation: {p['eval_normal']} normal + {p['eval_defect']} held-out real defects. "
        f"Leakage check: {e(str(p['leakage_check']))}.</p>",
    ]
    for title, header, rows in _tables(report):
        parts.append(f"<h2>{e(title)}</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows]
        parts.append("</table>")
    sections = [
        ("Generation quality", "quality"),
        ("Gains", "gain_"),
        ("Precision-recall curves", "pr_"),
        ("Training pairs and real defects", "samples_"),
        ("Anomaly maps on held-out real defects", "maps_"),
        ("Reconstructions of held-out real defects", "recon_"),
        ("Defect-type confusion matrices", "confusion_"),
    ]
    for title, prefix in sections:
        items = [(k, v) for k, v in report.figures.items() if k.startswith(prefix)]
        if items:
            parts.append(f"<h2>{e(title)}</h2>")
            parts += [
                f'<figure><img src="{e(v)}" alt="{e(k)}"><figcaption>{e(k)}</figcaption></figure>' for k, v in items
            ]
    parts.append("<h2>Notes</h2><ul>" + "".join(f'<li class="note">{e(n)}</li>' for n in report.notes) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def report_json_schema() -> dict[str, Any]:
    """JSON Schema of report.json (from the pydantic models)."""
    return Report.model_json_schema()
