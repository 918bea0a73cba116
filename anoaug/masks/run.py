"""The ``anoaug masks`` stage: N masks of a category, with trimaps, a manifest, a summary, a contact sheet.

Output directory layout::

    split-seed<S>.parquet          the split manifest used (never written into the dataset)
    masks/<type>/<i>.png           0/255 defect masks (i zero-padded to 5 digits)
    trimaps/<type>/<i>.png         255 defect, 127 foreground, 0 background
    masks.parquet                  one row per mask: its normal image and every placement parameter
    summary.json                   acceptance rate, rejections, real vs synthesized areas, foregrounds,
                                   the kind and its evidence, the normal images excluded from placement
    contact_sheet.png              real bank masks and synthesized masks over their normal images, then
                                   each normal image's foreground outline (red: excluded, with the reason)

Normal images whose foreground is empty or implausible (``MaskSynthesizer.image_flags``) take no masks:
they are listed under ``bad_images`` with their reason; more than ``masks.max_bad_share`` of them is an error.

Sample ``i`` draws everything (defect type in turn, normal image, placement) from its own generator
seeded with (seed, category, i), so the same seed gives the same files whatever else changes.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from anoaug.atomic import atomic_path
from anoaug.data.io import load_image
from anoaug.data.records import CategoryData
from anoaug.data.split import SplitManifest, ensure_split
from anoaug.masks import MaskError
from anoaug.masks.sources import make_synthesizer
from anoaug.masks.synthesis import BankMask, MaskBank, SynthesizedMask, resolve_kind_report
from anoaug.png import write_png
from anoaug.spec import PipelineSpec

TILE = 128
SHEET_COLS = 8


def sample_rng(seed: int, category: str, index: int) -> np.random.Generator:
    """The generator of sample ``index`` (crc32: stable across processes, unlike hash())."""
    return np.random.default_rng(
        np.random.SeedSequence([int(seed), zlib.crc32(category.encode()), int(index)])
    )


def area_stats(areas: list[int] | np.ndarray) -> dict[str, float]:
    """n, min, p5, median, mean, p95, max of a list of pixel areas (empty -> n=0 only)."""
    a = np.asarray(areas, dtype=np.float64)
    if a.size == 0:
        return {"n": 0}
    q = np.percentile(a, [5, 50, 95])
    return {
        "n": int(a.size),
        "min": float(a.min()),
        "p5": float(q[0]),
        "median": float(q[1]),
        "mean": float(a.mean()),
        "p95": float(q[2]),
        "max": float(a.max()),
    }


def _atomic_bytes(path: Path, write: Any) -> None:
    """Write via a temp file in the same folder, then os.replace (no half-written outputs)."""
    with atomic_path(path) as tmp:
        write(tmp)


# --- contact sheet ------------------------------------------------------------------------------


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    cv2.putText(tile, text, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 2, cv2.LINE_AA)
    cv2.putText(tile, text, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def overlay_tile(normal: np.ndarray, result: SynthesizedMask, text: str) -> np.ndarray:
    """RGB tile: background dimmed, foreground outlined in green, the defect in red."""
    fg = result.trimap > 0
    img = normal.astype(np.float32)
    img[~fg] *= 0.45
    img[result.mask] = 0.35 * img[result.mask] + 0.65 * np.array([255.0, 0.0, 0.0])
    img = np.clip(img, 0, 255).astype(np.uint8)
    contours, _ = cv2.findContours(fg.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(img, contours, -1, (0, 220, 0), max(1, img.shape[0] // 200))
    return _label(cv2.resize(img, (TILE, TILE), interpolation=cv2.INTER_AREA), text)


def foreground_tile(normal: np.ndarray, fg: np.ndarray, text: str, bad: bool) -> np.ndarray:
    """RGB tile of a normal image with its foreground outlined (green; red when excluded from placement)."""
    img = normal.copy()
    contours, _ = cv2.findContours(fg.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(img, contours, -1, (230, 0, 0) if bad else (0, 220, 0), max(1, img.shape[0] // 100))
    return _label(cv2.resize(img, (TILE, TILE), interpolation=cv2.INTER_AREA), text)


def bank_tile(entry: BankMask, text: str) -> np.ndarray:
    """RGB tile of a real bank mask, centred at its source resolution scaled to the tile."""
    H, W = entry.source_shape
    f = TILE / max(H, W)
    h, w = entry.crop.shape
    hh, ww = max(1, round(h * f)), max(1, round(w * f))
    small = cv2.resize(entry.crop.astype(np.uint8) * 255, (ww, hh), interpolation=cv2.INTER_AREA)
    tile = np.full((TILE, TILE, 3), 40, np.uint8)
    y, x = (TILE - hh) // 2, (TILE - ww) // 2
    tile[y : y + hh, x : x + ww] = np.maximum(tile[y : y + hh, x : x + ww], small[..., None])
    return _label(tile, text)


def contact_sheet(rows: list[list[np.ndarray]], cols: int = SHEET_COLS) -> np.ndarray:
    """Stack rows of tiles (each at most ``cols`` long) into one RGB image with 2-px gutters."""
    blank = np.full((TILE, TILE, 3), 20, np.uint8)
    lines = []
    for row in rows:
        row = row + [blank] * (cols - len(row))
        lines.append(np.concatenate([np.pad(t, ((2, 0), (2, 0), (0, 0))) for t in row], axis=1))
    return np.concatenate(lines, axis=0) if lines else blank


# --- the stage ----------------------------------------------------------------------------------


@dataclass
class MasksRun:
    """What a run produced (the summary is also written to summary.json)."""

    out: Path
    kind: str
    kind_reason: str
    written: int
    failures: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)


def run_masks(
    spec: PipelineSpec,
    count: int,
    out: str | Path,
    seed: int | None = None,
    kind: str | None = None,
    data_root: str | Path | None = None,
    sheet_per_type: int = 16,
    data: CategoryData | None = None,
    split: SplitManifest | None = None,
) -> MasksRun:
    """Synthesize ``count`` masks for the spec's category into ``out`` (see the module docstring).

    ``data`` / ``split`` reuse a category and split a pipeline already has; otherwise the category is
    read and its split written to ``out/split-seed<S>.parquet`` (or reused when it is there and matches).
    """
    from anoaug.data.formats import read_category  # import here: format readers are optional at import time

    if count < 1:
        raise MaskError(f"--count must be >= 1, got {count}")
    root = data.root if data is not None else spec.resolve_root(data_root)
    out = Path(out)
    if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
        raise MaskError("refusing to write inside the input dataset; choose another --out", out)
    seed = spec.seed if seed is None else int(seed)
    category = spec.dataset.category
    if data is None:
        data = read_category(root, category, spec.dataset.format)
    out.mkdir(parents=True, exist_ok=True)
    split_path = out / f"split-seed{seed}.parquet"
    if split is None:
        split, _ = ensure_split(
            data,
            seed,
            split_path,
            fraction=spec.split.gen_train_fraction,
            min_gen_train=spec.split.min_gen_train,
        )
    kind_name, reason, evidence = resolve_kind_report(kind or spec.dataset.kind, data)
    synth = make_synthesizer(data, split, spec.masks, kind_name, seed)
    bank = synth.source
    types = synth.defect_types
    normals = split.rows("train_normal")

    # Every normal's foreground first: images that cannot take masks are left out of the plan.
    fg_reports: list[dict[str, Any]] = []
    fg_tiles: list[tuple[bool, np.ndarray]] = []
    for normal_row in normals:
        image = load_image(data.path(normal_row["relpath"]))
        fg = synth.foreground(image, normal_row["sha256"])
        flags = synth.image_flags(image, normal_row["sha256"])
        fg_reports.append({"relpath": normal_row["relpath"], "fraction": float(fg.mean()), "flags": flags})
        if len(fg_tiles) < 4 * SHEET_COLS:
            label = ("excluded: " + ",".join(flags)) if flags else f"fg {fg.mean():.0%}"
            fg_tiles.append((bool(flags), foreground_tile(image, fg, label, bool(flags))))
    bad_images = [
        {"relpath": f["relpath"], "reason": ", ".join(f["flags"]), "fraction": f["fraction"]}
        for f in fg_reports
        if f["flags"]
    ]
    usable = [n for n, f in enumerate(fg_reports) if not f["flags"]]
    if normals and len(bad_images) > spec.masks.max_bad_share * len(normals) or not usable:
        names = "; ".join(f"{b['relpath']} ({b['reason']})" for b in bad_images[:10])
        more = f" and {len(bad_images) - 10} more" if len(bad_images) > 10 else ""
        raise MaskError(
            f"{len(bad_images)}/{len(normals)} normal images of {category} have an unusable foreground "
            f"(more than masks.max_bad_share={spec.masks.max_bad_share:g}): {names}{more}; "
            "check masks.foreground (method) or dataset.kind"
        )

    # Plan every sample first (type in turn, usable normal from its own rng), then visit each normal once.
    plan: dict[int, list[tuple[int, str, np.random.Generator]]] = defaultdict(list)
    for i in range(count):
        rng = sample_rng(seed, category, i)
        plan[usable[int(rng.integers(len(usable)))]].append((i, types[i % len(types)], rng))

    rows: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    tiles: dict[str, list[tuple[int, np.ndarray]]] = defaultdict(list)
    for n, normal_row in enumerate(normals):
        if n not in plan:
            continue
        image = load_image(data.path(normal_row["relpath"]))
        for i, dtype, rng in plan[n]:
            try:
                res = synth.synthesize(image, dtype, rng, normal_key=normal_row["sha256"])
            except MaskError as exc:
                failures.append(
                    {"index": i, "defect_type": dtype, "normal": normal_row["relpath"], "error": str(exc)}
                )
                continue
            mask_rel = Path("masks") / dtype / f"{i:05d}.png"
            tri_rel = Path("trimaps") / dtype / f"{i:05d}.png"
            write_png(out / mask_rel, res.mask)
            write_png(out / tri_rel, res.trimap)
            p = dict(res.params)
            p["rejections"] = json.dumps(p["rejections"], sort_keys=True)
            rows.append(
                {
                    "index": i,
                    "defect_type": dtype,
                    "normal_relpath": normal_row["relpath"],
                    "normal_sha256": normal_row["sha256"],
                    "mask_path": mask_rel.as_posix(),
                    "trimap_path": tri_rel.as_posix(),
                    **p,
                }
            )
            if len(tiles[dtype]) < sheet_per_type:
                tiles[dtype].append((i, overlay_tile(image, res, f"{dtype} #{i}")))
    if not rows:
        first = failures[0]["error"] if failures else "nothing was synthesized"
        raise MaskError(f"no mask could be synthesized for {category}: {first}")
    rows.sort(key=lambda r: r["index"])
    table = pa.Table.from_pylist(rows)
    table = table.replace_schema_metadata({b"anoaug.kind": b"masks", b"anoaug.seed": str(seed).encode()})
    _atomic_bytes(out / "masks.parquet", lambda tmp: pq.write_table(table, tmp, compression="zstd"))

    summary = summarize(rows, failures, bank, fg_reports, kind_name, reason)
    summary.update(
        {
            "dataset": data.dataset,
            "category": category,
            "seed": seed,
            "count_requested": count,
            "split_manifest": split_path.name if split_path.is_file() else None,
            "placement": synth.placement,
            "spec": spec.masks.model_dump(mode="json"),
            "kind_evidence": evidence,
            "kind_confidence": evidence["confidence"] if evidence else 1.0,
            "bad_images": bad_images,
            "max_bad_share": spec.masks.max_bad_share,
        }
    )
    if hasattr(bank, "report"):  # learned masks: the artifact, training and sampling acceptance
        summary["learned"] = bank.report()
    text = json.dumps(summary, indent=2, sort_keys=True)
    _atomic_bytes(out / "summary.json", lambda tmp: Path(tmp).write_text(text + "\n"))

    sheet_rows: list[list[np.ndarray]] = []
    real_bank = bank if isinstance(bank, MaskBank) else getattr(bank, "real", None)  # learned: .real
    for dtype in types:
        real = real_bank.candidates(dtype)[:SHEET_COLS] if isinstance(real_bank, MaskBank) else []
        if real:
            sheet_rows.append([bank_tile(e, f"real {dtype}") for e in real])
        if real_bank is not bank and bank.candidates(dtype):  # learned masks as sampled, before placement
            sheet_rows.append([bank_tile(e, f"learned {dtype}") for e in bank.candidates(dtype)[:SHEET_COLS]])
        synth_tiles = [t for _, t in sorted(tiles[dtype], key=lambda x: x[0])]
        for k in range(0, len(synth_tiles), SHEET_COLS):
            sheet_rows.append(synth_tiles[k : k + SHEET_COLS])
    fg_order = [t for bad, t in fg_tiles if bad] + [t for bad, t in fg_tiles if not bad]  # excluded first
    for k in range(0, min(len(fg_order), 2 * SHEET_COLS), SHEET_COLS):
        sheet_rows.append(fg_order[k : k + SHEET_COLS])
    sheet = contact_sheet(sheet_rows)
    write_png(out / "contact_sheet.png", sheet)
    return MasksRun(out, kind_name, reason, len(rows), failures, summary)


def summarize(
    rows: list[dict[str, Any]],
    failures: list[dict[str, Any]],
    bank: Any,
    fg_reports: list[dict[str, Any]],
    kind: str,
    kind_reason: str,
) -> dict[str, Any]:
    """Acceptance rate, rejections, area distributions (real / bank / synthesized) and foreground report."""
    per_type: dict[str, Any] = {}
    total_attempts = total_accepted = 0
    all_rej: Counter[str] = Counter()
    for dtype in sorted({r["defect_type"] for r in rows} | {f["defect_type"] for f in failures}):
        mine = [r for r in rows if r["defect_type"] == dtype]
        failed = [f for f in failures if f["defect_type"] == dtype]
        rej: Counter[str] = Counter()
        for r in mine:
            rej.update(json.loads(r["rejections"]))
        attempts = sum(r["attempts"] for r in mine)
        # Failed samples used their whole budget; the message does not carry it, count them as rejections.
        rej["failed_samples"] += len(failed)
        total_attempts += attempts
        total_accepted += len(mine)
        all_rej.update(rej)
        cands = bank.candidates(dtype) if hasattr(bank, "candidates") else []
        per_type[dtype] = {
            "synthesized": len(mine),
            "failed": len(failed),
            "attempts": attempts,
            "acceptance_rate": len(mine) / attempts if attempts else 0.0,
            "rejections": dict(sorted(rej.items())),
            "bank_masks": len(cands),
            "area_real": area_stats(getattr(bank, "real_areas", {}).get(dtype, [])),
            "area_bank": area_stats([c.area for c in cands]),
            "area_synth": area_stats([r["area"] for r in mine]),
            "area_ratio_synth_over_source": area_stats([r["area"] / r["source_area"] for r in mine]),
        }
    fracs = [f["fraction"] for f in fg_reports]
    flagged = [f for f in fg_reports if f["flags"]]
    return {
        "kind": kind,
        "kind_reason": kind_reason,
        "count_written": len(rows),
        "count_failed": len(failures),
        "acceptance_rate": total_accepted / total_attempts if total_attempts else 0.0,
        "attempts": total_attempts,
        "rejections": dict(sorted(all_rej.items())),
        "per_type": per_type,
        "failures": failures[:50],
        "bank_skipped": list(getattr(bank, "skipped", [])),
        "foreground": {
            "fraction": {k: v for k, v in area_stats(fracs).items()},
            "flagged": flagged,
            "images": fg_reports,
        },
    }
