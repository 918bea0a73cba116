"""Matplotlib figures of a run directory (PNG files linked from report.md / report.html)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from anoaug.evaluation.metrics import pr_curve  # noqa: E402
from anoaug.report.schema import Gain  # noqa: E402

GAIN_METRICS = ("image_auroc", "image_ap", "pixel_ap", "pixel_aupro")


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def gain_bars(gains: list[Gain], model: str, baseline: str, path: Path) -> Path | None:
    """Bars of mean gain per arm with 95% CI error bars, one panel per metric."""
    metrics = [m for m in GAIN_METRICS if any(g.metric == m for g in gains)] or sorted({g.metric for g in gains})
    sel = [g for g in gains if g.model == model and g.baseline == baseline and g.metric in metrics]
    if not sel:
        return None
    arms = list(dict.fromkeys(g.arm for g in sel))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        vals = {g.arm: g for g in sel if g.metric == metric}
        means = [vals[a].stat.mean if a in vals and vals[a].stat.mean is not None else 0.0 for a in arms]
        errs = [vals[a].stat.half_width or 0.0 if a in vals else 0.0 for a in arms]
        colors = ["tab:green" if m >= 0 else "tab:red" for m in means]
        ax.bar(range(len(arms)), means, yerr=errs, capsize=4, color=colors, alpha=0.8)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(arms)), arms, rotation=30, ha="right")
        ax.set_title(metric)
    fig.suptitle(f"{model}: gain over '{baseline}' (mean, 95% CI over seeds)")
    fig.tight_layout()
    return _save(fig, path)


def pr_curves(preds: dict[str, list[tuple[np.ndarray, np.ndarray]]], model: str, path: Path) -> Path | None:
    """Image-level PR curves per arm, one thin line per seed."""
    if not preds:
        return None
    fig, ax = plt.subplots(figsize=(4.5, 4))
    for i, (arm, runs) in enumerate(preds.items()):
        color = f"C{i}"
        for j, (scores, labels) in enumerate(runs):
            prec, rec = pr_curve(scores, labels)
            ax.plot(rec, prec, color=color, lw=1, alpha=0.7, label=arm if j == 0 else None)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{model}: image-level PR (held-out real defects)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = image.astype(np.float32).copy()
    out[mask] = 0.5 * out[mask] + 0.5 * np.array([255, 0, 0], np.float32)
    return out.astype(np.uint8)


def sample_grid(
    images: np.ndarray,
    masks: np.ndarray,
    types: np.ndarray,
    title: str,
    path: Path,
    extras: dict[str, np.ndarray] | None = None,
) -> Path | None:
    """Rows of (image, each extra image, mask, overlay); ``extras``: a generator's extra images per sample
    (dualanodiff's ``part``), name -> (N, H, W, 3)."""
    n = min(len(images), 8)
    if n == 0:
        return None
    extras = extras or {}
    cols = 3 + len(extras)
    fig, axes = plt.subplots(n, cols, figsize=(2 * cols, 2 * n), squeeze=False)
    for i in range(n):
        panels = [(images[i], "image"), *((a[i], name) for name, a in extras.items())]
        panels += [(masks[i], "mask"), (_overlay(images[i], masks[i]), "overlay")]
        for ax, (im, name) in zip(axes[i], panels, strict=True):
            ax.imshow(im, cmap="gray" if im.ndim == 2 else None, vmin=0, vmax=1 if im.ndim == 2 else None)
            ax.set_axis_off()
            if i == 0:
                ax.set_title(name, fontsize=9)
        axes[i][0].text(2, 10, str(types[i]), color="yellow", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def map_overlays(
    images: np.ndarray,
    maps: np.ndarray,
    masks: np.ndarray,
    types: np.ndarray,
    title: str,
    path: Path,
    recons: np.ndarray | None = None,
) -> Path | None:
    """Held-out defects, one per column: the image with its ground-truth contour, then the anomaly map over
    the image; with `recons` (detectors that reconstruct) the reconstruction, then the map alone, rows named."""
    n = min(len(images), 6)
    if n == 0:
        return None
    rows = 2 if recons is None else 3
    fig, axes = plt.subplots(rows, n, figsize=(2 * n, 4.2 if recons is None else 6.3), squeeze=False)
    vmax = float(np.nanmax(maps[:n])) if maps.size else 1.0
    vmin = float(np.nanmin(maps[:n])) if maps.size else 0.0
    for i in range(n):
        axes[0][i].imshow(images[i])
        axes[0][i].contour(masks[i], levels=[0.5], colors="red", linewidths=0.8)
        axes[0][i].set_title(str(types[i]), fontsize=8)
        if recons is None:
            axes[1][i].imshow(images[i])
            axes[1][i].imshow(maps[i].astype(np.float32), cmap="jet", alpha=0.5, vmin=vmin, vmax=vmax)
        else:
            axes[1][i].imshow(recons[i])
            axes[2][i].imshow(maps[i].astype(np.float32), cmap="jet", vmin=vmin, vmax=vmax)
        axes[rows - 1][i].contour(masks[i], levels=[0.5], colors="white", linewidths=0.6)
        for ax in axes[:, i]:
            ax.set_axis_off()
    if recons is not None:
        for row, name in enumerate(("input", "reconstruction", "anomaly map")):
            axes[row][0].text(-0.08, 0.5, name, rotation=90, transform=axes[row][0].transAxes, ha="right", va="center")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def confusion(cm: np.ndarray, classes: list[str], title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2, 1.2 * len(classes) + 1.5))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(int(v)), ha="center", va="center")
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (held-out real)")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


QUALITY_FIGURES = (
    ("fidelity_mmd", "fidelity distance (lower: closer to real)"),
    ("diversity", "diversity (higher: more varied)"),
    ("mask_alignment", "mask alignment (1: changes inside mask)"),
    ("memorisation", "memorisation distance (~0: copies)"),
)


def quality_bars(quality: dict[str, dict], path: Path) -> Path | None:
    """Bars of the weight-free generation-quality figures, one panel per figure, one bar per arm."""
    arms = [a for a, q in quality.items() if any(q.get(k) is not None for k, _ in QUALITY_FIGURES)]
    if not arms:
        return None
    fig, axes = plt.subplots(1, len(QUALITY_FIGURES), figsize=(3.2 * len(QUALITY_FIGURES), 3.2), squeeze=False)
    for ax, (key, title) in zip(axes[0], QUALITY_FIGURES, strict=True):
        vals = [quality[a].get(key) for a in arms]
        ax.bar(range(len(arms)), [v if v is not None else 0.0 for v in vals], color=[f"C{i}" for i in range(len(arms))])
        for i, v in enumerate(vals):
            if v is None:
                ax.text(i, 0, "n/a", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(arms)), arms, rotation=30, ha="right")
        ax.set_title(title, fontsize=9)
    fig.suptitle("generation quality per arm (weight-free figures)")
    fig.tight_layout()
    return _save(fig, path)
