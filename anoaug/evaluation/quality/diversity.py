"""Diversity in IC-LPIPS' shape: cluster the generated defects by their nearest generator-training defect,
average the pairwise distance within each cluster, then over clusters.

IC-LPIPS (as the defect-generation papers compute it) uses LPIPS for both steps; `cluster_diversity`
takes any distance, so the weight-free figure uses the mean absolute pixel difference of the padded defect
crops and `networks.ic_lpips` passes LPIPS. At most ``cap`` members per cluster enter the pairs (default
50, as the papers' script does; members chosen at random from the run seed); clusters with fewer than two
members are skipped. One image repeated scores 0.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Distance = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (A, ...) x (B, ...) -> (A, B)


def l1_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise mean absolute difference of uint8 crops, in [0, 1]: (A, B)."""
    x = a.reshape(len(a), -1).astype(np.float32) / 255.0
    y = b.reshape(len(b), -1).astype(np.float32) / 255.0
    return np.stack([np.abs(x - row).mean(1) for row in y], axis=1) if len(y) else np.zeros((len(x), 0))


def cluster_diversity(
    items: np.ndarray, assignment: np.ndarray, distance: Distance, rng: np.random.Generator, cap: int = 50
) -> tuple[float | None, dict[str, int]]:
    """(mean over clusters of the mean pairwise distance inside each, {cluster: members used})."""
    per_cluster, used = [], {}
    for c in np.unique(assignment):
        idx = np.flatnonzero(assignment == c)
        if len(idx) > cap:
            idx = np.sort(rng.choice(idx, cap, replace=False))
        if len(idx) < 2:
            continue
        d = distance(items[idx], items[idx])
        iu = np.triu_indices(len(idx), 1)
        per_cluster.append(float(np.mean(d[iu])))
        used[str(int(c))] = len(idx)
    return (float(np.mean(per_cluster)) if per_cluster else None), used
