"""anomalib models run offline: one-class baselines with random init, SuperSimpleNet fed our defect pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anoaug.errors import AnoaugError
from anoaug.evaluation import run_evaluation
from anoaug.evaluation.baselines import build_one_class, fit_predict_one_class
from anoaug.evaluation.protocol import Sample
from anoaug.evaluation.supervised_anomalib import build_supersimplenet, fit_predict_supersimplenet
from anoaug.spec import spec_for_root


def _samples(n: int, size: int, seed: int) -> list[Sample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = rng.integers(40, 90, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), bool)
        if i % 2:
            y, x = rng.integers(2, size - size // 4, 2)
            mask[y : y + size // 6, x : x + size // 6] = True
            img[mask] = 230
        out.append(Sample(f"{seed}-{i}", img, mask, "sq" if i % 2 else "good", "real"))
    return out


@pytest.mark.parametrize("name", ["padim", "patchcore"])
def test_one_class_random_init(name: str) -> None:
    torch.set_num_threads(1)
    model = build_one_class(name, pre_trained=False, params={})
    assert model.learning_type.value == "one_class"
    normals = [s for s in _samples(8, 32, 0) if not s.label]
    test = _samples(6, 32, 1)
    scores, maps = fit_predict_one_class(name, normals, test, False, 4, {})
    assert scores.shape == (6,) and maps.shape == (6, 32, 32)
    assert np.isfinite(scores).all() and np.isfinite(maps).all()


def test_supersimplenet_takes_a_backbone_module() -> None:
    model, used = build_supersimplenet(supervised=True, pre_trained=False, params={})
    assert model.supervised and used is False


@pytest.mark.slow
def test_supersimplenet_supervised_trains_on_pairs() -> None:
    torch.set_num_threads(1)
    train, test = _samples(8, 128, 0), _samples(4, 128, 1)
    scores, maps, used = fit_predict_supersimplenet(train, test, 1, 4, 0, False, {})
    assert scores.shape == (4,) and maps.shape == (4, 128, 128) and not used
    assert np.isfinite(maps).all()


def test_supersimplenet_size_guard(make_mvtec, tmp_path) -> None:  # noqa: ANN001
    from anoaug.data.formats import read_category
    from anoaug.data.split import make_split

    root = make_mvtec(tmp_path / "mvtec", defects={"dent": 3})
    data = read_category(root, "widget")
    spec = spec_for_root(root, "widget", evaluation={"image_size": 64, "models": ["supersimplenet"]})
    with pytest.raises(AnoaugError, match="image_size"):
        run_evaluation(spec, data, make_split(data, 0), {"none": None}, tmp_path / "run")
