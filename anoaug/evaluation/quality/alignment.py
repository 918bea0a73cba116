"""Mask alignment: the share of the pixels a generator changed (vs the source normal) that lie inside the
pair's mask. A generator that only paints inside the mask scores 1.0; changes outside it (a label that
misses part of the defect) lower it.

The shards store the pair's mask (what a detector is trained against) and the source normal's path
(lineage ``source_normal``), so the changed pixels are measured against the untouched normal.
"""

from __future__ import annotations

import numpy as np

from anoaug.generators.compositing import changed_mask


def changed_inside(normal: np.ndarray, generated: np.ndarray, mask: np.ndarray, threshold: float) -> float | None:
    """Share of changed pixels (any channel differs by more than ``threshold``) inside ``mask``; None when
    nothing changed or the images differ in size."""
    if normal.shape != generated.shape:
        return None
    changed = changed_mask(normal, generated, np.ones(mask.shape, bool), threshold, 0)
    n = int(changed.sum())
    return float((changed & mask.astype(bool)).sum() / n) if n else None


def mask_alignment(shares: list[float | None]) -> float | None:
    """The alignment figure: mean share over the samples where something changed."""
    vals = [s for s in shares if s is not None]
    return float(np.mean(vals)) if vals else None
