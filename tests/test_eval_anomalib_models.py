"""anomalib models run offline: one-class baselines with random init, SuperSimpleNet fed our defect pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anoaug.errors import SpecError
from anoaug.evaluation import run_evaluation
from anoaug.evaluation.detectors import FitContext, get_detector
from anoaug.evaluation.detectors.supersimplenet.lightning_model import build_supersimplenet
from anoaug.evaluation.protocol import Sample
from anoaug.spec import EvaluationSection, spec_for_root


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
    det = get_detector(name)()
    assert det.uses_defects is False and det.build(pre_trained=False).learning_type.value == "one_class"
    test = _samples(6, 32, 1)
    cfg = EvaluationSection(image_size=32, batch_size=4, pre_trained=False)
    det.fit(_samples(8, 32, 0), FitContext(cfg, ["sq"]), seed=0)  # defects in the train set are ignored
    pred = det.predict(test)
    assert pred.scores.shape == (6,) and pred.maps.shape == (6, 32, 32)
    assert np.isfinite(pred.scores).all() and np.isfinite(pred.maps).all()
    assert pred.info == {"implementation": f"anomalib {name}", "pre_trained": False}


def test_supersimplenet_takes_a_backbone_module() -> None:
    model, used = build_supersimplenet(supervised=True, pre_trained=False)
    assert model.supervised and used is False


@pytest.mark.slow
def test_supersimplenet_supervised_trains_on_pairs() -> None:
    torch.set_num_threads(1)
    train, test = _samples(8, 128, 0), _samples(4, 128, 1)
    det = get_detector("supersimplenet")()
    det.fit(train, FitContext(EvaluationSection(image_size=128, epochs=1, batch_size=4), ["sq"]), seed=0)
    pred = det.predict(test)
    assert pred.scores.shape == (4,) and pred.maps.shape == (4, 128, 128)
    assert pred.info == {"implementation": "anomalib supersimplenet (supervised=True)", "pretrained_used": False}
    assert np.isfinite(pred.maps).all()


def test_supersimplenet_size_guard(make_mvtec, tmp_path) -> None:  # noqa: ANN001
    from anoaug.data.formats import read_category
    from anoaug.data.split import make_split

    root = make_mvtec(tmp_path / "mvtec", defects={"dent": 3})
    data = read_category(root, "widget")
    spec = spec_for_root(root, "widget", evaluation={"image_size": 64, "models": ["supersimplenet"]})
    with pytest.raises(SpecError, match="image_size"):
        run_evaluation(spec, data, make_split(data, 0), {"none": None}, tmp_path / "run")
