"""`anoaug pretrain`: a small Stable Diffusion learned from normal training images (pretrained_sd in conftest)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")

import torch  # noqa: E402

from anoaug.data.formats import read_category  # noqa: E402
from anoaug.data.io import load_image  # noqa: E402
from anoaug.data.split import make_split  # noqa: E402
from anoaug.errors import SpecError  # noqa: E402
from anoaug.generators.diffusion.pretrain import (  # noqa: E402
    PretrainError,
    PretrainSettings,
    pretrain_base,
    read_card,
)
from anoaug.generators.diffusion.pretrain.text import build_tokenizer, reserved_words, vocabulary  # noqa: E402
from anoaug.registry import validate_settings  # noqa: E402
from tests.conftest import run_cli, write_tiny_mvtec  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
WEIGHTS = ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
           "text_encoder/model.safetensors")  # fmt: skip
# A few steps of a very small model: enough for bytes, resume and loading checks (not for quality).
QUICK = {"vae_steps": 5, "unet_steps": 5, "vae_batch_size": 2, "unet_batch_size": 2, "eval_crops": 2}


@pytest.fixture(scope="module")
def tiny_sources(tmp_path_factory: pytest.TempPathFactory) -> list:
    """One small MVTec-layout category (8 train normals of 40 px) with its split."""
    root = write_tiny_mvtec(tmp_path_factory.mktemp("tiny") / "mvtec", n_train=8, defects={"scratch": 3}, size=40)
    data = read_category(root, "widget")
    return [(data, make_split(data, seed=0))]


def _held_out_crops(folder: Path, demo_root: Path, res: int) -> np.ndarray:
    """Centre crops of the normal training images the model did not train on (from its card)."""
    card = read_card(folder)
    trained = {(i["category"], i["relpath"]) for i in card["trained_images"]}
    crops = []
    for cat in card["categories"]:
        for p in sorted((demo_root / cat / "train" / "good").glob("*.png")):
            rel = p.relative_to(demo_root).as_posix()
            if (cat, rel) not in trained:
                im = load_image(p)
                c = (im.shape[0] - res) // 2
                crops.append(im[c : c + res, c : c + res])
    assert len(crops) == sum(card["images_held_out"].values()) > 0
    return np.stack(crops)


def _to_tensor(crops: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(crops.astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.clamp(-1, 1) - b) * 127.5).pow(2).mean()
    return float(10 * torch.log10(255.0**2 / mse))


# -- the model ------------------------------------------------------------------------------------------


def test_folder_layout_and_model_card(pretrained_sd: Path, demo_root: Path) -> None:
    for part in ("model_index.json", "scheduler", "tokenizer/vocab.json", "tokenizer/merges.txt", *WEIGHTS):
        assert (pretrained_sd / part).exists(), part
    card = read_card(pretrained_sd)
    s = PretrainSettings.minimal()
    assert card["categories"] == ["cap", "fabric"] and card["unet_kind"] == "inpainting"
    assert card["steps"] == {"vae": s.vae_steps, "unet": s.unet_steps}
    assert card["stopped_by"] == {"vae": "steps", "unet": "steps"}
    assert card["resolution"] == 32 and card["vae_scale_factor"] == 4
    assert sum(card["images_used"].values()) == len(card["trained_images"]) == 2 * 36 - 8
    assert card["images_held_out"] == {"cap": 4, "fabric": 4}
    assert all("/train/good/" in i["relpath"] for i in card["trained_images"])  # never an evaluation image
    assert len(card["losses"]["vae"]) == s.vae_steps and card["seconds"]["total"] > 0
    assert card["scaling_factor"] > 0 and np.isfinite(card["vae_psnr_db"])
    assert card["vae_weights"] == f"EMA, decay {s.vae_ema_decay}"  # the exported VAE is its weights' EMA


def test_vae_reconstructs_held_out_normals_much_better_than_a_random_vae(pretrained_sd: Path, demo_root: Path) -> None:
    from diffusers import AutoencoderKL

    trained = AutoencoderKL.from_pretrained(str(pretrained_sd / "vae")).eval()
    torch.manual_seed(0)
    random = AutoencoderKL.from_config(trained.config).eval()
    x = _to_tensor(_held_out_crops(pretrained_sd, demo_root, 32))
    with torch.no_grad():
        psnr = [_psnr(v.decode(v.encode(x).latent_dist.mode()).sample, x) for v in (trained, random)]
    assert psnr[0] > psnr[1] + 6, psnr
    card = read_card(pretrained_sd)
    assert card["vae_psnr_db"] > card["vae_psnr_init_db"] + 6


def test_unet_denoising_loss_on_held_out_normals_is_below_its_initial_loss(
    pretrained_sd: Path, demo_root: Path
) -> None:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from anoaug.generators.diffusion.pretrain.settings import PretrainSettings
    from anoaug.generators.diffusion.pretrain.unet import build_unet

    card = read_card(pretrained_sd)
    assert card["unet_heldout_loss"]["final"] < card["unet_heldout_loss"]["init"]
    # Independently of the trainer: the saved UNet against the same architecture freshly initialised.
    vae = AutoencoderKL.from_pretrained(str(pretrained_sd / "vae")).eval()
    unet = UNet2DConditionModel.from_pretrained(str(pretrained_sd / "unet")).eval()
    s = PretrainSettings.minimal()
    torch.manual_seed(s.seed)
    fresh = build_unet("inpainting", s.unet_channels, 1, 4, s.text_width, s.attention_head_dim, 8).eval()
    tok = CLIPTokenizer.from_pretrained(str(pretrained_sd / "tokenizer"))
    te = CLIPTextModel.from_pretrained(str(pretrained_sd / "text_encoder")).eval()
    sched = DDPMScheduler.from_pretrained(str(pretrained_sd / "scheduler"))
    x = _to_tensor(_held_out_crops(pretrained_sd, demo_root, 32))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        lat = vae.encode(x).latent_dist.mode() * vae.config.scaling_factor
        masked = vae.encode(x * 0).latent_dist.mode() * vae.config.scaling_factor  # a full mask: nothing known
        ids = tok(["a photo of a cap"] * len(x), padding="max_length", max_length=77, return_tensors="pt").input_ids
        states = te(ids)[0]
        losses = {"trained": 0.0, "fresh": 0.0}
        for _ in range(4):
            noise = torch.randn(lat.shape, generator=g)
            t = torch.randint(100, 900, (len(x),), generator=g)
            inp = torch.cat([sched.add_noise(lat, noise, t), torch.ones_like(lat[:, :1]), masked], 1)
            for name, net in (("trained", unet), ("fresh", fresh)):
                losses[name] += float((net(inp, t, encoder_hidden_states=states).sample - noise).pow(2).mean())
    assert losses["trained"] < 0.8 * losses["fresh"], losses


def test_both_diffusers_pipelines_load_it_and_return_images(pretrained_sd: Path, tiny_sources, tmp_path) -> None:
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline
    from PIL import Image

    pipe = StableDiffusionInpaintPipeline.from_pretrained(str(pretrained_sd), local_files_only=True)
    image = Image.fromarray(np.full((32, 32, 3), 120, np.uint8))
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 8:20] = 255
    kw = {"height": 32, "width": 32, "num_inference_steps": 3, "output_type": "np"}
    for m in (mask, np.full((32, 32), 255, np.uint8)):  # inpaint a square; generate from scratch (full mask)
        out = pipe("a photo of a cap", image=image, mask_image=Image.fromarray(m), generator=torch.manual_seed(0), **kw)
        assert out.images.shape == (1, 32, 32, 3) and np.isfinite(out.images).all()
    assert StableDiffusionPipeline.from_pretrained(str(pretrained_sd)).unet.config.in_channels == 9

    # The text-to-image kind is what StableDiffusionPipeline runs.
    folder = pretrain_base(
        PretrainSettings.minimal(unet_kind="text-to-image", **QUICK), tiny_sources, tmp_path / "t2i", None
    )
    t2i = StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    assert t2i.unet.config.in_channels == 4
    out = t2i("a photo of a widget", generator=torch.manual_seed(0), **kw)
    assert out.images.shape == (1, 32, 32, 3) and np.isfinite(out.images).all()


def test_diffusion_sd_learns_and_generates_on_the_pretrained_model(
    pretrained_sd: Path, demo_root: Path, tmp_path: Path
) -> None:
    from anoaug.data.io import load_mask
    from anoaug.generators import DefectExample, FitData, GenerationRequest, get_generator
    from anoaug.generators.diffusion.sd.loading import load_components

    comps = load_components(pretrained_sd)
    assert comps.inpainting and comps.vae_scale_factor == 4
    img = load_image(demo_root / "cap" / "test" / "scratch" / "000.png")
    mask = load_mask(demo_root / "cap" / "ground_truth" / "scratch" / "000_mask.png")
    example = DefectExample(image=img, mask=mask, defect_type="scratch", relpath="cap/test/scratch/000.png")
    data = FitData(category="cap", kind="object", defects=[example], normal_paths=[])
    params = {"model": str(pretrained_sd), "resolution": 32, "train_steps": 2, "lora_rank": 2,
              "num_inference_steps": 3}  # fmt: skip
    gen = get_generator("diffusion-sd")(params)
    gen.fit(data, tmp_path / "art", seed=0)
    normal = load_image(demo_root / "cap" / "train" / "good" / "000.png")
    (res,) = gen.generate([GenerationRequest(normal=normal, mask=mask, defect_type="scratch", seed=0)])
    assert res.image.shape == normal.shape
    assert np.array_equal(res.image[~mask], normal[~mask])


def test_tokenizer_keeps_prompt_category_type_and_reserved_words_whole(tmp_path: Path) -> None:
    words = vocabulary(["metal_nut", "cap"], ["scratch", "color_change"], reserved=4)
    assert {"photo", "metal", "nut", "cap", "scratch", "color", "change", "defect"} <= set(words)
    assert reserved_words(3) == ["zqa", "zqb", "zqc"] and "zqd" in words
    tok = build_tokenizer(tmp_path / "tok", words)
    for w in words:
        assert len(tok(w, add_special_tokens=False).input_ids) == 1, w
    assert len(tok("a photo of a metal nut", add_special_tokens=False).input_ids) == 6
    assert len(tok("xyzzy!", add_special_tokens=False).input_ids) > 1  # unknown text: bytes, not an error


# -- determinism, resume, errors --------------------------------------------------------------------------


class _Killed(Exception):
    pass


def _kill_at(phase: str, step: int):
    def progress(p) -> None:
        if p.phase == phase and p.step == step:
            raise _Killed

    return progress


def test_same_seed_same_bytes_and_a_killed_run_resumes_to_the_same_bytes(tiny_sources, tmp_path: Path) -> None:
    s = PretrainSettings.minimal(checkpoint_every_steps=2, **QUICK)
    a = pretrain_base(s, tiny_sources, tmp_path / "a", None)
    b = pretrain_base(s, tiny_sources, tmp_path / "b", None)
    # Killed twice (after VAE step 3 and after UNet step 3: checkpoints at step 2), resumed each time.
    c = tmp_path / "c"
    with pytest.raises(_Killed):
        pretrain_base(s, tiny_sources, c, _kill_at("vae", 3))
    with pytest.raises(_Killed):
        pretrain_base(s, tiny_sources, c, _kill_at("unet", 3))
    assert not (c / "model_card.json").exists()
    pretrain_base(s, tiny_sources, c, None)
    assert read_card(c)["resumed_from"] == {"vae": 5, "unet": 2}
    other = pretrain_base(s.model_copy(update={"seed": 1}), tiny_sources, tmp_path / "d", None)
    for w in WEIGHTS:
        assert (a / w).read_bytes() == (b / w).read_bytes() == (c / w).read_bytes(), w
        assert (a / w).read_bytes() != (other / w).read_bytes(), w
    assert read_card(a)["losses"] == read_card(c)["losses"]

    # A finished run called again changes nothing; raising the step limit continues it.
    again = pretrain_base(s, tiny_sources, a, None)
    assert all((again / w).read_bytes() == (b / w).read_bytes() for w in WEIGHTS)
    more = pretrain_base(s.model_copy(update={"unet_steps": 7}), tiny_sources, a, None)
    assert read_card(more)["steps"] == {"vae": 5, "unet": 7}


def test_time_cap_stops_training_and_progress_reports_each_step(tiny_sources, tmp_path: Path) -> None:
    s = PretrainSettings.minimal(**{**QUICK, "vae_steps": 10**6, "unet_steps": 10**6, "max_train_seconds": 1.0})
    reports = []
    card = read_card(pretrain_base(s, tiny_sources, tmp_path / "m", reports.append))
    assert card["stopped_by"] == {"vae": "time", "unet": "time"}
    assert 0 < card["steps"]["vae"] < 10**6 and card["steps"]["unet"] < 10**6
    vae = [r for r in reports if r.phase == "vae"]
    assert [r.step for r in vae] == list(range(1, card["steps"]["vae"] + 1))
    assert all(r.total == 10**6 and 0 <= r.eta_s <= s.max_train_seconds and np.isfinite(r.loss) for r in reports)
    training = card["training"]  # planned vs done steps of both phases
    assert training["stopped_by"] == "time" and training["planned_steps"] == 2 * 10**6
    assert training["steps"] == card["steps"]["vae"] + card["steps"]["unet"] and training["max_train_seconds"] == 1.0


def test_random_masks_mix_full_and_partial_masks() -> None:
    from anoaug.generators.diffusion.pretrain.unet import random_masks

    masks = random_masks(200, 32, np.random.default_rng(0), full_prob=0.3)
    full = masks.all(axis=(1, 2))
    assert masks.shape == (200, 32, 32) and masks.dtype == bool
    assert 0.2 < full.mean() < 0.4 and masks.any(axis=(1, 2)).all()
    assert 0.05 < masks[~full].mean() < 0.6  # partial masks leave context to inpaint from
    assert np.array_equal(masks, random_masks(200, 32, np.random.default_rng(0), full_prob=0.3))


def test_vae_l2_term_adds_the_squared_error_and_vae_zoom_prob_overrides_zoom_prob() -> None:
    from anoaug.generators.diffusion.pretrain.vae import build_vae, vae_loss

    torch.manual_seed(0)
    vae = build_vae((8, 8), 1, 4, 16)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    plain, p0 = vae_loss(vae, x, torch.Generator().manual_seed(0), 0.0, 0.0)
    with_l2, p3 = vae_loss(vae, x, torch.Generator().manual_seed(0), 0.0, 0.0, l2_weight=3.0)
    assert "l2" not in p0 and p3["l2"] > 0 and p3["l1"] == pytest.approx(p0["l1"])
    assert float(with_l2 - plain) == pytest.approx(3.0 * p3["l2"], rel=1e-4)
    assert PretrainSettings(zoom_prob=0.3, vae_zoom_prob=None).vae_zoom == 0.3
    assert PretrainSettings(zoom_prob=0.3, vae_zoom_prob=0.1).vae_zoom == 0.1


def test_changed_settings_leak_and_bad_output_are_clear_errors(tiny_sources, tmp_path: Path) -> None:
    from anoaug.evaluation.protocol import LeakageError

    s = PretrainSettings.minimal(**QUICK)
    out = pretrain_base(s, tiny_sources, tmp_path / "m", None)
    with pytest.raises(PretrainError, match="different settings: vae_lr 0.002 -> 0.001"):
        pretrain_base(s.model_copy(update={"vae_lr": 1e-3}), tiny_sources, out, None)
    pretrain_base(s.model_copy(update={"vae_lr": 1e-3}), tiny_sources, out, None, overwrite=True)

    data, _ = tiny_sources[0]
    with pytest.raises(PretrainError, match="inside the input dataset"):
        pretrain_base(s, tiny_sources, data.root / "model", None)

    # An evaluation image copied into train/good under another name: the leak guard refuses to train.
    root = write_tiny_mvtec(tmp_path / "leaky", n_train=4, defects={"scratch": 3})
    shutil.copy(root / "widget" / "test" / "good" / "000.png", root / "widget" / "train" / "good" / "copy.png")
    leaky = read_category(root, "widget")
    with pytest.raises(LeakageError, match="copy.png"):
        pretrain_base(s, [(leaky, make_split(leaky, 0))], tmp_path / "leak", None)

    with pytest.raises(SpecError, match="resolution 36 must be a multiple of 16"):
        validate_settings(PretrainSettings, {"resolution": 36}, "pretrain")
    with pytest.raises(SpecError, match=r"unet_channels \[24, 64\] must all be multiples of 12"):
        validate_settings(PretrainSettings, {"unet_channels": [24, 64]}, "pretrain")
    with pytest.raises(SpecError, match="unknown key 'vae_step'"):
        validate_settings(PretrainSettings, {"vae_step": 3}, "pretrain")


def test_cli_pretrain_trains_resumes_and_reports(tmp_path: Path) -> None:
    root = write_tiny_mvtec(tmp_path / "mvtec", n_train=6, defects={"scratch": 3}, size=40)
    out = tmp_path / "model"
    sets = {**PretrainSettings.minimal(**QUICK).model_dump(mode="json"), "resolution": 32}
    params = [x for k, v in sets.items() if k not in ("max_train_seconds", "seed", "max_image_side")
              for x in ("--param", f"{k}={v}")]  # fmt: skip
    args = ["pretrain", str(root), "--out", str(out), "--max-train-seconds", "600", "--seed", "3", *params]
    code, text = run_cli(args)
    assert code == 0, text
    assert "VAE PSNR" in text and "widget 5 normal image(s)" in text
    card = json.loads((out / "model_card.json").read_text())
    assert card["settings"]["seed"] == 3 and card["settings"]["max_train_seconds"] == 600
    assert card["training"]["stopped_by"] == "steps" and "warning" not in text
    code, text = run_cli(args)  # again: resumes the finished run, same model
    assert code == 0 and "resumed from VAE step 5, UNet step 5" in text

    code, text = run_cli(["pretrain", str(root), "--out", str(tmp_path / "m2"), "--param", "vae_step=3"])
    assert code == 2 and "unknown key 'vae_step'" in text
    code, text = run_cli(["pretrain", str(root), "-c", "nope", "--out", str(tmp_path / "m3")])
    assert code == 2 and "nope" in text


def test_a_process_killed_with_sigkill_resumes_to_the_same_bytes(tiny_sources, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    data, _ = tiny_sources[0]
    s = PretrainSettings.minimal(**{**QUICK, "vae_steps": 40, "unet_steps": 10, "checkpoint_every_steps": 1})
    killed = tmp_path / "killed"
    script = (
        "import sys, torch; torch.set_num_threads(1)\n"
        "from pathlib import Path\n"
        "from anoaug.data.formats import read_category\n"
        "from anoaug.data.split import make_split\n"
        "from anoaug.generators.diffusion.pretrain import PretrainSettings, pretrain_base\n"
        "data = read_category(Path(sys.argv[1]), 'widget')\n"
        "s = PretrainSettings.model_validate_json(sys.argv[2])\n"
        "pretrain_base(s, [(data, make_split(data, seed=0))], Path(sys.argv[3]), None)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-c", script, str(data.root), s.model_dump_json(), str(killed)]
    proc = subprocess.Popen(args, env=env, cwd=Path(__file__).resolve().parents[1])
    try:
        while not (killed / ".pretrain" / "state.pt").exists() and proc.poll() is None:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (killed / "model_card.json").exists()
    resumed = pretrain_base(s, tiny_sources, killed, None)
    assert read_card(resumed)["resumed_from"]["vae"] >= 1
    straight = pretrain_base(s, tiny_sources, tmp_path / "straight", None)
    for w in WEIGHTS:
        assert (resumed / w).read_bytes() == (straight / w).read_bytes(), w


def test_collect_normals_holds_out_per_category_and_can_shrink_images(tiny_sources) -> None:
    from anoaug.generators.diffusion.pretrain.data import collect_normals

    normals = collect_normals(tiny_sources, holdout_fraction=0.25, seed=0, max_image_side=20)
    assert normals.counts("train") == {"widget": 6} and normals.counts("held_out") == {"widget": 2}
    assert {im.image.shape for im in normals.train + normals.held_out} == {(20, 20, 3)}
    assert all("/train/good/" in im.relpath for im in normals.train + normals.held_out)
    again = collect_normals(tiny_sources, holdout_fraction=0.25, seed=0)
    assert again.fingerprint() == normals.fingerprint()  # same images and roles
    assert collect_normals(tiny_sources, holdout_fraction=0.25, seed=1).fingerprint() != normals.fingerprint()
