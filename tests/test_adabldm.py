"""`adabldm`: trimap ControlNet branch, multi-stage T1/T2/T3 sampler, decoder adaptation, fit/load, CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor

from anoaug.generators import FitData, GenerationRequest, get_generator
from anoaug.generators.base import GeneratorError
from anoaug.generators.diffusion.adabldm import control
from anoaug.generators.diffusion.adabldm.decoder_adaptation import decode_adapted
from anoaug.generators.diffusion.adabldm.generator import BRANCH, MANIFEST
from anoaug.generators.diffusion.adabldm.multistage import multistage_sample, stage_lengths
from anoaug.generators.diffusion.adabldm.training import build_prompt, composite_examples
from anoaug.generators.diffusion.blending import make_scheduler
from anoaug.generators.diffusion.sd.loading import load_components
from anoaug.generators.diffusion.sd.tiny_stand_in import make_tiny_stable_diffusion

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # shared fixtures: tests/conftest.py (cap, demo_root)
SMALL = {
    "resolution": 32,
    "train_steps": 2,
    "num_inference_steps": 6,
    "composites_per_type": 1,
    "adaptation_steps": 2,
}


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adabldm-sd")
    return {
        "t2i": make_tiny_stable_diffusion(root / "t2i"),
        "inpaint": make_tiny_stable_diffusion(root / "inpaint", inpainting=True),
    }


def _request(fd: FitData, seed: int = 3, trimap: bool = True) -> GenerationRequest:
    normal = fd.normal_images(limit=1)[0]
    h, w = normal.shape[:2]
    mask = np.zeros((h, w), bool)
    mask[h // 2 - 6 : h // 2 + 6, w // 2 - 8 : w // 2 + 8] = True
    tri = np.where(mask, 255, 127).astype(np.uint8) if trimap else None
    return GenerationRequest(normal, mask, fd.defect_types[0], seed, tri)


# -- the trimap branch ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["t2i", "inpaint"])
def test_branch_starts_as_an_exact_no_op(kind: str, stand_ins: dict[str, Path]) -> None:
    comps = load_components(stand_ins[kind])
    net = control.build_controlnet(comps.unet, comps.vae_scale_factor)
    # conv_in takes what the UNet takes (9 channels for inpainting), the embedding reaches the latent grid.
    assert net.config.in_channels == comps.unet.config.in_channels
    assert control.embedding_widths(comps.vae_scale_factor) == (16, 32, 96)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, comps.unet.config.in_channels, 8, 8, generator=g)
    states = torch.randn(2, 77, comps.unet.config.cross_attention_dim, generator=g)
    trimap = torch.rand(2, 1, 32, 32, generator=g)
    t = torch.tensor(500)
    with torch.no_grad():
        plain = comps.unet(x, t, encoder_hidden_states=states).sample
        branched = control.controlled_unet(comps.unet, net, x, t, states, trimap)
        # A non-zero output conv makes the branch matter: the equality above is not vacuous.
        torch.nn.init.normal_(net.controlnet_mid_block.weight, std=0.1)
        changed = control.controlled_unet(comps.unet, net, x, t, states, trimap)
    assert torch.equal(plain, branched)
    assert not torch.allclose(plain, changed)


def test_trimap_levels_crop_and_prompt() -> None:
    tri = np.array([[255, 127, 0, 128]], np.uint8)
    assert control.trimap_levels(tri).tolist() == [[1.0, 0.5, 0.0, 0.5]]
    assert build_prompt("{obj}, a {obj} with a {def}", "metal_nut", "bent_lead") == (
        "metal nut, a metal nut with a bent lead"
    )
    with pytest.raises(GeneratorError, match="prompt_template"):
        build_prompt("{obj} {x}", "cap", "crack")


def test_composites_come_from_crop_paste_with_matching_trimaps(cap: FitData) -> None:
    exs = composite_examples(cap, 2, seed=0)
    assert 0 < len(exs) <= 2 * len(cap.defect_types)
    assert {e.source for e in exs} == {"composite"} and {e.defect_type for e in exs} <= set(cap.defect_types)
    for e in exs:
        assert e.mask.any() and e.image.shape[:2] == e.mask.shape == e.trimap.shape
        assert np.array_equal(e.trimap == 1.0, e.mask) and set(np.unique(e.trimap)) <= {0.0, 0.5, 1.0}
    again = composite_examples(cap, 2, seed=0)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(exs, again, strict=True))  # from the seed


# -- the multi-stage sampler ---------------------------------------------------------------------------


def test_stage_lengths() -> None:
    assert stage_lengths((26, 20, 5), 51) == (26, 20, 5)
    assert sum(stage_lengths((26, 20, 5), 50)) == 50 and stage_lengths((26, 20, 5), 50)[2] == 5
    assert stage_lengths((26, 20, 5), 6) == (3, 2, 1)  # T3 kept at >= 1 step on short CPU runs
    assert stage_lengths((0, 1, 0), 7) == (0, 7, 0)
    with pytest.raises(ValueError):
        stage_lengths((0, 0, 0), 5)


def _toy_sampler_inputs(b: int = 2):
    g = torch.Generator().manual_seed(1)
    known = torch.randn(b, 4, 8, 8, generator=g)
    mask = torch.zeros(b, 1, 8, 8)
    mask[:, :, 2:5, 3:6] = 1
    pixels = torch.rand(b, 3, 32, 32, generator=g) * 2 - 1
    pmask = torch.nn.functional.interpolate(mask, scale_factor=4)
    calls = {"decode": 0, "encode": 0}

    def decode(z: torch.Tensor) -> torch.Tensor:
        calls["decode"] += 1
        return torch.nn.functional.interpolate(z[:, :3], scale_factor=4).tanh()

    def encode(p: torch.Tensor) -> torch.Tensor:
        calls["encode"] += 1
        small = torch.nn.functional.avg_pool2d(p, 4)
        return torch.cat([small, small.mean(1, keepdim=True)], 1)

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 0.3 * x + 0.01 * float(t)

    sched = make_scheduler("ddim", {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear",
                                    "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1})  # fmt: skip
    return known, mask, pixels, pmask, calls, decode, encode, denoise, sched


@pytest.mark.parametrize("lengths", [(3, 2, 1), (2, 3, 3), (0, 4, 0), (4, 0, 2)])
def test_stage_lengths_are_respected_counting_decodes_and_encodes(lengths: tuple[int, int, int]) -> None:
    known, mask, pixels, pmask, calls, decode, encode, denoise, sched = _toy_sampler_inputs()
    seen: list[str] = []
    out = multistage_sample(
        denoise, sched, known, mask, lengths, decode=decode, encode=encode, known_pixels=pixels, pixel_mask=pmask,
        generator=torch.Generator().manual_seed(0), on_step=lambda i, stage, x: seen.append(stage),
    )  # fmt: skip
    assert seen == ["T1"] * lengths[0] + ["T2"] * lengths[1] + ["T3"] * lengths[2]
    assert calls == {"decode": lengths[2], "encode": lengths[2]}
    assert out.shape == known.shape and torch.isfinite(out).all()


def test_latent_editing_keeps_the_noised_normal_latent_outside_the_mask() -> None:
    known, mask, pixels, pmask, calls, decode, encode, denoise, sched = _toy_sampler_inputs()
    lengths = (2, 3, 0)
    steps: dict[int, tuple[str, torch.Tensor]] = {}
    multistage_sample(
        denoise, sched, known, mask, lengths, decode=decode, encode=encode, known_pixels=pixels, pixel_mask=pmask,
        generator=torch.Generator().manual_seed(0), on_step=lambda i, stage, x: steps.update({i: (stage, x.clone())}),
    )  # fmt: skip
    # The sampler draws the initial noise, then the known region's noise, from the generator.
    g = torch.Generator().manual_seed(0)
    randn_tensor(tuple(known.shape), generator=g)
    known_noise = randn_tensor(tuple(known.shape), generator=g)
    ref = sched.__class__.from_config(sched.config)
    ref.set_timesteps(sum(lengths))
    ts = ref.timesteps
    outside = (mask == 0).expand_as(known)
    for i, (stage, x) in steps.items():
        expected = known if i + 1 == len(ts) else ref.add_noise(known, known_noise, ts[i + 1].reshape(1).expand(2))
        if stage == "T2":
            assert torch.equal(x[outside], expected[outside]), i
        else:  # free denoising leaves the outside alone
            assert not torch.allclose(x[outside], expected[outside])
    assert calls["decode"] == 0


def test_image_editing_needs_ddim() -> None:
    with pytest.raises(GeneratorError, match="ddim"):
        get_generator("adabldm")({"model": "x", "scheduler": "dpm++"})
    get_generator("adabldm")({"model": "x", "scheduler": "dpm++", "stages": [1, 1, 0]})
    get_generator("adabldm")({"model": "x", "scheduler": "dpm++", "multistage": False})


# -- decoder adaptation --------------------------------------------------------------------------------


def _state_hash(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode() + v.detach().cpu().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["per_image", "per_batch"])
def test_decoder_adaptation_restores_the_decoder_and_lowers_the_background_loss(
    mode: str, pretrained_sd: Path, cap: FitData
) -> None:
    from anoaug.generators.diffusion.sd import conditioning as cond

    vae = load_components(pretrained_sd).vae
    normals = [n[:32, :32] for n in cap.normal_images(limit=2)]
    pixels = cond.images_to_tensor(normals, torch.device("cpu"))
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 10:20, 8:22] = 1
    with torch.no_grad():  # a latent whose decoding differs from the normal image everywhere
        z = cond.encode_latents(vae, pixels, sample=False) + 0.5 * torch.randn(2, 4, 8, 8, generator=torch.Generator())
    decoder, before = vae.decoder, _state_hash(vae.decoder)
    out, hists = decode_adapted(vae, z, pixels, mask, mode, steps=8, lr=1e-4, lambda_con=100.0)
    assert vae.decoder is decoder and _state_hash(vae.decoder) == before
    assert out.shape == pixels.shape and len(hists) == 2
    for h in hists:
        assert h["mode"] == mode and h["background_after"] < h["background_before"]
        assert h["total"][-1] < h["total"][0]
    with torch.no_grad():
        plain = cond.decode_latents(vae, z)
    seam = (1 - mask).bool().expand_as(out)
    assert (out - pixels).abs()[seam].mean() < (plain - pixels).abs()[seam].mean()


# -- the generator ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted(stand_ins: dict[str, Path], cap: FitData, tmp_path_factory: pytest.TempPathFactory):
    gen = get_generator("adabldm")({"model": str(stand_ins["inpaint"]), **SMALL})
    return gen, gen.fit(cap, tmp_path_factory.mktemp("adabldm-art") / "art", seed=0)


def test_artifact_holds_the_branch_and_the_base_identity(fitted, stand_ins: dict[str, Path]) -> None:
    gen, art = fitted
    assert (art / BRANCH).is_file()
    manifest = json.loads((art / MANIFEST).read_text())
    assert manifest["base_model"]["model"] == str(stand_ins["inpaint"]) and manifest["inpainting"]
    assert manifest["controlnet"]["in_channels"] == 9
    assert manifest["train"]["steps"] == 2 and manifest["train"]["examples"]["composite"] > 0
    assert manifest["prompts"]["crack"] == "cap, a cap with a crack"
    other = get_generator("adabldm")({"model": str(stand_ins["t2i"]), **SMALL})
    with pytest.raises(GeneratorError, match="differs"):
        other._load(art, {})


def test_generate_is_exact_outside_deterministic_and_loads_back(fitted, cap: FitData) -> None:
    gen, art = fitted
    reqs = [_request(cap, 3), _request(cap, 4, trimap=False)]
    res = gen.generate(reqs)
    for req, r in zip(reqs, res, strict=True):
        assert np.array_equal(r.image[~req.mask], req.normal[~req.mask])
        assert r.mask.any() and not (r.mask & ~req.mask).any()
        assert r.info["stages"] == {"T1": 3, "T2": 2, "T3": 1} and r.info["controlnet"]
        assert r.info["decoder_adaptation"]["mode"] == "per_image"
        assert r.info["final_mask_area"] == int(r.mask.sum())
    assert res[0].info["trimap"]["source"] == "request" and res[1].info["trimap"]["source"] == "foreground"
    assert res[0].info["trimap"]["background"] == 0.0  # the request's trimap has no background
    loaded = get_generator("adabldm").load(art)
    for a, b in zip(res, loaded.generate(reqs), strict=True):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    other = gen.generate([_request(cap, 99)])[0]
    assert not np.array_equal(other.image, res[0].image)


def test_ablation_arms_run(stand_ins: dict[str, Path], cap: FitData, tmp_path: Path) -> None:
    """controlnet off (nothing trained, no branch file), plain blended sampling, per-batch adaptation."""
    params = {**SMALL, "model": str(stand_ins["t2i"]), "controlnet": False, "multistage": False,
              "decoder_adaptation": "per_batch"}  # fmt: skip
    gen = get_generator("adabldm")(params)
    art = gen.fit(cap, tmp_path / "art", seed=0)
    assert not (art / BRANCH).exists() and gen.train_losses == []
    res = get_generator("adabldm").load(art).generate([_request(cap, 1), _request(cap, 2)])
    assert res[0].info["stages"] == {"T1": 0, "T2": 6, "T3": 0} and not res[0].info["controlnet"]
    assert res[0].info["decoder_adaptation"]["batch"] == 2


@pytest.mark.slow
def test_cli_generate_on_the_pretrained_base(pretrained_sd: Path, demo_root: Path, tmp_path: Path) -> None:
    """`anoaug generate <demo>/cap -g adabldm --param model=<pretrained folder> -n 4 --out G`."""
    from anoaug.shards.manifest import verify_generation
    from anoaug.shards.reader import iter_samples
    from tests.conftest import run_cli

    out = tmp_path / "G"
    sets = [f"model={pretrained_sd}", "resolution=32", "train_steps=2", "num_inference_steps=4",
            "adaptation_steps=2", "composites_per_type=1"]  # fmt: skip
    args = ["generate", "demo/cap", "--data-root", str(demo_root), "-g", "adabldm", "-n", "4", "--out", str(out)]
    code, text = run_cli([*args, *(x for s in sets for x in ("--param", s))])
    assert code == 0, text
    samples = list(iter_samples(out))
    assert len(samples) == 4 * len(json.loads((out / "run.json").read_text())["defect_types"])
    assert verify_generation(out) == []
    assert (out / "artifact" / BRANCH).is_file()


@pytest.mark.parametrize(
    "path", ["demo/ablations/adabldm-cap.yaml", "demo/ablations/adabldm-fabric.yaml", "photo/adabldm-washers.yaml"]
)
def test_ablation_spec_loads_and_checks(path: str) -> None:
    from anoaug.pipeline.config import check_spec
    from anoaug.spec import load_spec

    spec = check_spec(load_spec(Path(__file__).parents[1] / "pipelines" / path))
    assert spec.generator.name == "adabldm" and spec.generator.params["model"] == "base"
    assert spec.variants["ada-plain"].params["multistage"] is False
    assert spec.variants["ada-plain"].params["resolution"] == spec.generator.params["resolution"]  # YAML merge
    arms = set(spec.evaluation.arms)
    assert {"crop-paste", "tiny", "sd-base", "adabldm", "ada-nocontrolnet", "ada-paperstages"} <= arms
    assert spec.variants["ada-paperstages"].params["stages"] == [50, 30, 5]
