"""Interface contract of every registered generator, on the demo data with hand-made masks.

The generators come from `available_generators()`, so a new one is covered the day it registers. Learned
generators run small: `TINY_PARAMS` (fallback: no params), and diffusion-sd on its tiny stand-in weights.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from anoaug.errors import SpecError
from anoaug.generators import (
    FitData,
    GenerationRequest,
    available_generators,
    check_generator_params,
    get_generator,
)
from anoaug.generators.base import ARTIFACT_FILE, GeneratorError, GeneratorSettings, artifact_hash, validate_result
from anoaug.generators.compositing import blend, feather_alpha
from anoaug.generators.diffusion.settings import DIFFUSERS_NAMES
from anoaug.generators.perlin import perlin_mask, perlin_noise

GENERATORS = available_generators()
MODEL_FREE = [name for name in GENERATORS if not get_generator(name).learned]
CATEGORIES = ["cap", "fabric"]
# Small settings for the learned generators (a few training and sampling steps on CPU); {} for others.
TINY_PARAMS: dict[str, dict[str, Any]] = {
    "diffusion-tiny": {
        "crop": 32,
        "widths": [8, 16],
        "batch": 4,
        "train_steps": 4,
        "max_train_seconds": None,
        "num_inference_steps": 3,
        "max_normals": 4,
        "checkpoint_every_s": 3600,
        "threads": 1,
    },
    "diffusion-sd": {"resolution": 32, "train_steps": 2, "lora_rank": 2, "num_inference_steps": 3},
    "anomalydiffusion": {
        "resolution": 32,
        "train_steps": 2,
        "spatial_tokens": 2,
        "attention_reweighting": "code",
        "num_inference_steps": 3,
    },
    "dualanodiff": {"resolution": 32, "train_steps": 2, "lora_rank": 2, "num_inference_steps": 3},
    "adabldm": {
        "resolution": 32,
        "train_steps": 2,
        "num_inference_steps": 4,
        "composites_per_type": 1,
        "adaptation_steps": 2,
    },
}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_params(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """`TINY_PARAMS` per registered generator; diffusion-sd gets its tiny stand-in weights."""
    from anoaug.generators.diffusion.sd.tiny_stand_in import make_tiny_stable_diffusion

    params = {name: dict(TINY_PARAMS.get(name, {})) for name in GENERATORS}
    if "diffusion-sd" in params:
        params["diffusion-sd"]["model"] = str(make_tiny_stable_diffusion(tmp_path_factory.mktemp("sd") / "model"))
    if "anomalydiffusion" in params:
        params["anomalydiffusion"]["model"] = str(make_tiny_stable_diffusion(tmp_path_factory.mktemp("ad") / "model"))
    if "dualanodiff" in params:
        params["dualanodiff"]["model"] = str(make_tiny_stable_diffusion(tmp_path_factory.mktemp("dual") / "model"))
    if "adabldm" in params:  # the same kind of stand-in weights, inpainting UNet (9 input channels)
        params["adabldm"]["model"] = str(make_tiny_stable_diffusion(tmp_path_factory.mktemp("ada") / "m", True))
    return params


@pytest.fixture(scope="module")
def fitdata(demo_root: Path) -> dict[str, FitData]:
    from anoaug.data.formats import read_category
    from anoaug.data.split import make_split

    out = {}
    for cat in CATEGORIES:
        data = read_category(demo_root, cat, "auto")
        out[cat] = FitData.from_split(data, make_split(data, 0), kind="object" if cat == "cap" else "texture")
    return out


@pytest.fixture(scope="module")
def fitted(
    fitdata: dict[str, FitData], tiny_params: dict[str, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[str, str], Path]:
    base = tmp_path_factory.mktemp("artifacts")
    arts = {}
    for cat in CATEGORIES:
        for name in GENERATORS:
            gen = get_generator(name)(tiny_params[name])
            arts[(name, cat)] = gen.fit(fitdata[cat], base / f"{name}-{cat}", seed=0)
    return arts


def _request(fd: FitData, defect_type: str, seed: int, thin: bool = False) -> GenerationRequest:
    """A hand-made ellipse (or thin line) mask near the centre, with a trimap from the bright object."""
    normal = fd.normal_images(limit=1)[0]
    h, w = normal.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    if thin:
        cv2.line(mask, (w // 3, h // 2), (2 * w // 3, h // 2 + 10), 1, 1)
    else:
        cv2.ellipse(mask, (w // 2, h // 2), (18, 9), 30, 0, 360, 1, -1)
    mask = mask.astype(bool)
    obj = cv2.cvtColor(normal, cv2.COLOR_RGB2GRAY) > 60 if fd.kind == "object" else np.ones((h, w), bool)
    trimap = np.where(mask, 255, np.where(obj, 127, 0)).astype(np.uint8)
    return GenerationRequest(normal, mask, defect_type, seed, trimap, normal_key=str(fd.normal_paths[0]))


@pytest.mark.parametrize("cat", CATEGORIES)
@pytest.mark.parametrize("name", GENERATORS)
def test_contract(name: str, cat: str, fitdata: dict[str, FitData], fitted: dict[tuple[str, str], Path]) -> None:
    fd = fitdata[cat]
    gen = get_generator(name).load(fitted[(name, cat)])
    assert gen.artifact_hash == artifact_hash(fitted[(name, cat)])
    reqs = [_request(fd, t, seed) for seed, t in enumerate(fd.defect_types)]
    results = gen.generate(reqs)
    assert len(results) == len(reqs)
    # Determinism per seed: the same batch again gives the same pixels and masks.
    for res, again in zip(results, gen.generate(reqs), strict=True):
        assert np.array_equal(again.image, res.image) and np.array_equal(again.mask, res.mask)
    for req, res in zip(reqs, results, strict=True):
        validate_result(req, res, name)
        assert res.image.shape == req.normal.shape and res.image.dtype == np.uint8
        assert res.mask.shape == req.mask.shape and res.mask.dtype == np.bool_ and res.mask.any()
        changed = np.any(res.image != req.normal, axis=2)
        assert changed.sum() > 0.3 * res.mask.sum(), "the defect must be visible"
        margin = int(np.ceil(float(getattr(gen.settings, "feather", 0)))) + 1
        if gen.learned:
            # Learned generators redraw the requested region: nothing changes beyond it (plus the margin),
            # and the final mask is what changed there.
            near = _grow(req.mask, margin)
            assert not (changed & ~near).any() and not (res.mask & ~near).any()
        else:
            # Defect pixels only inside the final mask, plus the blending margin (feather).
            assert not (changed & ~_grow(res.mask, margin)).any()
        if name == "cutpaste":
            assert np.array_equal(res.mask, req.mask)  # the blended region is the requested one
        elif not res.info.get("fallback"):
            assert not (res.mask & ~req.allowed).any()  # never off the object
        # Each request depends only on its own seed (learned ones: up to float rounding of batched math) ...
        (alone,) = gen.generate([req])
        if gen.learned:
            assert np.abs(alone.image.astype(int) - res.image.astype(int)).max() <= 2
        else:
            assert np.array_equal(alone.image, res.image) and np.array_equal(alone.mask, res.mask)
        # ... and the seed matters.
        other = gen.generate([GenerationRequest(req.normal, req.mask, req.defect_type, req.seed + 101, req.trimap)])
        assert not np.array_equal(other[0].image, res.image)


def _grow(mask: np.ndarray, margin: int) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), np.ones((2 * margin + 1,) * 2, np.uint8)) > 0


@pytest.mark.parametrize("name", MODEL_FREE)
def test_fit_is_deterministic(name: str, fitdata: dict[str, FitData], fitted: dict, tmp_path: Path) -> None:
    """Model-free artifacts are byte-identical per seed (learned ones record their training time)."""
    again = get_generator(name)().fit(fitdata["cap"], tmp_path / "again", seed=0)
    assert artifact_hash(again) == artifact_hash(fitted[(name, "cap")])


@pytest.mark.parametrize("mode", ["poisson", "poisson-mixed", "none"])
def test_blend_modes_stay_inside(mode: str, fitdata: dict[str, FitData], fitted: dict) -> None:
    gen = get_generator("crop-paste").load(fitted[("crop-paste", "cap")])
    gen.settings.blend = mode
    req = _request(fitdata["cap"], "scratch", 7)
    res = gen.generate([req])[0]
    changed = np.any(res.image != req.normal, axis=2)
    assert res.info["blend"] == mode and changed.any()
    assert not (changed & ~res.mask).any()  # Poisson and hard paste edit only the region


def test_poisson_on_thin_mask_falls_back(fitdata: dict[str, FitData], fitted: dict) -> None:
    gen = get_generator("cutpaste").load(fitted[("cutpaste", "fabric")])
    gen.settings.blend = "poisson"
    res = gen.generate([_request(fitdata["fabric"], "cut", 3, thin=True)])[0]
    assert res.mask.any() and res.info["blend"] in ("poisson", "alpha")


def test_feather_alpha_threshold_is_the_region() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        region = cv2.GaussianBlur(rng.random((40, 50)).astype(np.float32), (0, 0), 3) > 0.5
        for f in (0.0, 1.0, 3.0):
            a = feather_alpha(region, f)
            assert np.array_equal(a >= 0.5, region)
            assert a.min() >= 0 and a.max() <= 1


def test_hard_blend_and_errors(fitdata: dict[str, FitData], fitted: dict) -> None:
    dst = np.zeros((10, 10, 3), np.uint8)
    src = np.full((10, 10, 3), 200, np.uint8)
    region = np.zeros((10, 10), bool)
    region[2:5, 3:7] = True
    out, mask, used = blend(dst, src, region, "none")
    assert used == "none" and np.array_equal(mask, region) and np.array_equal(out[..., 0] > 0, region)
    with pytest.raises(GeneratorError, match="unknown key 'nope'"):
        get_generator("cutpaste")({"nope": 1})
    gen = get_generator("crop-paste").load(fitted[("crop-paste", "cap")])
    with pytest.raises(GeneratorError, match="no training crop"):
        gen.generate([_request(fitdata["cap"], "stain", 0)])
    with pytest.raises(GeneratorError, match="not fitted"):
        get_generator("perlin")().generate([_request(fitdata["cap"], "crack", 0)])
    with pytest.raises(GeneratorError, match="unknown generator"):
        get_generator("no-such")


def test_perlin_noise_and_mask() -> None:
    a = perlin_noise((64, 96), (4, 2), np.random.default_rng(1))
    b = perlin_noise((64, 96), (4, 2), np.random.default_rng(1))
    assert a.shape == (64, 96) and np.array_equal(a, b)
    assert -1.01 <= a.min() < 0 < a.max() <= 1.01
    masks = [perlin_mask((64, 64), np.random.default_rng(s)) for s in range(20)]
    assert any(m.any() for m in masks) and all(m.dtype == np.bool_ for m in masks)


def test_perlin_texture_dir(fitdata: dict[str, FitData], tmp_path: Path) -> None:
    tex = tmp_path / "textures"
    tex.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(tex / f"t{i}.png"), rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
    gen = get_generator("perlin")({"texture_dir": str(tex), "mask_mode": "request"})
    gen.fit(fitdata["fabric"], tmp_path / "art")
    assert len(list((tmp_path / "art" / "textures").glob("*.png"))) == 3
    req = _request(fitdata["fabric"], "stain", 5)
    res = gen.generate([req])[0]
    assert np.array_equal(res.mask, req.mask)
    with pytest.raises(GeneratorError, match="not a directory"):
        get_generator("perlin")({"texture_dir": str(tmp_path / "missing")}).fit(fitdata["fabric"], tmp_path / "a2")


# ----------------------------------------------------------------------------- typed settings


@pytest.mark.parametrize("name", GENERATORS)
def test_unknown_setting_is_an_error_naming_it(name: str, tiny_params: dict[str, dict[str, Any]]) -> None:
    cls = get_generator(name)
    with pytest.raises(GeneratorError, match=f"generator {name}: unknown key 'no_such_setting'") as exc:
        cls({**tiny_params[name], "no_such_setting": 1})
    assert not isinstance(exc.value, SpecError)
    # Checked without building, as right after loading a spec: a SpecError naming the key and the file.
    with pytest.raises(SpecError, match="no_such_setting") as spec_exc:
        cls.check_params({**tiny_params[name], "no_such_setting": 1}, source="specs/run.yaml")
    assert str(spec_exc.value).startswith("specs/run.yaml: ")
    assert isinstance(cls.check_params(tiny_params[name]), cls.Settings)
    assert check_generator_params(name, tiny_params[name]) == cls(tiny_params[name]).settings


def test_check_generator_params_names_an_unknown_generator_and_the_file() -> None:
    with pytest.raises(SpecError, match="^spec.yaml: unknown generator 'no-such'; available: .*crop-paste"):
        check_generator_params("no-such", {}, "spec.yaml")


@pytest.mark.parametrize("name", GENERATORS)
def test_settings_defaults_and_ranges_are_documented(name: str) -> None:
    cls = get_generator(name)
    assert cls.Settings is not GeneratorSettings, "each generator has its own Settings"
    for key, field in cls.Settings.model_fields.items():
        assert field.description, f"{name}: setting '{key}' has no description"
        assert not field.is_required(), f"{name}: setting '{key}' has no default"


def test_bad_values_are_errors_naming_the_setting() -> None:
    with pytest.raises(GeneratorError, match="blend"):
        get_generator("crop-paste")({"blend": "seamless"})
    with pytest.raises(GeneratorError, match="feather"):
        get_generator("cutpaste")({"feather": -1})
    with pytest.raises(GeneratorError, match=r"beta must be \[low, high\] within \[0, 1\)"):
        get_generator("perlin")({"beta": [0.5, 0.2]})
    with pytest.raises(GeneratorError, match="num_inference_steps"):
        get_generator("diffusion-tiny")({"num_inference_steps": 0})
    with pytest.raises(SpecError, match="needs param 'model'"):
        get_generator("diffusion-sd").check_params({}, source="spec.yaml")


def test_true_false_auto_settings_accept_yaml_spellings() -> None:
    cls = get_generator("diffusion-tiny")
    values = [cls({"bf16": v}).settings.bf16 for v in ("yes", "off", "AUTO", True, "0")]
    assert values == [True, False, "auto", True, False]
    with pytest.raises(GeneratorError, match="bf16"):
        cls({"bf16": "maybe"})


@pytest.mark.parametrize("name", ["diffusion-tiny", "diffusion-sd"])
def test_diffusers_names_and_old_names(name: str, tiny_params: dict[str, dict[str, Any]]) -> None:
    cls = get_generator(name)
    base = {k: v for k, v in tiny_params[name].items() if k != "num_inference_steps"}
    new = cls({**base, "num_inference_steps": 7, "guidance_scale": 2.0, "generation_batch_size": 3})
    with pytest.warns(DeprecationWarning) as caught:
        old = cls({**base, "inference_steps": 7, "guidance": 2.0, "gen_batch": 3})
    messages = " ".join(str(w.message) for w in caught)
    for old_name, new_name in DIFFUSERS_NAMES.items():
        assert f"'{old_name}' is deprecated, use '{new_name}'" in messages
    assert old.settings == new.settings
    assert (old.settings.num_inference_steps, old.settings.guidance_scale, old.settings.generation_batch_size) == (
        7,
        2.0,
        3,
    )


def test_artifact_stores_all_settings_and_old_names_load(fitdata: dict, fitted: dict, tmp_path: Path) -> None:
    """artifact.json holds every setting (defaults included); an artifact written with the old diffusion-tiny
    names loads, with a DeprecationWarning, and generates the same pixels."""
    out = fitted[("diffusion-tiny", "cap")]
    meta = json.loads((out / ARTIFACT_FILE).read_text())
    cls = get_generator("diffusion-tiny")
    assert set(meta["params"]) == set(cls.Settings.model_fields)
    assert meta["params"]["num_inference_steps"] == 3 and meta["params"]["feather"] == 2
    art = tmp_path / "old"
    shutil.copytree(out, art)
    params = dict(meta["params"])
    for old, new in DIFFUSERS_NAMES.items():
        params[old] = params.pop(new)
    del params["device"]  # artifacts from before the device setting
    (art / ARTIFACT_FILE).write_text(json.dumps({**meta, "params": params}))
    with pytest.warns(DeprecationWarning) as caught:
        gen = cls.load(art)
    assert {n for n in DIFFUSERS_NAMES if any(f"'{n}' is deprecated" in str(w.message) for w in caught)} == set(
        DIFFUSERS_NAMES
    )
    current = cls.load(out)
    assert gen.settings == current.settings and gen.settings.num_inference_steps == 3
    req = _request(fitdata["cap"], fitdata["cap"].defect_types[0], 3)
    assert np.array_equal(gen.generate([req])[0].image, current.generate([req])[0].image)


def test_bad_artifact_settings_name_the_artifact(fitted: dict, tmp_path: Path) -> None:
    art = tmp_path / "bad"
    shutil.copytree(fitted[("cutpaste", "cap")], art)
    meta = json.loads((art / ARTIFACT_FILE).read_text())
    meta["params"]["blend"] = "smudge"
    (art / ARTIFACT_FILE).write_text(json.dumps(meta))
    with pytest.raises(GeneratorError, match="blend") as exc:
        get_generator("cutpaste").load(art)
    assert exc.value.path == art / ARTIFACT_FILE


def test_new_names_load_without_warnings(tiny_params: dict[str, dict[str, Any]]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        for name in GENERATORS:
            get_generator(name)(tiny_params[name])
