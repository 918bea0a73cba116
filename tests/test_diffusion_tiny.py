"""The shared blended sampler and the `diffusion-tiny` generator (tiny configs, synthetic data, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from anoaug.generators import DefectExample, FitData, GenerationRequest, available_generators, get_generator
from anoaug.generators.base import GeneratorError
from anoaug.generators.compositing import changed_mask, composite, dilate_mask
from anoaug.generators.diffusion.blending import blended_sample, make_scheduler

TINY = {
    "crop": 32,
    "widths": [8, 16],
    "batch": 4,
    "train_steps": 6,
    "max_train_seconds": None,
    "num_inference_steps": 4,
    "max_normals": 4,
    "checkpoint_every_s": 3600,
    "threads": 1,
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: much faster than 2 spin-waiting OpenMP threads on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- synthetic data


def _normal(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    base = np.full((size, size, 3), 150, np.float32) + rng.normal(0, 6, (size, size, 3))
    return np.clip(base, 0, 255).astype(np.uint8)


def _line_mask(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    import cv2

    m = np.zeros((size, size), np.uint8)
    p0 = rng.integers(16, 48, 2)
    p1 = np.clip(p0 + rng.integers(-14, 15, 2), 4, size - 5)
    cv2.line(m, (int(p0[0]), int(p0[1])), (int(p1[0]), int(p1[1])), 1, 3)
    return m.astype(bool)


def _fit_data(tmp_path: Path) -> FitData:
    from PIL import Image

    rng = np.random.default_rng(0)
    defects = []
    for i, t in enumerate(["crack", "crack", "stain"]):
        img, m = _normal(rng), _line_mask(rng)
        img[m] = (30, 30, 30) if t == "crack" else (160, 90, 40)
        defects.append(DefectExample(img, m, t, f"test/{t}/{i}.png"))
    paths = []
    for i in range(3):
        p = tmp_path / f"normal{i}.png"
        Image.fromarray(_normal(rng)).save(p)
        paths.append(p)
    return FitData(category="synthetic", kind="object", defects=defects, normal_paths=paths)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("tiny")
    data = _fit_data(tmp)
    gen = get_generator("diffusion-tiny")(TINY)
    out = gen.fit(data, tmp / "artifact", seed=0)
    return gen, out


def _requests(n: int = 3, seed0: int = 0) -> list[GenerationRequest]:
    rng = np.random.default_rng(42)
    return [
        GenerationRequest(_normal(rng), _line_mask(rng), ["crack", "stain"][i % 2], seed=seed0 + i) for i in range(n)
    ]


# ----------------------------------------------------------------------------- blending


@pytest.mark.parametrize("kind", ["ddim", "dpm++"])
def test_blended_sample_keeps_known_outside_mask(kind: str) -> None:
    sched = make_scheduler(kind, {"num_train_timesteps": 1000, "prediction_type": "v_prediction"})
    known = torch.rand(2, 3, 16, 16) * 2 - 1
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:10, 5:12] = 1
    out = blended_sample(lambda x, t: 0.5 * x, sched, known, mask, 5, torch.Generator().manual_seed(0))
    outside = (mask == 0).expand_as(known)
    assert torch.equal(out[outside], known[outside])
    assert not torch.allclose(out[~outside], known[~outside])


def test_blended_sample_per_item_generators_are_independent_of_the_batch() -> None:
    sched = make_scheduler("ddim", {"num_train_timesteps": 1000})
    known = torch.rand(2, 3, 8, 8)
    mask = torch.ones(2, 1, 8, 8)

    def run(items: list[int]) -> torch.Tensor:
        gens = [torch.Generator().manual_seed(100 + i) for i in items]
        return blended_sample(lambda x, t: 0.1 * x, sched, known[items], mask[items], 3, gens)

    both = run([0, 1])
    assert torch.allclose(both[1], run([1])[0], atol=1e-6)
    assert not torch.allclose(both[0], both[1])


def test_blended_sample_rejects_bad_shapes() -> None:
    sched = make_scheduler("ddim")
    with pytest.raises(ValueError, match="mask"):
        blended_sample(lambda x, t: x, sched, torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), 2)


def test_composite_is_exact_outside_and_changed_mask_stays_inside() -> None:
    rng = np.random.default_rng(0)
    normal = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    generated = 255 - normal
    mask = np.zeros((32, 32), bool)
    mask[8:24, 10:20] = True
    out = composite(normal, generated, mask, feather=3)
    assert np.array_equal(out[~mask], normal[~mask])
    assert np.array_equal(out[16, 15], generated[16, 15])  # deep inside: fully generated
    assert not np.array_equal(out[8, 15], generated[8, 15])  # on the edge: feathered
    final = changed_mask(normal, out, mask, threshold=10, dilate=0)
    assert final.any() and not (final & ~mask).any()
    assert not changed_mask(normal, normal, mask, threshold=0, dilate=2).any()


# ----------------------------------------------------------------------------- the generator


def test_registered() -> None:
    assert "diffusion-tiny" in available_generators()


def test_unknown_param_is_an_error() -> None:
    with pytest.raises(GeneratorError, match="generator diffusion-tiny: unknown key 'steps_typo'"):
        get_generator("diffusion-tiny")({"steps_typo": 3})


def test_outside_mask_is_exactly_the_normal_image(fitted) -> None:
    gen, _ = fitted
    reqs = _requests(4)
    for req, res in zip(reqs, gen.generate(reqs), strict=True):
        assert res.image.shape == req.normal.shape and res.image.dtype == np.uint8
        edit = dilate_mask(req.mask, 1)  # paste_margin: 1 image px around the input mask
        assert np.array_equal(res.image[~edit], req.normal[~edit])
        assert not np.array_equal(res.image[req.mask], req.normal[req.mask])
        assert res.mask.dtype == bool and not (res.mask & ~edit).any()
        assert res.info["final_mask_px"] == int(res.mask.sum())
        json.dumps(res.info)


def test_bf16_setting_resolves_and_is_checked() -> None:
    from anoaug.generators.diffusion.tiny.generator import resolve_bf16

    assert resolve_bf16(True) is True and resolve_bf16(False) is False
    assert resolve_bf16("auto") in (True, False)
    assert resolve_bf16("auto", torch.device("mps")) is False
    assert get_generator("diffusion-tiny")({"bf16": "false"}).settings.bf16 is False
    with pytest.raises(GeneratorError, match="bf16"):
        get_generator("diffusion-tiny")({"bf16": "maybe"})


def test_device_setting_is_resolved_with_anoaug_device(fitted, monkeypatch: pytest.MonkeyPatch) -> None:
    from anoaug.errors import AnoaugError

    gen, _ = fitted
    assert gen.train_summary["device"] == gen.device.type  # trained where the setting (auto) resolved

    assert get_generator("diffusion-tiny")({"device": "cpu"}).device == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert get_generator("diffusion-tiny")().device == torch.device("cpu")  # auto without CUDA
    with pytest.raises(AnoaugError, match="CUDA is not available"):
        _ = get_generator("diffusion-tiny")({"device": "cuda"}).device


def test_deterministic_per_seed(fitted) -> None:
    gen, _ = fitted
    a = gen.generate(_requests(2))
    b = gen.generate(_requests(2))
    c = gen.generate(_requests(2, seed0=7))
    for x, y, z in zip(a, b, c, strict=True):
        assert np.array_equal(x.image, y.image) and np.array_equal(x.mask, y.mask)
        assert not np.array_equal(x.image, z.image)


def test_load_round_trip_and_unknown_type(fitted) -> None:
    gen, out = fitted
    loaded = get_generator("diffusion-tiny").load(out)
    assert loaded.artifact_hash == gen.artifact_hash
    req = _requests(1)
    assert np.array_equal(loaded.generate(req)[0].image, gen.generate(req)[0].image)
    bad = GenerationRequest(req[0].normal, req[0].mask, "dent", seed=0)
    with pytest.raises(GeneratorError, match="dent"):
        loaded.generate([bad])


def test_patched_model_fits_generates_and_reloads(tmp_path: Path) -> None:
    """patch=2 (pixel-unshuffled UNet): same contract, full-resolution output, exact outside the mask."""
    gen = get_generator("diffusion-tiny")({**TINY, "patch": 2})
    out = gen.fit(_fit_data(tmp_path), tmp_path / "artifact", seed=0)
    assert gen.unet.config.in_channels == 28 and gen.unet.config.sample_size == 16
    reqs = _requests(2)
    res = gen.generate(reqs)
    for r, g in zip(reqs, res, strict=True):
        edit = dilate_mask(r.mask, 8)
        assert g.image.shape == r.normal.shape and np.array_equal(g.image[~edit], r.normal[~edit])
    again = get_generator("diffusion-tiny").load(out).generate(reqs)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(res, again, strict=True))


def test_bad_model_path_and_incompatible_weights(fitted, tmp_path: Path) -> None:
    import shutil

    from anoaug.generators.diffusion.tiny.unet import TinyUNetConfig, build_tiny_unet

    _, out = fitted
    cls = get_generator("diffusion-tiny")
    with pytest.raises(GeneratorError, match="not a generator artifact"):
        cls.load(tmp_path / "nowhere")

    art = tmp_path / "copy"
    shutil.copytree(out, art)
    shutil.rmtree(art / "unet")
    with pytest.raises(GeneratorError, match="no UNet"):
        cls.load(art)

    build_tiny_unet(TinyUNetConfig(sample_size=32, widths=(8, 16), n_types=5)).save_pretrained(art / "unet")
    with pytest.raises(GeneratorError, match="incompatible UNet.*class embeddings"):
        cls.load(art)

    # A patch-2 UNet where the artifact's params say patch 1: channel and size mismatch, named.
    build_tiny_unet(TinyUNetConfig(sample_size=32, widths=(8, 16), n_types=2, patch=2)).save_pretrained(art / "unet")
    with pytest.raises(GeneratorError, match=r"incompatible UNet: channels 28->12, expected 7->3"):
        cls.load(art)

    weights = next((art / "unet").glob("*.safetensors"))
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(GeneratorError, match="cannot load UNet weights"):
        cls.load(art)


# ----------------------------------------------------------------------------- training


def _sampler_and_model(seed: int = 0, patch: int = 1):
    from anoaug.generators.diffusion.tiny.training import CropExample, CropSampler
    from anoaug.generators.diffusion.tiny.unet import TinyUNetConfig, build_tiny_unet

    rng = np.random.default_rng(1)
    examples = []
    for _ in range(2):
        img, m = _normal(rng), _line_mask(rng)
        img[m] = 20
        examples.append(CropExample(img, m, 0))
    sampler = CropSampler(examples, [_normal(rng)], crop=32, band=2, seed=seed)
    torch.manual_seed(seed)
    return sampler, build_tiny_unet(TinyUNetConfig(sample_size=32, widths=(8, 16), n_types=1, patch=patch))


def _eval_loss(model, scheduler, batch) -> float:
    from anoaug.generators.diffusion.tiny.training import masked_mse
    from anoaug.generators.diffusion.tiny.unet import denoise, model_input

    g = torch.Generator().manual_seed(123)
    x0, mch = batch["image"], batch["mask"]
    noise = torch.randn(x0.shape, generator=g)
    t = torch.linspace(50, 900, x0.shape[0]).long()
    with torch.no_grad():
        pred = denoise(model, model_input(scheduler.add_noise(x0, noise, t), x0, mch), t, batch["label"])
    weight = torch.where(mch > 0, 1.0, 0.1)
    return float(masked_mse(pred, scheduler.get_velocity(x0, noise, t), weight))


@pytest.mark.parametrize("patch", [1, 2])
def test_training_loss_decreases(patch: int) -> None:
    from anoaug.generators.diffusion.tiny.training import TrainConfig, make_noise_scheduler, train_tiny

    sampler, model = _sampler_and_model(patch=patch)
    sched = make_noise_scheduler()
    held = sampler.batch(8)  # drawn before training: a fixed evaluation batch
    before = _eval_loss(model, sched, held)
    cfg = TrainConfig(train_steps=40, max_train_seconds=None, batch=4, lr=3e-3, warmup_steps=5, ema_decay=0.9)
    model, result = train_tiny(model, sampler, sched, cfg, progress=None, progress_every=10)
    after = _eval_loss(model, sched, held)
    assert result.steps == 40 and result.stopped_by == "steps" and len(result.losses) == 4
    assert after < 0.7 * before, (before, after)


def test_resume_from_checkpoint_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    from anoaug.generators.diffusion.tiny.training import TrainConfig, make_noise_scheduler, train_tiny

    sched = make_noise_scheduler()
    cfg = TrainConfig(train_steps=6, max_train_seconds=None, batch=2, warmup_steps=2)
    sampler, model = _sampler_and_model()
    full, _ = train_tiny(model, sampler, sched, cfg, progress=None)

    ckpt = tmp_path / ".train_state.pt"
    sampler, model = _sampler_and_model()
    cfg3 = TrainConfig(train_steps=3, max_train_seconds=None, batch=2, warmup_steps=2)
    train_tiny(model, sampler, sched, cfg3, checkpoint=ckpt, progress=None)
    assert ckpt.is_file()
    sampler, model = _sampler_and_model()
    resumed, result = train_tiny(model, sampler, sched, cfg, checkpoint=ckpt, progress=None)
    assert result.resumed_from == 3 and result.steps == 6
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name

    other = TrainConfig(train_steps=6, max_train_seconds=None, batch=3)
    sampler, model = _sampler_and_model()
    with pytest.raises(ValueError, match="different training settings"):
        train_tiny(model, sampler, sched, other, checkpoint=ckpt, progress=None)


def test_time_cap_stops_training() -> None:
    from anoaug.generators.diffusion.tiny.training import TrainConfig, make_noise_scheduler, train_tiny

    sampler, model = _sampler_and_model()
    cfg = TrainConfig(train_steps=10_000, max_train_seconds=0.0, batch=2)
    _, result = train_tiny(model, sampler, make_noise_scheduler(), cfg, progress=None)
    assert result.stopped_by == "time" and result.steps == 0



# ----------------------------------------------------------------------------- trimap conditioning


def test_mask_channel_carries_the_trimap() -> None:
    from anoaug.generators.diffusion.tiny.training import mask_channel

    mask = np.zeros((16, 16), bool)
    mask[7:9, 4:12] = True
    obj = np.zeros((16, 16), bool)
    obj[:, :10] = True
    ch = mask_channel(mask, 1, obj)
    assert set(np.unique(ch)) == {0.0, 0.25, 0.5, 1.0}
    assert (ch[mask] == 1).all() and ch[0, 0] == 0.25 and ch[0, 15] == 0.0 and ch[6, 6] == 0.5
    assert set(np.unique(mask_channel(mask, 1))) == {0.0, 0.5, 1.0}  # without a trimap: context is 0


def test_sampler_batches_with_and_without_trimap() -> None:
    from anoaug.generators.diffusion.tiny.training import CropExample, CropSampler

    rng = np.random.default_rng(3)
    img, m = _normal(rng), _line_mask(rng)
    half = np.zeros(m.shape, bool)
    half[:, :32] = True
    ex = [CropExample(img, m, 0, obj=half)]
    with_t = CropSampler(ex, [_normal(rng)], crop=32, band=1, seed=0, normal_objs=[half]).batch(8)["mask"]
    assert {0.0, 0.25}.issubset(set(np.unique(with_t.numpy())))
    without = CropSampler([CropExample(img, m, 0)], [_normal(rng)], crop=32, band=1, seed=0).batch(8)["mask"]
    assert 0.25 not in set(np.unique(without.numpy()))
    with pytest.raises(ValueError, match="object mask for every"):
        CropSampler([CropExample(img, m, 0)], [_normal(rng)], crop=32, band=1, normal_objs=[half])


def test_generation_is_conditioned_on_the_trimap(fitted) -> None:
    """The same request with another trimap (object vs background around the mask) gives another image;
    outside the mask the normal image stays exact either way."""
    gen, _ = fitted
    assert gen.trimap  # the default
    req = _requests(1)[0]
    obj = np.zeros(req.mask.shape, np.uint8)
    obj[:, : req.mask.shape[1] // 2] = 127
    trimap = np.where(req.mask, 255, obj).astype(np.uint8)
    a = gen.generate([req])[0]
    b = gen.generate([GenerationRequest(req.normal, req.mask, req.defect_type, req.seed, trimap=trimap)])[0]
    assert not np.array_equal(a.image, b.image)
    edit = dilate_mask(req.mask, 1)
    assert np.array_equal(b.image[~edit], req.normal[~edit])


def test_artifact_without_trimap_key_loads_unconditioned(fitted, tmp_path: Path) -> None:
    import shutil

    _, out = fitted
    art = tmp_path / "old"
    shutil.copytree(out, art)
    info = json.loads((art / "tiny.json").read_text())
    del info["trimap"]
    (art / "tiny.json").write_text(json.dumps(info))
    assert get_generator("diffusion-tiny").load(art).trimap is False


def test_far_apart_pieces_are_learned_at_native_scale() -> None:
    """Two short scratches 90 px apart: each piece gets a native-scale window, not one shrunken window."""
    import cv2

    from anoaug.generators.diffusion.crops import piece_sides, window_side

    m = np.zeros((128, 128), np.uint8)
    cv2.line(m, (5, 10), (25, 14), 1, 2)
    cv2.line(m, (95, 110), (110, 104), 1, 2)
    pts = np.argwhere(m)
    assert window_side(m.astype(bool), 32) > 32  # the whole mask would not fit a 32 px window
    assert set(piece_sides(m.astype(bool), 32, pts).tolist()) == {32}
    big = np.zeros((128, 128), bool)
    big[10:100, 60:62] = True  # one long piece still grows its window so that it fits
    assert set(piece_sides(big, 32, np.argwhere(big)).tolist()) == {window_side(big, 32)}
