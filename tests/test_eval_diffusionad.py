"""DiffusionAD as a downstream detector: norm-guided one-step denoising, anomaly sources, contract, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from pydantic import ValidationError

from anoaug.data.formats import read_category
from anoaug.data.split import make_split
from anoaug.errors import SpecError
from anoaug.evaluation import run_evaluation
from anoaug.evaluation.detectors import FitContext, check_evaluation, get_detector
from anoaug.evaluation.detectors.diffusionad import DiffusionADSettings
from anoaug.evaluation.detectors.diffusionad.torch_model import (
    SMALL,
    DiffusionADModel,
    PerlinAugmenter,
    Sizes,
    authors_sizes,
    shuffled_tiles,
    top_k,
)
from anoaug.evaluation.protocol import Sample
from anoaug.report import write_report
from anoaug.spec import EvaluationSection, load_spec, spec_for_root
from tests.conftest import run_cli
from tests.test_eval_draem import _paste

SIZE = 64


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _gradient(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Normal images: one smooth colour gradient plus a little noise, in [0, 1]."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    base = torch.stack([0.3 + 0.4 * xx, 0.3 + 0.4 * yy, 0.5 * torch.ones_like(xx)])
    return (base[None] + 0.02 * torch.randn(n, 3, size, size, generator=gen)).clamp(0, 1)


def test_condition_w_zero_is_the_plain_x0_prediction_and_w_guides() -> None:
    torch.manual_seed(0)
    model = DiffusionADModel(32, Sizes(8, (1, 2), 1, (), 4, 4)).eval()
    x0 = torch.rand(2, 3, 32, 32) * 2 - 1
    t_lo, t_hi = torch.tensor([200, 50]), torch.tensor([400, 900])
    n_lo, n_hi = torch.randn_like(x0), torch.randn_like(x0)
    abar = model.scheduler.alphas_cumprod
    with torch.no_grad():
        x_lo = abar[t_lo].sqrt().view(-1, 1, 1, 1) * x0 + (1 - abar[t_lo]).sqrt().view(-1, 1, 1, 1) * n_lo
        eps_lo = model.unet(x_lo, t_lo).sample
        plain = ((x_lo - (1 - abar[t_lo]).sqrt().view(-1, 1, 1, 1) * eps_lo) / abar[t_lo].sqrt().view(-1, 1, 1, 1))
        recon0, _, _ = model.one_step(x0, t_lo, t_hi, n_lo, n_hi, condition_w=0.0)
        recon1, _, eps_hi = model.one_step(x0, t_lo, t_hi, n_lo, n_hi, condition_w=1.0)
    torch.testing.assert_close(recon0, plain.clamp(-1, 1), atol=1e-5, rtol=1e-4)
    # w = 1: eps_hat = eps_lo - sqrt(1 - abar_lo) (x_hat_lo - x_lo), x_hat_lo = the noisier x0 re-noised with eps_lo
    a_lo, a_hi = abar[t_lo].view(-1, 1, 1, 1), abar[t_hi].view(-1, 1, 1, 1)
    x_hi = a_hi.sqrt() * x0 + (1 - a_hi).sqrt() * n_hi
    x0_hi = ((x_hi - (1 - a_hi).sqrt() * eps_hi) / a_hi.sqrt()).clamp(-1, 1)
    x_hat_lo = a_lo.sqrt() * x0_hi + (1 - a_lo).sqrt() * eps_lo
    eps_hat = eps_lo - (1 - a_lo).sqrt() * (x_hat_lo - x_lo)
    guided = ((x_lo - (1 - a_lo).sqrt() * eps_hat) / a_lo.sqrt()).clamp(-1, 1)
    torch.testing.assert_close(recon1, guided, atol=1e-5, rtol=1e-4)
    assert (recon1 - recon0).abs().max() > 1e-3


def test_a_briefly_trained_model_reconstructs_normal_pixels_better_than_defects() -> None:
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = DiffusionADModel(32, Sizes(16, (1, 2), 1, (), 8, 4))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):
        loss, _ = model.training_loss(_gradient(4, 32, gen), torch.zeros(4, 1, 32, 32))
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    model.noise_generator = torch.Generator().manual_seed(1)
    x = _gradient(4, 32, gen)
    mask = torch.zeros(4, 1, 32, 32, dtype=torch.bool)
    mask[..., 10:20, 8:22] = True
    x = torch.where(mask, torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1), x)  # a red defect
    err = ((model.reconstruct(x) + 1) / 2 - x).abs().mean(1, keepdim=True)
    on_defect, on_normal = float(err[mask].mean()), float(err[~mask].mean())
    assert on_defect > 1.5 * on_normal, (on_defect, on_normal)


def test_sizes_top_k_and_settings() -> None:
    assert top_k(256) == 50 and top_k(128) == 12 and top_k(64) == 3
    assert authors_sizes(256).base_channels == 128 and authors_sizes(256).channel_mults == (1, 1, 2, 2, 4, 4)
    assert len(authors_sizes(64).channel_mults) == 4 and SMALL.base_channels < 128
    det = get_detector("diffusionad")()
    assert det.sizes(256, "gpu") == authors_sizes(256) and det.sizes(64, "cpu-tiny") == SMALL
    assert get_detector("diffusionad")(DiffusionADSettings(size="authors")).sizes(64, "cpu-tiny").base_channels == 128
    with pytest.raises(ValidationError, match="eval_timesteps"):
        DiffusionADSettings(eval_timesteps=(400, 200))
    with pytest.raises(ValidationError, match="less_t_range"):
        DiffusionADSettings(less_t_range=1000)
    assert get_detector("diffusionad").check(EvaluationSection(image_size=48))


def test_spec_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    spec = {"dataset": {"name": "mvtec", "root": str(tmp_path), "category": "widget"}}
    spec["evaluation"] = {"models": ["diffusionad"], "params": {"diffusionad": {"condition_W": 1}}}
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError, match="condition_W"):
        check_evaluation(load_spec(path))


def test_own_anomalies_stay_inside_the_object_and_tiles_are_the_image_shuffled() -> None:
    rng = np.random.default_rng(0)
    img = np.full((SIZE, SIZE, 3), 20, np.uint8)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    disk = (yy - 32) ** 2 + (xx - 32) ** 2 < 18**2
    img[disk] = (200, 180, 90)
    img = (img + rng.integers(0, 6, img.shape)).astype(np.uint8)
    tiles = shuffled_tiles(img, rng)

    def cut(a: np.ndarray) -> list[bytes]:
        return sorted(map(bytes, a.reshape(8, 8, 8, 8, 3).transpose(0, 2, 1, 3, 4).reshape(64, -1)))

    assert cut(tiles) == cut(img) and not np.array_equal(tiles, img)
    torch.manual_seed(0)
    aug = PerlinAugmenter(kind="object", probability=1.0)
    batch = torch.from_numpy(np.stack([img] * 6)).permute(0, 3, 1, 2).float() / 255
    out, masks = aug(batch)
    assert masks.flatten(1).any(1).sum() >= 4
    near_disk = (yy - 32) ** 2 + (xx - 32) ** 2 < 21**2  # the extracted foreground, up to its cleaning
    assert not masks[:, 0, ~near_disk].any()
    assert torch.equal(out * (1 - masks), batch * (1 - masks))  # only masked pixels change
    assert (out - batch).abs()[masks.expand_as(out).bool()].mean() > 0.02
    anywhere = PerlinAugmenter(kind="texture", probability=1.0)
    torch.manual_seed(0)
    _, free = anywhere(batch)
    assert free[:, 0, ~near_disk].any()


def _samples(n_normal: int, n_defect: int, seed: int = 0) -> list[Sample]:
    gen = torch.Generator().manual_seed(seed)
    imgs = (_gradient(n_normal + n_defect, SIZE, gen).permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    out = []
    for i, img in enumerate(imgs):
        mask = np.zeros((SIZE, SIZE), bool)
        if i >= n_normal:
            mask[20 + i : 30 + i, 12:30] = True
            img[mask] = (255, 0, 0)
        out.append(Sample(f"s{i}", img, mask, "dent" if mask.any() else "good", "real"))
    return out


def test_detector_contract_shapes_and_determinism_per_seed() -> None:
    cfg = EvaluationSection(image_size=SIZE, epochs=1, batch_size=4)
    train, evals = _samples(6, 2), _samples(2, 2, seed=1)
    settings = DiffusionADSettings(steps_per_epoch=2)
    cls = get_detector("diffusionad")
    assert cls.task == "ad" and cls.needs_defects == "one-class" and cls.uses_defects

    def run(seed: int):  # noqa: ANN202
        det = cls(settings)
        det.fit(train, FitContext(cfg, ["dent"]), seed)
        return det.predict(evals)

    a, b, c = run(0), run(0), run(1)
    assert a.scores.shape == (4,) and a.maps.shape == (4, SIZE, SIZE)
    assert a.arrays["reconstructions"].shape == (4, SIZE, SIZE, 3) and a.arrays["reconstructions"].dtype == np.uint8
    assert np.isfinite(a.scores).all() and ((a.maps >= 0) & (a.maps <= 1)).all()
    np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(a.maps, b.maps)
    assert not np.array_equal(a.scores, c.scores)
    assert a.info["anomaly_source"] == "pairs (real, 2)" and a.info["top_k"] == 3


@pytest.fixture
def widget(make_mvtec, tmp_path: Path):  # noqa: ANN001, ANN201
    root = make_mvtec(tmp_path / "mvtec", n_train=4, n_test_good=3, defects={"scratch": 4, "dent": 3}, size=SIZE)
    data = read_category(root, "widget")
    return data, make_split(data, seed=0)


def test_trains_on_an_arms_shards_and_the_report_draws_reconstructions(widget, tmp_path: Path) -> None:  # noqa: ANN001
    from tests.test_eval_protocol import write_shards

    data, split = widget
    pairs = [(p.image, p.mask, p.defect_type) for p in _paste(data, split)]
    shards = write_shards(tmp_path / "shards", pairs, "widget")
    evaluation = {"image_size": SIZE, "epochs": 1, "batch_size": 4, "models": ["diffusionad"]}
    evaluation["params"] = {"diffusionad": {"steps_per_epoch": 1}}
    spec = spec_for_root(data.root, "widget", evaluation=evaluation)
    run = run_evaluation(spec, data, split, {"none": None, "paste": shards}, tmp_path / "run", seeds=[0])
    n_eval = len(split.rows(("eval_normal", "eval_defect")))
    for arm, source in (("none", "perlin ("), ("paste", f"pairs (synthetic, {len(pairs)})")):
        metrics = json.loads((run / "runs" / "diffusionad" / arm / "seed0" / "metrics.json").read_text())
        assert metrics["anomaly_source"].startswith(source) and "image_auroc" in metrics["metrics"]
        with np.load(run / "runs" / "diffusionad" / arm / "seed0" / "predictions.npz") as z:
            assert z["reconstructions"].shape == (n_eval, SIZE, SIZE, 3) and z["maps"].shape == (n_eval, SIZE, SIZE)
    assert "DiffusionAD" in json.loads((run / "run.json").read_text())["none_arm"]
    html = write_report(run)["html"].read_text()
    assert "recon_diffusionad_paste" in html and (run / "figures" / "recon_diffusionad_paste.png").is_file()


@pytest.mark.slow
def test_cli_evaluates_demo_cap_with_segmenter_and_diffusionad(demo_root: Path, tmp_path: Path) -> None:
    shards = tmp_path / "shards" / "crop-paste"
    code, out = run_cli(["generate", "demo/cap", "--data-root", str(demo_root), "--out", str(shards),
                         "-g", "crop-paste", "-n", "3"])  # fmt: skip
    assert code == 0, out
    spec = {"dataset": {"name": "demo", "format": "mvtec", "root": str(demo_root), "category": "cap"},
            "evaluation": {"image_size": 64, "batch_size": 8, "steps_per_epoch": 2, "widths": [8, 16],
                           "params": {"diffusionad": {"steps_per_epoch": 2}}}}  # fmt: skip
    spec_path = tmp_path / "cap.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    run = tmp_path / "run"
    code, out = run_cli(["evaluate", str(spec_path), "--models", "segmenter,diffusionad",
                         "--arms", "none,real-few,crop-paste", "--shards", f"crop-paste={shards}",
                         "--seeds", "0", "--epochs", "1", "--out", str(run)])  # fmt: skip
    assert code == 0, out
    csv = (run / "results.csv").read_text()
    for arm in ("none", "real-few", "crop-paste"):
        assert f",diffusionad,{arm},0," in csv and f",segmenter,{arm},0," in csv
    assert (run / "figures" / "recon_diffusionad_crop-paste.png").is_file()
