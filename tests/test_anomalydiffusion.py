"""`anomalydiffusion`: anomaly + spatial tokens at the placeholder, the re-weighting processor, save/load, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from anoaug.generators import FitData, get_generator
from anoaug.generators.base import GeneratorError
from anoaug.generators.diffusion.anomalydiffusion import embedding as emb
from anoaug.generators.diffusion.anomalydiffusion import reweighting as rw
from anoaug.generators.diffusion.anomalydiffusion import spatial_encoder as spatial
from anoaug.generators.diffusion.sd import conditioning as cond
from anoaug.generators.diffusion.sd.loading import load_components
from tests.conftest import WIDGET_SIZE, run_cli, widget_requests

SIZE, RES = WIDGET_SIZE, 32
pytestmark = pytest.mark.usefixtures("one_torch_thread")
CPU = torch.device("cpu")
PARAMS = {"resolution": RES, "train_steps": 3, "spatial_tokens": 2, "num_inference_steps": 4, "guidance_scale": 3.0}


@pytest.fixture(scope="module")
def fitted(tiny_sd: Path, fit_data: FitData, tmp_path_factory: pytest.TempPathFactory):
    gen = get_generator("anomalydiffusion")({"model": str(tiny_sd), **PARAMS})
    out = gen.fit(fit_data, tmp_path_factory.mktemp("ad-artifact") / "art", seed=0)
    return gen, out


# -- tokens ---------------------------------------------------------------------------------------------


def test_spatial_tokens_land_at_the_placeholder_position(tiny_sd: Path) -> None:
    comps = load_components(tiny_sd)
    k, n = 3, 2
    vocab = emb.add_tokens(comps.tokenizer, comps.text_encoder, ["scratch", "crack"], k, n, "defect")
    prompt = vocab.prompt("a photo of {category} with <{type}> defect", "widget", "scratch")
    ids = cond.tokenize(comps.tokenizer, [prompt, prompt], CPU)
    start = len(comps.tokenizer("a photo of widget with", add_special_tokens=False).input_ids) + 1  # + BOS
    assert ids[0, start : start + k].tolist() == vocab.ids["scratch"]
    columns, positions = vocab.slots(ids)
    assert positions is not None and positions.tolist() == [list(range(start + k, start + k + n))] * 2
    assert columns[0].nonzero().flatten().tolist() == list(range(start, start + k + n))  # anomaly + spatial columns
    # The encoder's vectors replace the input embeddings exactly there (nothing appended after the padding).
    vectors = torch.randn(2, n, comps.text_encoder.config.hidden_size)
    with torch.no_grad():
        states = emb.encode(comps.text_encoder, ids, positions, vectors)
        other = emb.encode(comps.text_encoder, ids, positions, vectors + 1)
        plain = emb.encode(comps.text_encoder, ids, None, None)
    assert states.shape == plain.shape == (2, ids.shape[1], comps.text_encoder.config.hidden_size)
    # Causal text encoder: states before the spatial slots ignore them, states from the slots on depend on them.
    p = start + k
    assert torch.equal(states[:, :p], other[:, :p]) and torch.equal(states[:, :p], plain[:, :p])
    assert not torch.allclose(states[:, p:], other[:, p:])
    # The text encoder's embedding block (token + position embeddings) sees the spliced vectors at the slots.
    block = next(m for m in comps.text_encoder.modules() if hasattr(m, "token_embedding"))
    grabbed: dict[str, torch.Tensor] = {}
    hook = block.register_forward_hook(lambda _m, _i, out: grabbed.setdefault("x", out.detach().clone()))
    with torch.no_grad():
        emb.encode(comps.text_encoder, ids, positions, vectors)
        x = grabbed["x"] - block.position_embedding.weight[: ids.shape[1]][None]
        raw = block.token_embedding(ids)
    hook.remove()
    assert torch.allclose(x[:, p : p + n], vectors, atol=1e-5)
    assert torch.allclose(x[:, :p], raw[:, :p], atol=1e-5) and torch.allclose(x[:, p + n :], raw[:, p + n :], atol=1e-5)
    with pytest.raises(GeneratorError, match="exactly once"):
        vocab.expand("<scratch> and <scratch>", "scratch")
    with pytest.raises(GeneratorError, match="no learned tokens for defect type 'dent'"):
        vocab.prompt("a <{type}>", "widget", "dent")


# -- attention re-weighting -----------------------------------------------------------------------------


def _attention_case(mode: str):
    """A diffusers cross-attention layer, a 4x4 query grid, 6 context tokens, a weight map inside a 2x2 mask."""
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=8, heads=2, dim_head=8).eval()
    hidden = torch.randn(2, 16, 16)
    context = torch.randn(2, 6, 8)
    region = torch.zeros(2, 1, 4, 4)
    region[:, :, 1:3, 1:3] = 1
    weight = torch.where(region > 0, 1.0 + torch.rand(2, 1, 4, 4), torch.ones(2, 1, 4, 4))
    columns = torch.zeros(2, 6, dtype=torch.bool)
    columns[0, 2:4] = True  # item 1 plays the unconditional half: no placeholder columns
    return attn, hidden, context, rw.Reweight(weight, region, columns, mode)


@pytest.mark.parametrize("mode", ["paper", "code"])
def test_processor_changes_only_placeholder_columns_inside_the_mask(mode: str) -> None:
    from diffusers.models.attention_processor import AttnProcessor2_0

    attn, hidden, context, reweight = _attention_case(mode)
    with torch.no_grad():
        default = AttnProcessor2_0()(attn, hidden, context)
        same = rw.ReweightingAttnProcessor()(attn, hidden, context)  # no kwarg: the default processor exactly
        out = rw.ReweightingAttnProcessor()(attn, hidden, context, reweight=reweight)
    inside = (reweight.region.flatten(1) > 0) & reweight.columns.any(dim=1, keepdim=True)
    assert torch.equal(same, default)
    assert torch.equal(out[~inside], default[~inside])  # every other row: bit for bit
    assert (out[inside] - default[inside]).abs().amax(dim=-1).min() > 1e-6  # every re-weighted row changed

    # At the level of the attention map: only the placeholder columns of the masked rows are re-weighted.
    rows, w = reweight.at(16)
    assert torch.equal(rows, inside)
    factor = rw.column_factor(w, reweight.columns).repeat_interleave(attn.heads, dim=0)
    q = attn.head_to_batch_dim(attn.to_q(hidden))
    k = attn.head_to_batch_dim(attn.to_k(context))
    with torch.no_grad():
        base = rw.weighted_probs(attn, q, k, torch.ones_like(factor), mode)
        probs = rw.weighted_probs(attn, q, k, factor, mode)
    touched = (factor != 1).view(2, attn.heads, 16, 6)[:, 0]
    assert touched.any() and not touched[1].any() and not touched[:, :, [0, 1, 4, 5]].any()
    changed = (probs != base).view(2, attn.heads, 16, 6)
    assert not changed[:, :, ~inside[0]].any() and not changed[1].any()  # outside the mask / unconditional
    if mode == "paper":  # probabilities multiplied: other columns bit-identical
        assert torch.equal(changed[0, 0], touched[0])
        ratio = probs / base
        assert torch.allclose(ratio[factor != 1], factor[factor != 1])
    else:  # logits multiplied: the placeholder columns move, the others only renormalise (one common factor)
        ratio = (probs / base).view(2, attn.heads, 16, 6)[0][:, inside[0]]
        others = ratio[..., [0, 1, 4, 5]]
        assert torch.allclose(others, others[..., :1].expand_as(others), rtol=1e-4)
        assert not torch.allclose(ratio[..., 2:4], others[..., :2], rtol=1e-3)


@pytest.mark.parametrize("mode", ["paper", "code"])
@pytest.mark.parametrize("layout", ["cfg", "scattered", "residual"])
def test_fast_path_equals_the_row_by_row_computation(mode: str, layout: str) -> None:
    """The batched path (rank-k correction for paper, batched rows for code) = the reference per-row recomputation
    to fp tolerance, and bit for bit the default processor outside the re-weighted rows."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    torch.manual_seed(1)
    extra = {"residual_connection": True, "rescale_output_factor": 2.0} if layout == "residual" else {}
    attn = Attention(query_dim=16, cross_attention_dim=8, heads=2, dim_head=8, **extra).eval()
    n = 4 if layout == "cfg" else 3
    hidden, context = torch.randn(n, 16, 16), torch.randn(n, 6, 8)
    region = (torch.rand(n, 1, 4, 4) > 0.5).float()
    weight = torch.where(region > 0, 1.0 + torch.rand(n, 1, 4, 4), torch.ones(n, 1, 4, 4))
    columns = torch.zeros(n, 6, dtype=torch.bool)
    conditional = [2, 3] if layout == "cfg" else [0, 2]  # classifier-free guidance: the second half
    columns[conditional[0], 2:4] = True
    columns[conditional[1], 3:5] = True
    proc = rw.ReweightingAttnProcessor()
    with torch.no_grad():
        default = AttnProcessor2_0()(attn, hidden, context)
        fast = proc(attn, hidden, context, reweight=rw.Reweight(weight, region, columns, mode))
        reference = proc.rows_recomputed(
            attn, hidden, context, None, default.clone(), rw.Reweight(weight, region, columns, mode)
        )
    rows = rw.Reweight(weight, region, columns, mode).at(16)[0]
    assert rows.any() and not rows[[i for i in range(n) if i not in conditional]].any()
    assert torch.equal(fast[~rows], default[~rows]) and torch.equal(reference[~rows], default[~rows])
    assert torch.allclose(fast, reference, atol=1e-5, rtol=1e-5)
    assert (fast[rows] - default[rows]).abs().amax(dim=-1).min() > 1e-6


def test_weight_maps_follow_their_formulas() -> None:
    known = torch.zeros(1, 4, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:5, 2:5] = 1
    x0 = torch.zeros(1, 4, 8, 8)
    x0[..., 2:5, 2:5] = torch.linspace(0.5, 2.0, 9).view(3, 3)  # the far cells look most like a defect
    w = rw.paper_weights(x0, known, mask)
    assert torch.equal(w[mask == 0], torch.ones(int((mask == 0).sum())))
    assert w[mask > 0].sum().item() == pytest.approx(9.0, rel=1e-5)  # |m|_1 * softmax sums to the mask area
    assert w[0, 0, 2, 2] > w[0, 0, 4, 4]  # the least changed cell gets the largest weight
    cw, region = rw.code_weights(x0, known, mask, t=999, max_weight=1.5)
    assert rw.code_radius(999, 8) == 2 and rw.code_radius(0, 32) == 0
    assert region.sum() > mask.sum() and cw.min() >= 1.0 and cw.max() <= 1.5
    assert torch.equal(cw[region == 0], torch.ones(int((region == 0).sum())))


# -- generator ------------------------------------------------------------------------------------------


def test_reweighting_off_is_the_plain_sampler_and_on_edits_only_the_mask(fitted) -> None:
    gen, out = fitted
    assert gen.settings.attention_reweighting == "off"
    assert not any(isinstance(p, rw.ReweightingAttnProcessor) for p in gen._comps.unet.attn_processors.values())
    reqs = widget_requests()
    plain = gen.generate(reqs)
    # The processor installed but fed nothing (mode off): the same pixels as the library's default processor.
    assert rw.install(gen._comps.unet, ["down", "mid", "up"]) > 0
    again = gen.generate(reqs)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(plain, again, strict=True))
    for mode in ("paper", "code"):
        other = get_generator("anomalydiffusion").load(out)
        other.settings.attention_reweighting = mode
        other.settings.reweighting_strength = 5.0  # a visible effect on a 4-step tiny model
        res = other.generate(reqs)
        assert res[0].info["attention_reweighting"] == mode
        for r, q in zip(res, reqs, strict=True):
            assert np.array_equal(r.image[~q.mask], q.normal[~q.mask])  # the normal image exact outside the mask
        assert any(not np.array_equal(r.image, p.image) for r, p in zip(res, plain, strict=True)), mode


def test_artifacts_save_and_load_to_the_same_output_and_seeds_decide(fitted, tiny_sd: Path) -> None:
    gen, out = fitted
    names = {p.name for p in out.iterdir()}
    assert names == {"artifact.json", "ad_manifest.json", "anomaly_tokens.safetensors", "spatial_encoder.safetensors"}
    manifest = json.loads((out / "ad_manifest.json").read_text())
    assert manifest["learned"]["anomaly_tokens"] == 4 and manifest["learned"]["spatial_tokens"] == 2
    assert manifest["base_model"]["model"] == str(tiny_sd) and "folder" not in manifest["base_model"]
    assert manifest["tokens"]["scratch"] == ["<scratch_0>", "<scratch_1>", "<scratch_2>", "<scratch_3>"]
    reqs = widget_requests()
    first = gen.generate(reqs)
    loaded = get_generator("anomalydiffusion").load(out)
    for a, b in zip(first, loaded.generate(reqs), strict=True):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    for a, b in zip(first, gen.generate(reqs), strict=True):  # determinism per seed
        assert np.array_equal(a.image, b.image)
    other = gen.generate(widget_requests(seed=50))
    assert not np.array_equal(other[0].image, first[0].image)
    info = first[0].info
    assert info["prompt"].startswith("a photo of widget with <scratch_0>") and "<spatial_1>" in info["prompt"]
    assert info["num_inference_steps"] == 4 and info["spatial_tokens"] == 2 and info["seed"] == 1
    for r, q in zip(first, reqs, strict=True):
        assert np.array_equal(r.image[~q.mask], q.normal[~q.mask]) and not (r.mask & ~q.mask).any()


def test_textual_inversion_updates_only_the_new_token_rows(tiny_sd: Path, fit_data: FitData) -> None:
    gen = get_generator("anomalydiffusion")({"model": str(tiny_sd), **PARAMS, "ti_lr": 5e-2})
    trainer = gen.make_trainer(fit_data, seed=0)
    tok = trainer.comps.tokenizer
    vocab = trainer.vocab
    anomaly = sorted(i for v in vocab.ids.values() for i in v)
    n_before = min(anomaly + vocab.spatial_ids)
    assert len(tok) == n_before + len(anomaly) + 2
    weight = trainer.comps.text_encoder.get_input_embeddings().weight
    start = weight.detach().clone()
    unet_start = {k: v.clone() for k, v in trainer.comps.unet.state_dict().items()}
    enc_start = {k: v.clone() for k, v in trainer.encoder.state_dict().items()}
    trainer.train(3)
    trainer.finish()
    end = weight.detach()
    keep = [i for i in range(len(tok)) if i not in anomaly]
    assert torch.equal(end[keep], start[keep])  # base vocabulary and the spatial slots: bit-identical
    assert (end[anomaly] - start[anomaly]).abs().sum(dim=1).min() > 0  # every anomaly vector moved
    assert all(torch.equal(v, unet_start[k]) for k, v in trainer.comps.unet.state_dict().items())  # base frozen
    assert any(not torch.equal(v, enc_start[k]) for k, v in trainer.encoder.state_dict().items())  # encoder learns
    assert not any(p.requires_grad for p in trainer.comps.text_encoder.parameters())


def test_loss_normalisation_mask_vs_all(tiny_sd: Path, fit_data: FitData) -> None:
    losses = {}
    for norm in ("mask", "all"):
        gen = get_generator("anomalydiffusion")({"model": str(tiny_sd), **PARAMS, "loss_normalisation": norm})
        trainer = gen.make_trainer(fit_data, seed=0)
        batch = trainer.sample_batch(indices=[0])
        with torch.no_grad():
            losses[norm] = trainer.loss(batch, torch.Generator().manual_seed(3)).item()
        lat = cond.latent_mask(cond.masks_to_tensor(batch["masks"], CPU), trainer.comps.vae_scale_factor)
    assert losses["all"] == pytest.approx(losses["mask"] * lat.mean().item(), rel=1e-4)


def test_spatial_encoder_backbones_and_bad_weights(tmp_path: Path) -> None:
    from torchvision.models import resnet50

    mask = torch.zeros(2, 1, 32, 32)
    mask[0, :, 4:12, 4:20] = 1
    mask[1, :, 20:30, 2:8] = 1
    small = spatial.build_spatial_encoder(3, 32, 0.02)
    tokens = small(mask)
    assert tokens.shape == (2, 3, 32) and not torch.allclose(tokens[0], tokens[1])
    path = tmp_path / "r50.pth"
    torch.save(resnet50(weights=None).state_dict(), path)
    big = spatial.build_spatial_encoder(2, 32, 0.02, "resnet50", path)
    assert big(mask).shape == (2, 2, 32)
    saved = spatial.save_spatial_encoder(big, tmp_path / "enc.safetensors")
    again = spatial.load_spatial_encoder(saved, 32)
    assert torch.equal(again(mask), big.eval()(mask))
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(3), "other.weight": torch.zeros(1)}, bad)
    with pytest.raises(GeneratorError, match="not a torchvision ResNet-50 state dict") as exc:
        spatial.build_spatial_encoder(2, 32, 0.02, "resnet50", bad)
    assert exc.value.path == bad
    with pytest.raises(GeneratorError, match="file not found"):
        spatial.build_spatial_encoder(2, 32, 0.02, "resnet50", tmp_path / "missing.pth")


# -- spec and CLI ---------------------------------------------------------------------------------------


def test_ablation_spec_loads_with_its_variants() -> None:
    from anoaug.generators import check_generator_params
    from anoaug.spec import load_spec

    spec = load_spec(Path(__file__).resolve().parents[1] / "pipelines/demo/ablations/anomalydiffusion-cap.yaml")
    assert spec.generator.name == "anomalydiffusion" and spec.uses_base_model("anomalydiffusion")
    modes = {n: v.params.get("attention_reweighting", "off") for n, v in spec.variants.items()}
    assert modes["ad-reweight-paper"] == "paper" and modes["ad-reweight-code"] == "code"
    assert spec.variants["ad-no-spatial"].params["spatial_tokens"] == 0
    learned = spec.variants["ad-learned-masks"]  # learned vs bank masks: the same params, its own masks
    assert learned.params == spec.generator.params and spec.masks_for("ad-learned-masks").source == "learned"
    assert spec.masks.source == "bank" and "ad-learned-masks" in spec.producers()
    assert {"crop-paste", "sd-base", "anomalydiffusion"} <= set(spec.producers())
    for v in spec.variants.values():
        check_generator_params(v.generator, v.params)


@pytest.mark.slow
def test_cli_generate_on_the_pretrained_base(pretrained_sd: Path, demo_root: Path, tmp_path: Path) -> None:
    """`anoaug generate demo/cap -g anomalydiffusion --param model=<pretrained> -n 4` through the CLI."""
    from anoaug.shards.manifest import verify_generation
    from anoaug.shards.reader import iter_samples

    out = tmp_path / "ad-shards"
    sets = [f"model={pretrained_sd}", "resolution=32", "train_steps=4", "num_inference_steps=3", "spatial_tokens=2"]
    args = ["generate", "demo/cap", "--data-root", str(demo_root), "-g", "anomalydiffusion", "-n", "4"]
    code, text = run_cli([*args, "--out", str(out), *(x for s in sets for x in ("--param", s))])
    assert code == 0, text
    samples = list(iter_samples(out))
    run = json.loads((out / "run.json").read_text())
    assert run["generator"] == "anomalydiffusion" and run["generator_params"]["model"] == str(pretrained_sd)
    types = [smp.meta["defect_type"] for smp in samples]
    assert len(types) == 4 * len(set(types)) and set(types) and verify_generation(out) == []
    info = samples[0].meta["generator_info"]
    assert info["attention_reweighting"] == "off" and info["num_inference_steps"] == 3 and info["spatial_tokens"] == 2
    assert all(tok in info["prompt"] for tok in info["anomaly_tokens"]) and "<spatial_0>" in info["prompt"]
