"""dualanodiff: plain-model equivalence at initialisation, shared-attention locality, the part mask,
save/load and the CLI in both modes."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from anoaug.generators import FitData, GenerationRequest, get_generator
from anoaug.generators.base import GeneratorError
from anoaug.generators.diffusion.dualanodiff import branches as br
from anoaug.generators.diffusion.dualanodiff import part_mask as pm
from anoaug.generators.diffusion.dualanodiff import shared_attention as sa
from anoaug.generators.diffusion.dualanodiff.training import DualUNet
from anoaug.generators.diffusion.sd.loading import load_components
from anoaug.generators.diffusion.sd.tiny_stand_in import make_tiny_stable_diffusion

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # shared fixtures: tests/conftest.py (cap, demo_root)


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_stable_diffusion(tmp_path_factory.mktemp("dual-sd") / "model", inpainting=True)


def _inputs(comps, groups: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple]:
    g = torch.Generator().manual_seed(0)
    ch = comps.unet.config.in_channels
    x = torch.randn(2 * groups, ch, 8, 8, generator=g)
    states = torch.randn(2 * groups, 77, comps.text_encoder.config.hidden_size, generator=g)
    bg = (torch.randn(groups, ch, 8, 8, generator=g), torch.tensor(500), states[:groups].clone())
    return x, torch.tensor(500), states, bg


@pytest.mark.parametrize("shared", ["off", "position", "joint"])
def test_fresh_dual_model_is_the_base_model_bit_for_bit(tiny_sd: Path, shared: str) -> None:
    """LoRAs at zero, new output projections at zero and the background gate at 0: both branches (with the
    background pass on) give exactly the base UNet's output; a part-adapter change moves only the part rows."""
    base = load_components(tiny_sd)
    x, t, states, bg = _inputs(base)
    with torch.no_grad():
        expected = base.unet(x, t, encoder_hidden_states=states).sample
    comps = load_components(tiny_sd)
    assert br.add_branch_adapters(comps.unet, 2)
    model = DualUNet(comps, shared, background=True)
    procs = sa.processors(comps.unet)
    assert procs and any(p.fusion is not None for p in procs.values())
    assert all(float(p.fusion.gate.detach()) == 0.0 for p in procs.values() if p.fusion is not None)
    with torch.no_grad():
        got = model(x, t, states, bg)
    assert torch.equal(got, expected)
    # Routing: only the part adapter changes -> only the part rows move (shared attention starts at zero).
    with torch.no_grad():
        for name, p in comps.unet.named_parameters():
            if "lora_B" in name and f".{br.PART}." in name:
                p.normal_(0, 0.5)
        moved = model(x, t, states, bg)
    whole, part = br.split(moved)
    assert torch.equal(whole, br.split(expected)[0]) and not torch.equal(part, br.split(expected)[1])


def test_batched_background_pass_equals_the_separate_pass(tiny_sd: Path) -> None:
    """Background rows in the dual batch's UNet call give what the separate write pass + dual pass gives (trained
    LoRAs, gate, shared attention; 2 guidance copies per background; with attention maps), the background
    matters, and the separate write pass stops after the last fusion layer (conv_out runs once, for the dual pass)."""
    comps = load_components(tiny_sd)
    br.add_branch_adapters(comps.unet, 2)
    model = DualUNet(comps, "position", background=True)
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in comps.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
        for proc in sa.processors(comps.unet).values():
            if proc.fusion is not None:
                proc.fusion.gate.fill_(0.5)
            if proc.shared is not None:
                torch.nn.init.normal_(proc.shared.out.weight, std=0.3)
    x, t, states, bg = _inputs(comps, groups=4)
    bg = (bg[0][:2], t, bg[2][:2])  # 2 requests x 2 guidance copies
    calls = []
    comps.unet.conv_out.register_forward_hook(lambda *_: calls.append(1))
    out, maps = {}, {}
    for mode in ("batched", "separate"):
        model.background_pass = mode
        maps[mode] = []
        with torch.no_grad():
            out[mode] = model(x, t, states, bg, torch.tensor([1, 2] * 4), maps[mode])
        assert len(calls) == 1
        calls.clear()
    assert out["batched"].shape == x[:, :4].shape
    assert torch.allclose(out["batched"], out["separate"], atol=1e-5, rtol=1e-4)
    assert len(maps["batched"]) == len(maps["separate"]) > 0
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(maps["batched"], maps["separate"], strict=True))
    with torch.no_grad():
        plain = model(x, t, states, None)
    assert (plain - out["batched"]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="background_pass"):
        DualUNet(comps, "off", background=True, background_pass="twice")


def _attention() -> torch.nn.Module:
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    return Attention(query_dim=16, heads=2, dim_head=8)


def test_shared_attention_mixes_only_across_the_branch_axis() -> None:
    """position: a change to the part branch at one position changes the whole branch only at that position;
    joint: at other positions too; off: not at all. Other samples never change."""
    torch.manual_seed(1)
    h = torch.randn(4, 6, 16)  # 2 samples x (whole, part), 6 positions
    h2 = h.clone()
    h2[1, 3] += 2.0  # sample 0, part branch, position 3
    for mode in ("position", "joint"):
        layer = sa.SharedAttention(16, 2, mode)
        assert torch.equal(layer(h), h)  # zero-initialised output: the plain model at first
        torch.nn.init.normal_(layer.out.weight)
        with torch.no_grad():
            diff = (layer(h2) - layer(h)).abs().amax(-1)
        assert diff[0, 3] > 0 and torch.all(diff[2:] == 0)
        if mode == "position":
            assert torch.all(diff[0, [0, 1, 2, 4, 5]] == 0)
        else:
            assert torch.all(diff[0, [0, 1, 2, 4, 5]] > 0)
    attn = _attention()
    ctx = sa.DualContext(branches=2)
    off = sa.DualAttnProcessor("p", attn, "off", background=False)
    with torch.no_grad():
        diff = (off(attn, h2, dual=ctx) - off(attn, h, dual=ctx)).abs().amax(-1)
    assert torch.all(diff[0] == 0) and torch.all(diff[2:] == 0) and diff[1].max() > 0


def test_read_part_mask_cleans_and_checks_the_foreground() -> None:
    part = np.zeros((40, 40, 3), np.uint8)
    part[10:20, 12:22] = (90, 60, 30)  # the defect
    part[30, 5] = 200  # a speck: dropped
    mask = pm.read_part_mask(part, 24, min_area=4)
    assert 96 <= mask.sum() <= 100 and mask[11:19, 13:21].all() and not mask[30, 5]  # opening rounds corners
    fg = np.zeros((40, 40), bool)
    fg[:, :17] = True
    assert pm.on_foreground_share(mask, fg) == 0.5
    assert not pm.accept(mask, fg, 4, 0.9) and pm.accept(mask, np.ones_like(fg), 4, 0.9)
    strongest = pm.strongest_pixels(part, fg, 5)
    assert strongest.sum() == 5 and not (strongest & ~fg).any()
    assert pm.iou(mask, mask) == 1.0
    grey = np.full_like(part, 30)  # a VAE that renders black as dark grey: compared with that, not with 0
    assert pm.read_part_mask(np.maximum(part, grey), 24).all()
    assert np.array_equal(pm.read_part_mask(np.maximum(part, grey), 24, 4, reference=grey), mask)


def _request(fd: FitData, seed: int) -> GenerationRequest:
    import cv2

    normal = fd.normal_images(limit=1)[0]
    h, w = normal.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (w // 2, h // 2), (18, 9), 30, 0, 360, 1, -1)
    obj = cv2.cvtColor(normal, cv2.COLOR_RGB2GRAY) > 60
    trimap = np.where(mask > 0, 255, np.where(obj, 127, 0)).astype(np.uint8)
    return GenerationRequest(normal, mask.astype(bool), fd.defect_types[seed % 2], seed, trimap)


def test_part_mask_is_deterministic_and_on_the_foreground(pretrained_sd: Path, cap: FitData, tmp_path: Path) -> None:
    """On the pretrained base: per seed the same part and mask; the mask lies on the object; lineage recorded."""
    params = {
        "model": str(pretrained_sd),
        "resolution": 32,
        "train_steps": 3,
        "lora_rank": 2,
        "num_inference_steps": 4,
        "mode": "whole",
        "max_attempts": 2,
    }
    gen = get_generator("dualanodiff")(params)
    gen.fit(cap, tmp_path / "art", seed=0)
    reqs = [_request(cap, s) for s in range(2)]
    first, again = gen.generate(reqs), gen.generate(reqs)
    for req, a, b in zip(reqs, first, again, strict=True):
        assert np.array_equal(a.mask, b.mask) and np.array_equal(a.extras["part"], b.extras["part"])
        assert a.mask.any() and not (a.mask & ~(req.trimap > 0)).any()
        assert not a.info["fallback"] and a.info["on_foreground"] >= 0.9  # read from the part, not the fallback
        assert a.extras["part"].shape == req.normal.shape and a.image.shape == req.normal.shape
        info = a.info
        assert info["mode"] == "whole" and info["prompt"].startswith("a <cap-object> with <")
        assert info["part_prompt"] == f"<{req.defect_type}>" and 0 <= info["mask_agreement_iou"] <= 1
    assert not np.array_equal(first[0].extras["part"], first[1].extras["part"])


def test_save_load_and_errors(tiny_sd: Path, cap: FitData, tmp_path: Path) -> None:
    params = {
        "model": str(tiny_sd),
        "resolution": 32,
        "train_steps": 2,
        "lora_rank": 2,
        "num_inference_steps": 2,
        "shared_attention": "joint",
    }
    gen = get_generator("dualanodiff")(params)
    art = gen.fit(cap, tmp_path / "art", seed=0)
    assert {"branches.safetensors", "dual_layers.safetensors", "embeddings.safetensors"} <= {
        p.name for p in art.iterdir()
    }
    manifest = json.loads((art / "dual_manifest.json").read_text())
    assert manifest["learned"]["shared_attention"] == "joint" and manifest["object_key"] == "cap-object"
    req = _request(cap, 5)
    (res,) = gen.generate([req])
    (back,) = get_generator("dualanodiff").load(art).generate([req])
    assert np.array_equal(res.image, back.image) and np.array_equal(res.mask, back.mask)
    outside = ~req.mask
    assert np.array_equal(res.image[outside], req.normal[outside])  # blended: exact outside the mask
    with pytest.raises(GeneratorError, match="no learned tokens for defect type 'dent'"):
        gen.generate([GenerationRequest(req.normal, req.mask, "dent", 0, req.trimap)])
    with pytest.raises(GeneratorError, match="needs param 'model'"):
        get_generator("dualanodiff")({})


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["blended", "whole"])
def test_cli_generate_both_modes(pretrained_sd: Path, demo_root: Path, tmp_path: Path, mode: str) -> None:
    """`anoaug generate demo/cap -g dualanodiff --param model=<pretrained>` writes part.png into each sample."""
    from typer.testing import CliRunner

    from anoaug.cli import app
    from anoaug.shards.manifest import verify_generation
    from anoaug.shards.reader import iter_samples

    out = tmp_path / f"dual-{mode}"
    sets = [
        f"model={pretrained_sd}",
        "resolution=32",
        "train_steps=2",
        "lora_rank=2",
        "num_inference_steps=3",
        f"mode={mode}",
    ]
    args = ["generate", str(demo_root), "-c", "cap", "-g", "dualanodiff", "-n", "2", "--out", str(out)]
    res = CliRunner().invoke(app, [*args, *(x for s in sets for x in ("--param", s))])
    assert res.exit_code == 0, res.output
    samples = list(iter_samples(out))
    assert len(samples) == 4 and verify_generation(out) == []  # 2 per defect type
    assert all(s.meta["generator_info"]["mode"] == mode for s in samples)
    from PIL import Image

    parts = {}
    for tar in out.glob("*.tar"):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".part.png"):
                    parts[m.name.split(".")[0]] = np.asarray(Image.open(io.BytesIO(tf.extractfile(m).read())))
    assert set(parts) == {s.key for s in samples}
    assert all(parts[s.key].shape == s.image.shape for s in samples)


def test_ablation_spec_loads_with_valid_variants() -> None:
    from anoaug.generators import check_generator_params
    from anoaug.spec import load_spec

    path = Path(__file__).resolve().parents[1] / "pipelines" / "demo" / "ablations" / "dualanodiff-cap.yaml"
    spec = load_spec(path)
    assert spec.generator.name == "dualanodiff" and spec.uses_base_model("dualanodiff")
    modes = set()
    for v in spec.variants.values():
        settings = check_generator_params(v.generator, v.params, path)
        if v.generator == "dualanodiff":
            modes.add((settings.mode, settings.shared_attention, settings.background_compensation))
    assert {("blended", "off", True), ("blended", "joint", True), ("blended", "position", False)} <= modes
    assert {"crop-paste", "sd-base", "dual-whole"} <= set(spec.evaluation.arms)


def test_token_attention_maps_and_the_attention_mask_source(tiny_sd: Path, cap: FitData, tmp_path: Path) -> None:
    """The captured maps are attention probabilities (they sum to 1 over the prompt's tokens); with
    mask_source part+attention the mask is the part mask cut to the defect token's attention."""
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=8, heads=2, dim_head=8)
    h, ctx = torch.randn(2, 9, 16), torch.randn(2, 5, 8)
    with torch.no_grad():
        total = sum(sa.token_attention(attn, h, ctx, torch.full((2,), i)) for i in range(5))
        grid = sa.average_map([sa.token_attention(attn, h, ctx, torch.tensor([1, 2]))], 6)
    assert torch.allclose(total, torch.ones(2, 9), atol=1e-5) and grid.shape == (2, 6, 6)
    params = {"model": str(tiny_sd), "resolution": 32, "train_steps": 1, "lora_rank": 2, "num_inference_steps": 2,
              "max_attempts": 1}  # fmt: skip
    gen = get_generator("dualanodiff")(params)
    gen.fit(cap, tmp_path / "art", seed=0)
    req = _request(cap, 2)
    (plain,) = gen.generate([req])
    gen.settings.mask_source = "part+attention"
    (cut,) = gen.generate([req])
    assert cut.info["mask_source"] == "part+attention" and cut.info["sample_seed"] == plain.info["sample_seed"]
    assert cut.info["part_mask_area"] <= plain.info["part_mask_area"]


def test_extra_images_get_their_own_shard_member_and_reserved_names_are_refused() -> None:
    from anoaug.shards.writer import encode_sample

    img, mask = np.zeros((4, 4, 3), np.uint8), np.ones((4, 4), bool)
    plain = encode_sample("k", 0, img, mask, {})
    with_part = encode_sample("k", 0, img, mask, {}, {"part": img})
    assert plain.extras_png == {} and set(with_part.extras_png) == {"part.png"}
    assert with_part.image_png == plain.image_png and with_part.mask_png == plain.mask_png
    for bad in ("mask", "a.b"):
        with pytest.raises(ValueError, match="reserved or not a plain name"):
            encode_sample("k", 0, img, mask, {}, {bad: img})


def test_text_encoder_lora_off_on_and_round_trip(tiny_sd: Path, cap: FitData, tmp_path: Path) -> None:
    """text_encoder_lora_rank: 0 adds nothing; an untrained text LoRA (B = 0) gives the same output bit for bit;
    trained, only the adapter (and the learned token rows) of the text encoder change; save/load round trip."""
    params = {"model": str(tiny_sd), "resolution": 32, "train_steps": 2, "lora_rank": 2, "num_inference_steps": 2,
              "max_attempts": 1, "lr": 1e-2}  # fmt: skip
    req = _request(cap, 3)
    off = get_generator("dualanodiff")({**params, "train_steps": 0})
    art_off = off.fit(cap, tmp_path / "off", seed=0)
    assert not any("lora_" in n for n, _ in off._comps.text_encoder.named_parameters())
    assert not (art_off / "text_lora.safetensors").exists()
    fresh = get_generator("dualanodiff")({**params, "train_steps": 0, "text_encoder_lora_rank": 2})
    fresh.fit(cap, tmp_path / "fresh", seed=0)
    assert any("lora_" in n for n, _ in fresh._comps.text_encoder.named_parameters())
    (a,), (b,) = off.generate([req]), fresh.generate([req])
    assert np.array_equal(a.image, b.image) and np.array_equal(a.extras["part"], b.extras["part"])
    fresh_rows = fresh._comps.text_encoder.get_input_embeddings().weight[-len(cap.defect_types) - 1 :].detach().clone()

    base = load_components(tiny_sd).text_encoder.state_dict()
    gen = get_generator("dualanodiff")({**params, "text_encoder_lora_rank": 2})
    art = gen.fit(cap, tmp_path / "on", seed=0)
    trained = {k.replace(".base_layer", ""): v for k, v in gen._comps.text_encoder.state_dict().items()}
    lora = {k: v for k, v in trained.items() if "lora_" in k}
    assert lora and any(v.abs().max() > 0 for k, v in lora.items() if "lora_B" in k)
    grown = [k for k, v in base.items() if trained[k].shape != v.shape]
    assert len(grown) == 1  # the token embedding: learned rows appended
    for k, v in base.items():
        assert torch.equal(trained[k][: v.shape[0]], v), k  # the vocabulary's rows and all other weights stay
    assert not torch.equal(trained[grown[0]][base[grown[0]].shape[0] :], fresh_rows)  # the learned rows moved
    assert json.loads((art / "dual_manifest.json").read_text())["learned"]["text_encoder_lora_rank"] == 2
    back = get_generator("dualanodiff").load(art)
    loaded = {k.replace(".base_layer", ""): v for k, v in back._comps.text_encoder.state_dict().items()}
    assert all(torch.equal(loaded[k], v) for k, v in lora.items())
    (x,), (y,) = gen.generate([req]), back.generate([req])
    assert np.array_equal(x.image, y.image) and np.array_equal(x.mask, y.mask)
