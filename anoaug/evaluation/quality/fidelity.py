"""Fidelity without a pretrained network: a kernel two-sample distance of texture features, generated vs real.

The distance is KID's (the unbiased squared maximum mean discrepancy with the polynomial kernel
``(x.y / d + 1)^3``, torchmetrics' ``poly_mmd``), averaged over random equal-size subsets as KID does, on
`features.texture_features` standardised with the real crops' statistics. 0 means the two sets are
indistinguishable to these features (the unbiased estimate can be slightly negative); noise scores high.
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.image.kid import poly_mmd

# Features are shares, moments and magnitudes of order 0.01-1: one that barely varies over the few real
# defects (an LBP code never seen) is measured in units of at least this, so it cannot dominate the kernel.
STD_FLOOR = 0.05


def standardise(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``x`` in units of the reference set's per-feature mean and standard deviation."""
    mean = reference.mean(0)
    std = np.maximum(reference.std(0), STD_FLOOR)
    return (x - mean) / std


def subset_mmd(real: np.ndarray, generated: np.ndarray, subsets: int, rng: np.random.Generator) -> float | None:
    """Mean unbiased polynomial-kernel MMD^2 over ``subsets`` random pairs of equal-size subsets (size: the
    smaller set); None with fewer than two samples on a side."""
    m = min(len(real), len(generated))
    if m < 2:
        return None
    r, g = torch.as_tensor(real, dtype=torch.float64), torch.as_tensor(generated, dtype=torch.float64)
    values = []
    for _ in range(subsets):
        i = torch.as_tensor(rng.permutation(len(real))[:m])
        j = torch.as_tensor(rng.permutation(len(generated))[:m])
        values.append(float(poly_mmd(r[i], g[j])))
    return float(np.mean(values))


def fidelity_distance(
    real_features: np.ndarray,
    generated_features: np.ndarray,
    rng: np.random.Generator,
    subsets: int = 20,
    reference: np.ndarray | None = None,
) -> float | None:
    """The fidelity figure: `subset_mmd` of the features standardised by ``reference`` (default: the real set)."""
    ref = real_features if reference is None else reference
    if len(ref) == 0:
        return None
    return subset_mmd(standardise(real_features, ref), standardise(generated_features, ref), subsets, rng)
