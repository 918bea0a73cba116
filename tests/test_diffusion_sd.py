"""`diffusion-sd` on tiny stand-in Stable Diffusion weights: real loading, training and sampling code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("peft")

import torch  # noqa: E402

from anoaug.generators import FitData, get_generator  # noqa: E402
from anoaug.generators.base import GeneratorError  # noqa: E402
from anoaug.generators.diffusion.sd import lora as lora_mod  # noqa: E402
from anoaug.generators.diffusion.sd import textual_inversion as ti  # noqa: E402
from anoaug.generators.diffusion.sd.loading import load_components  # noqa: E402
from anoaug.generators.diffusion.sd.tiny_stand_in import make_tiny_stable_diffusion  # noqa: E402
from anoaug.generators.diffusion.sd.training import SDTrainer, TrainSettings, resolve_dtype  # noqa: E402
from tests.conftest import WIDGET_SIZE, widget_requests  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
SIZE, RES = WIDGET_SIZE, 32
CPU = torch.device("cpu")


BASE_PARAMS = {
    "resolution": RES,
    "train_steps": 4,
    "lora_rank": 2,
    "spatial_tokens": 2,
    "num_inference_steps": 4,
    "guidance_scale": 3.0,
}


@pytest.fixture(scope="module")
def fitted(tiny_sd: Path, fit_data: FitData, tmp_path_factory: pytest.TempPathFactory):
    gen = get_generator("diffusion-sd")({"model": str(tiny_sd), **BASE_PARAMS})
    out = gen.fit(fit_data, tmp_path_factory.mktemp("sd-artifact") / "art", seed=0)
    return gen, out


# -- loading -------------------------------------------------------------------------------------------


def test_tiny_stand_in_loads_with_our_loader_and_the_pipeline(tiny_sd: Path) -> None:
    from diffusers import StableDiffusionPipeline

    comps = load_components(tiny_sd)
    assert not comps.inpainting
    assert comps.vae_scale_factor == 4
    assert comps.unet.config.cross_attention_dim == comps.text_encoder.config.hidden_size
    assert set(comps.identity["components"]) >= {"unet", "vae", "text_encoder", "tokenizer"}
    ids = comps.tokenizer("a photo of the widget with scratch defect").input_ids
    assert ids[0] == comps.tokenizer.bos_token_id and ids[-1] == comps.tokenizer.eos_token_id
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd), local_files_only=True)
    assert pipe.unet.config.in_channels == 4


def test_inpainting_stand_in_is_detected_and_generates(tmp_path: Path, fit_data: FitData) -> None:
    folder = make_tiny_stable_diffusion(tmp_path / "inpaint", inpainting=True)
    comps = load_components(folder)
    assert comps.inpainting and comps.unet.config.in_channels == 9
    params = {**BASE_PARAMS, "model": str(folder), "train_steps": 2, "scheduler": "dpm++", "inpainting": True}
    gen = get_generator("diffusion-sd")(params)
    gen.fit(fit_data, tmp_path / "art", seed=0)
    req = widget_requests()[0]
    (res,) = gen.generate([req])
    assert np.array_equal(res.image[~req.mask], req.normal[~req.mask])
    assert not np.array_equal(res.image[req.mask], req.normal[req.mask])


def test_bad_model_path_and_uncached_hub_id_give_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = tmp_path / "no-such-model"
    with pytest.raises(GeneratorError, match="does not exist") as exc:
        load_components(missing)
    assert str(missing) in str(exc.value)
    with pytest.raises(GeneratorError, match="nobody-anoaug/not-a-real-model.*not in the local Hugging Face cache"):
        load_components("nobody-anoaug/not-a-real-model")
    with pytest.raises(GeneratorError, match="missing 'unet/'"):
        load_components(tmp_path)  # an existing folder that is not a model
    with pytest.raises(GeneratorError, match="needs param 'model'"):
        get_generator("diffusion-sd")({})
    with pytest.raises(GeneratorError, match="generator diffusion-sd: unknown key 'lora_rnak'"):
        get_generator("diffusion-sd")({"model": "x", "lora_rnak": 4})


def test_incompatible_weights_give_clear_errors(tiny_sd: Path, tmp_path: Path) -> None:
    from transformers import CLIPTextConfig, CLIPTextModel

    # A text encoder whose width does not match the UNet's cross-attention.
    wrong = tmp_path / "wrong-text-encoder"
    shutil.copytree(tiny_sd, wrong)
    cfg = json.loads((tiny_sd / "text_encoder" / "config.json").read_text())
    small = CLIPTextConfig(**{k: v for k, v in cfg.items() if not k.startswith("_")})
    small.hidden_size, small.projection_dim = 16, 16
    shutil.rmtree(wrong / "text_encoder")
    CLIPTextModel(small).save_pretrained(str(wrong / "text_encoder"))
    with pytest.raises(GeneratorError, match="cross_attention_dim 32 != text encoder hidden_size 16"):
        load_components(wrong)

    # Corrupt UNet weights.
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_sd, corrupt)
    (corrupt / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(GeneratorError, match="cannot load the unet"):
        load_components(corrupt)

    # A UNet config that does not match its weights.
    mismatched = tmp_path / "mismatched"
    shutil.copytree(tiny_sd, mismatched)
    ucfg = json.loads((tiny_sd / "unet" / "config.json").read_text())
    ucfg["block_out_channels"] = [24, 32]
    (mismatched / "unet" / "config.json").write_text(json.dumps(ucfg))
    with pytest.raises(GeneratorError, match="cannot load the unet"):
        load_components(mismatched)


def test_inpainting_param_is_checked_against_the_model(tiny_sd: Path, fit_data: FitData, tmp_path: Path) -> None:
    gen = get_generator("diffusion-sd")({**BASE_PARAMS, "model": str(tiny_sd), "inpainting": True})
    with pytest.raises(GeneratorError, match="text-to-image UNet"):
        gen.fit(fit_data, tmp_path / "art")


# -- fit / load / generate --------------------------------------------------------------------------------


def test_artifact_holds_only_learned_parts_and_base_identity(fitted, tiny_sd: Path) -> None:
    _, out = fitted
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "artifact.json",
        "embeddings.safetensors",
        "lora.safetensors",
        "sd_manifest.json",
        "spatial.safetensors",
    ]
    base_bytes = sum(p.stat().st_size for p in (tiny_sd / "unet").iterdir())
    assert (out / "lora.safetensors").stat().st_size < base_bytes / 5
    manifest = json.loads((out / "sd_manifest.json").read_text())
    assert manifest["base_model"]["model"] == str(tiny_sd)
    assert manifest["base_model"]["components"]["unet"]["weights"]
    assert manifest["tokens"] == {"Broken Large": "<broken-large>", "scratch": "<scratch>"}
    assert manifest["prompts"]["scratch"] == "a photo of widget with <scratch> defect"
    assert manifest["train"]["steps"] == BASE_PARAMS["train_steps"]


def test_generate_keeps_outside_exact_is_deterministic_and_loads_back(fitted) -> None:
    gen, out = fitted
    reqs = widget_requests()
    first = gen.generate(reqs)
    assert [r.image.shape for r in first] == [(SIZE, SIZE, 3)] * 2
    for req, res in zip(reqs, first, strict=True):
        assert np.array_equal(res.image[~req.mask], req.normal[~req.mask])  # outside the mask: bit-exact
        assert not np.array_equal(res.image[req.mask], req.normal[req.mask])  # inside: something was drawn
        assert res.mask.dtype == bool and not (res.mask & ~req.mask).any()  # final mask within the input mask
        assert res.mask.any()
        assert res.info["input_mask_area"] == int(req.mask.sum())
        assert res.info["final_mask_area"] == int(res.mask.sum())
    assert "<scratch>" in first[0].info["prompt"] and "<broken-large>" in first[1].info["prompt"]

    loaded = get_generator("diffusion-sd").load(out)  # a second instance, from the saved learned parts
    assert loaded.artifact_hash == gen.artifact_hash
    again = loaded.generate(reqs)
    for a, b in zip(first, again, strict=True):  # same seeds -> same images and masks
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    (other_seed,) = gen.generate(widget_requests(seed=2)[:1])
    assert not np.array_equal(other_seed.image, first[0].image)
    # Each item depends only on its own seed: alone it matches its place in the batch (up to BLAS rounding).
    (alone,) = gen.generate(reqs[1:])
    assert np.abs(alone.image.astype(int) - first[1].image.astype(int)).max() <= 2


def test_unknown_defect_type_is_a_clear_error(fitted) -> None:
    gen, _ = fitted
    req = widget_requests()[0]
    req.defect_type = "dent"
    with pytest.raises(GeneratorError, match="no learned token for defect type 'dent'"):
        gen.generate([req])


def test_artifact_refuses_a_different_base_model(fitted, tmp_path: Path) -> None:
    _, out = fitted
    other = make_tiny_stable_diffusion(tmp_path / "other", seed=1)  # same configs and sizes, other weights
    art = tmp_path / "art"
    shutil.copytree(out, art)
    meta = json.loads((art / "artifact.json").read_text())
    meta["params"]["model"] = str(other)
    (art / "artifact.json").write_text(json.dumps(meta))
    with pytest.raises(GeneratorError, match="differs from the one this artifact was trained on.*unet"):
        get_generator("diffusion-sd").load(art)


# -- training pieces -----------------------------------------------------------------------------------


def test_training_loss_decreases(tiny_sd: Path, fit_data: FitData) -> None:
    comps = load_components(tiny_sd)
    settings = TrainSettings(resolution=RES, lora_rank=8, spatial_tokens=2, lr=1e-2, ti_lr=5e-2, batch_size=3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        trainer = SDTrainer(comps, fit_data.defects, "widget", settings, CPU, seed=0)
    before = trainer.eval_loss(seed=3)  # fixed crops, noise and timesteps: comparable before/after
    losses = trainer.train(50)
    after = trainer.eval_loss(seed=3)
    assert len(losses) == 50 and all(np.isfinite(losses))
    assert after < 0.92 * before, (before, after)


def test_gradient_checkpointing_gives_the_same_training(tiny_sd: Path, fit_data: FitData) -> None:
    # The GPU default; on CPU it must give the same losses and weights as plain backprop.
    runs = []
    for checkpointing in (False, True):
        comps = load_components(tiny_sd)
        settings = TrainSettings(
            resolution=RES, lora_rank=2, spatial_tokens=2, lr=1e-2, gradient_checkpointing=checkpointing
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            trainer = SDTrainer(comps, fit_data.defects, "widget", settings, CPU, seed=0)
        assert comps.unet.is_gradient_checkpointing == checkpointing
        runs.append((trainer.train(2), lora_mod.lora_state_dict(comps.unet)))
    (loss_a, lora_a), (loss_b, lora_b) = runs
    assert np.allclose(loss_a, loss_b, rtol=1e-4)
    assert all(torch.allclose(lora_a[k], lora_b[k], atol=1e-5) for k in lora_a)
    assert any(v.abs().sum() > 0 for k, v in lora_a.items() if "lora_B" in k)  # training moved B off zero


def test_textual_inversion_updates_only_the_new_token_rows(tiny_sd: Path, fit_data: FitData, tmp_path: Path) -> None:
    comps = load_components(tiny_sd)
    n_before = len(comps.tokenizer)
    settings = TrainSettings(resolution=RES, lora_rank=0, spatial_tokens=0, ti_lr=5e-2, batch_size=2)
    trainer = SDTrainer(comps, fit_data.defects, "widget", settings, CPU, seed=0)
    assert trainer.bank is not None and trainer.bank.new_ids == [n_before, n_before + 1]
    weight = comps.text_encoder.get_input_embeddings().weight
    start = weight.detach().clone()
    unet_start = {k: v.clone() for k, v in comps.unet.state_dict().items()}
    trainer.train(3)
    trainer.finish()
    end = comps.text_encoder.get_input_embeddings().weight.detach()
    assert torch.equal(end[:n_before], start[:n_before])  # old vocabulary: bit-identical
    assert (end[n_before:] - start[n_before:]).abs().sum(dim=1).min() > 0  # every new row moved
    assert all(torch.equal(v, unet_start[k]) for k, v in comps.unet.state_dict().items())
    assert not any(p.requires_grad for p in comps.text_encoder.parameters())

    # Saved embeddings load into a fresh tokenizer / text encoder under the same ids.
    path = ti.save_embeddings(comps.text_encoder, trainer.bank, tmp_path / "emb.safetensors")
    fresh = load_components(tiny_sd)
    bank = ti.load_embeddings(fresh.tokenizer, fresh.text_encoder, path)
    assert bank.ids == trainer.bank.ids
    assert torch.equal(fresh.text_encoder.get_input_embeddings().weight, end)


def test_lora_save_load_round_trip_and_mismatch(tiny_sd: Path, tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel

    comps = load_components(tiny_sd)
    params = lora_mod.add_lora(comps.unet, rank=3)
    assert params and all(p.requires_grad for p in params)
    assert not any(p.requires_grad for n, p in comps.unet.named_parameters() if "lora_" not in n)
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.1)  # B starts at zero: perturb so the adapter actually changes the output
    path = lora_mod.save_lora(comps.unet, tmp_path / "lora.safetensors", rank=3)

    fresh = load_components(tiny_sd).unet
    meta = lora_mod.load_lora(fresh, path)
    assert meta["rank"] == "3"
    a, b = lora_mod.lora_state_dict(comps.unet), lora_mod.lora_state_dict(fresh)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(1, 4, 8, 8, generator=g), torch.tensor(10)
    states = torch.randn(1, 5, 32, generator=g)
    with torch.no_grad():
        out_a = comps.unet(x, t, encoder_hidden_states=states).sample
        out_b = fresh(x, t, encoder_hidden_states=states).sample
        plain = load_components(tiny_sd).unet(x, t, encoder_hidden_states=states).sample
    assert torch.allclose(out_a, out_b, atol=1e-6)
    assert not torch.allclose(out_a, plain, atol=1e-4)  # the adapter is really applied

    other = UNet2DConditionModel(**{**dict(fresh.config), "block_out_channels": (24, 32)})
    with pytest.raises(GeneratorError, match="LoRA weights do not fit"):
        lora_mod.load_lora(other, path)
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(GeneratorError, match="cannot read LoRA weights"):
        lora_mod.load_lora(load_components(tiny_sd).unet, tmp_path / "junk.safetensors")


def test_mixed_precision_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    # The CUDA branches are only resolved here (no GPU): bf16 where supported, else fp16; fp32 on CPU.
    assert resolve_dtype("auto", CPU) == torch.float32
    assert resolve_dtype("no", CPU) == torch.float32
    assert resolve_dtype("bf16", CPU) == torch.bfloat16
    with pytest.raises(GeneratorError, match="fp16 needs a CUDA device"):
        resolve_dtype("fp16", CPU)
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", cuda) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", cuda) == torch.float16
    with pytest.raises(GeneratorError, match="mixed_precision must be"):
        resolve_dtype("fp8", CPU)


def test_bf16_mixed_precision_path_runs_on_cpu(tiny_sd: Path, fit_data: FitData, tmp_path: Path) -> None:
    # The closest CPU stand-in for the CUDA path: frozen UNet in bf16 under autocast, learned parts in fp32.
    params = {**BASE_PARAMS, "model": str(tiny_sd), "train_steps": 2, "mixed_precision": "bf16"}
    params["gradient_checkpointing"] = True
    gen = get_generator("diffusion-sd")(params)
    gen.fit(fit_data, tmp_path / "art", seed=0)
    assert len(gen.train_losses) == 2 and all(np.isfinite(gen.train_losses))
    unet = gen._comps.unet
    assert unet.dtype == torch.bfloat16
    assert {p.dtype for n, p in unet.named_parameters() if "lora_" in n} == {torch.float32}
    req = widget_requests()[0]
    (res,) = gen.generate([req])
    assert np.array_equal(res.image[~req.mask], req.normal[~req.mask])


def test_cli_generate_trains_and_samples_from_a_local_folder(tiny_sd: Path, demo_root: Path, tmp_path: Path) -> None:
    """`anoaug generate -g diffusion-sd --param model=<folder>`: the real CLI path on stand-in weights."""
    from typer.testing import CliRunner

    from anoaug.cli import app
    from anoaug.shards.manifest import verify_generation
    from anoaug.shards.reader import iter_samples

    out = tmp_path / "sd-shards"
    sets = [f"model={tiny_sd}", "resolution=32", "context=1.0", "train_steps=2", "num_inference_steps=2"]
    args = ["generate", str(demo_root), "-c", "cap", "-g", "diffusion-sd", "-n", "1", "--out", str(out)]
    res = CliRunner().invoke(app, [*args, *(x for s in sets for x in ("--param", s))])
    assert res.exit_code == 0, res.output
    samples = list(iter_samples(out))
    assert len(samples) == 2 and verify_generation(out) == []
    run = json.loads((out / "run.json").read_text())
    assert run["generator"] == "diffusion-sd" and run["generator_params"]["model"] == str(tiny_sd)
    assert json.loads((out / "artifact" / "sd_manifest.json").read_text())  # base identity recorded

    res = CliRunner().invoke(app, [*args[:-2], "--out", str(tmp_path / "bad"), "--param", "model=/nonexistent/sd"])
    assert res.exit_code == 2 and "/nonexistent/sd" in res.output
