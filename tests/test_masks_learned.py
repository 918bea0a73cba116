"""`masks.source: learned`: mask tokens learned by textual inversion of the real training masks, sampled,
thresholded, rejected by the border / empty rules, cached, and placed inside the foreground like the bank."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

pytest.importorskip("diffusers")

import torch  # noqa: E402

from anoaug.data.io import load_image  # noqa: E402
from anoaug.errors import SpecError  # noqa: E402
from anoaug.masks.foreground import ForegroundCache, erode  # noqa: E402
from anoaug.masks.learned import artifact as art  # noqa: E402
from anoaug.masks.learned.sampling import border_excess, to_mask  # noqa: E402
from anoaug.masks.learned.settings import LearnedMasksSettings  # noqa: E402
from anoaug.masks.learned.training import MaskTrainer  # noqa: E402
from anoaug.png import decode_mask  # noqa: E402
from anoaug.spec import MasksSection, load_spec  # noqa: E402
from tests.conftest import run_cli  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _learned(model: Path, **kw: object) -> dict[str, object]:
    """Small learned-mask settings for the `pretrained_sd` fixture (a few seconds). The fixture's model is
    barely trained, so its samples are grey: the threshold is lowered (the default 0.8 is the authors')."""
    base = {"model": str(model), "tokens": 2, "train_steps": 8, "batch_size": 2, "num_inference_steps": 4,
            "threshold": 0.6, "pool_per_type": 3, "max_samples_per_type": 8, "sample_batch_size": 4}  # fmt: skip
    return {**base, **kw}


def test_settings_are_checked_at_spec_load(tmp_path: Path) -> None:
    assert MasksSection().learned.threshold == 0.8 and MasksSection().learned.model == "base"
    with pytest.raises(ValidationError, match="tokens"):
        MasksSection(learned={"tokens": 0})
    with pytest.raises(ValidationError, match="template"):
        LearnedMasksSettings(template="a photo")
    with pytest.raises(SpecError, match="learned"):
        load_spec("demo/cap", {"masks": {"source": "learned", "learned": {"thershold": 0.5}}})
    a, b = LearnedMasksSettings(), LearnedMasksSettings(threshold=0.7)
    assert a.training_key() == b.training_key() and a.sampling_key() != b.sampling_key()


def test_threshold_cleanup_and_border_rules() -> None:
    s = LearnedMasksSettings(threshold=0.8, min_component_area=16, max_border_fraction=1 / 3)
    prob = np.zeros((32, 32), np.float32)
    prob[10:20, 12:22] = 0.9
    prob[2, 2] = 0.95  # one model pixel: a few px at 64 x 64, below min_component_area: removed
    mask, verdict = to_mask(prob, (64, 64), s)
    assert verdict == "accepted" and mask is not None and mask.shape == (64, 64)
    assert mask[30, 34] and not mask[0, 0] and not border_excess(mask, s.max_border_fraction)
    speck = np.zeros((32, 32), np.float32)
    speck[16, 16] = 0.81  # interpolated above 0.8 on a few px only: removed by the cleanup
    assert to_mask(speck, (64, 64), s) == (None, "empty")
    assert to_mask(np.full((32, 32), 0.79, np.float32), (64, 64), s) == (None, "empty")
    edge = np.zeros((32, 32), np.float32)
    edge[:, :6] = 0.9  # a band along the left side: the whole left column
    assert to_mask(edge, (64, 64), s) == (None, "border")
    corner = np.zeros((32, 32), np.float32)
    corner[:8, :8] = 0.9  # touches two borders, a quarter of each side: within the 1/3 rule
    assert to_mask(corner, (64, 64), s)[1] == "accepted"


def test_textual_inversion_updates_only_the_new_token_rows(tmp_path: Path) -> None:
    from anoaug.generators.diffusion.sd.loading import load_components
    from anoaug.generators.diffusion.sd.tiny_stand_in import make_tiny_stable_diffusion

    comps = load_components(make_tiny_stable_diffusion(tmp_path / "sd", inpainting=True))
    emb = comps.text_encoder.get_input_embeddings()
    before = emb.weight.detach().clone()
    unet_before = {k: v.clone() for k, v in comps.unet.state_dict().items()}
    masks = {"crack": [np.pad(np.ones((6, 20), bool), 13)], "dent": [np.pad(np.ones((12, 12), bool), 10)]}
    s = LearnedMasksSettings(tokens=3, train_steps=3, batch_size=2, lr=0.05, resolution=32)
    trainer = MaskTrainer(comps, masks, s, torch.device("cpu"), seed=0)
    trainer.train()
    trainer.finish()
    after = emb.weight.detach()
    new = trainer.learned.bank.new_ids
    assert len(new) == 6 and all(len(v) == 3 for v in trainer.learned.tokens.values())
    assert trainer.learned.prompts["crack"].count("<mask-crack-") == 3
    old = [i for i in range(after.shape[0]) if i not in new]
    assert torch.equal(after[old], before[old])  # the base vocabulary is bit-identical
    assert all(not torch.allclose(after[i], after[new[0]]) for i in new[1:])  # they moved apart from init
    assert all(torch.equal(v, comps.unet.state_dict()[k]) for k, v in unet_before.items())  # UNet frozen
    assert not emb.weight.requires_grad and np.isfinite(trainer.losses).all()


def _mask_files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "masks").rglob("*.png"))}


def test_cli_learned_masks_deterministic_cached_and_inside_the_foreground(
    tmp_path: Path, demo_root: Path, pretrained_sd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = json.dumps(_learned(pretrained_sd))

    def masks(out: Path, cache: Path, seed: int = 0) -> tuple[int, str]:
        monkeypatch.setenv(art.CACHE_ENV, str(cache))
        return run_cli(
            ["masks", "demo/cap", "--data-root", str(demo_root), "--out", str(out), "-n", "6", "--seed", str(seed),
             "--set", "masks.source=learned", "--set", f"masks.learned={settings}", "--set", "masks.scale=[0.3,0.5]"]
        )  # fmt: skip

    code, text = masks(tmp_path / "a", tmp_path / "cache1")
    assert code == 0, text
    assert "learned masks:" in text and "accepted" in text
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    learned = summary["learned"]
    assert 0 < learned["acceptance_rate"] <= 1 and learned["accepted"] <= learned["sampled"]
    assert set(learned["per_type"]) == {"crack", "scratch"}
    assert all(t["area_real"]["n"] > 0 and t["area_bank"]["n"] > 0 for t in summary["per_type"].values())
    assert (tmp_path / "a" / "contact_sheet.png").is_file()

    # Same seed, fresh cache: trained and sampled again, the same masks byte for byte.
    code, text = masks(tmp_path / "b", tmp_path / "cache2")
    assert code == 0, text
    assert _mask_files(tmp_path / "a") == _mask_files(tmp_path / "b")
    # Same cache: nothing is trained again.
    monkeypatch.setattr(MaskTrainer, "train", lambda self, steps=None: pytest.fail("retrained"))
    code, text = masks(tmp_path / "c", tmp_path / "cache1")
    assert code == 0, text
    assert _mask_files(tmp_path / "a") == _mask_files(tmp_path / "c")
    monkeypatch.undo()
    code, text = masks(tmp_path / "d", tmp_path / "cache1", seed=1)
    assert code == 0, text
    assert _mask_files(tmp_path / "a") != _mask_files(tmp_path / "d")

    # Every placed mask lies inside the eroded foreground of its normal image.
    spec = load_spec("demo/cap")
    fg_cache = ForegroundCache(spec.masks.foreground, "object")
    for out in (tmp_path / "a", tmp_path / "d"):
        rows = pq.read_table(out / "masks.parquet").to_pylist()
        assert rows and all(r["source_mask"].startswith("learned:") for r in rows)
        for r in rows:
            mask = decode_mask((out / r["mask_path"]).read_bytes())
            allowed = erode(fg_cache.get(load_image(demo_root / r["normal_relpath"])), spec.masks.erode)
            assert mask.any() and not (mask & ~allowed).any()
    # Every pooled learned mask obeys the border rule.
    pools = list(Path(learned["artifact"]).glob("pool-*/*/*.png"))
    assert pools
    rule = _learned(pretrained_sd).get("max_border_fraction", LearnedMasksSettings().max_border_fraction)
    assert all(not border_excess(decode_mask(p.read_bytes()), float(rule)) for p in pools)  # type: ignore[arg-type]


def test_masks_stage_records_acceptance(
    tmp_path: Path, demo_root: Path, pretrained_sd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from anoaug.pipeline import stages

    monkeypatch.setenv(art.CACHE_ENV, str(tmp_path / "cache"))
    learned = _learned(pretrained_sd)
    spec = load_spec("demo/cap", {"masks": {"source": "learned", "scale": [0.3, 0.5], "learned": learned}})
    run_dir = tmp_path / "run"
    split = stages.stage_split(spec, demo_root, run_dir)
    assert not stages.needs_base_model(spec)  # a model folder: no pretrain stage
    res = stages.stage_masks(spec, demo_root, run_dir, split)
    info = json.loads((run_dir / "masks" / "stage.json").read_text())["info"]
    assert res.info["learned"]["sampled"] >= res.info["learned"]["accepted"] > 0
    assert info["learned"]["acceptance_rate"] == res.info["learned"]["acceptance_rate"]
    other = load_spec("demo/cap", {"masks": {"source": "learned", "learned": {**learned, "tokens": 3}}})
    assert stages.masks_fingerprint(other, split) != stages.masks_fingerprint(spec, split)
    bank, bank_tuned = load_spec("demo/cap"), load_spec("demo/cap", {"masks": {"learned": {"tokens": 3}}})
    assert stages.masks_fingerprint(bank, split) == stages.masks_fingerprint(bank_tuned, split)  # unused there
    on_base = load_spec("demo/cap", {"masks": {"source": "learned"}})
    assert stages.needs_base_model(on_base)
    with pytest.raises(SpecError, match="pretrain"):
        stages.with_base_masks(on_base, None)


@pytest.mark.slow
def test_run_with_learned_masks_on_the_base_model(
    tmp_path: Path, demo_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import FLOW_TINY
    from tests.test_flows_base_model import _pretrain_sets

    monkeypatch.setenv(art.CACHE_ENV, str(tmp_path / "cache"))
    learned = json.dumps(_learned("base", threshold=0.55, max_border_fraction=0.5, max_samples_per_type=12))
    args = ["run", "demo/cap", "--out", str(tmp_path / "runs"), "--data-root", str(demo_root), *FLOW_TINY,
            "--set", "generation.count_per_type=2", "--set", "masks.source=learned",
            "--set", f"masks.learned={learned}", "--set", "masks.scale=[0.3,0.5]", *_pretrain_sets()]  # fmt: skip
    code, text = run_cli(args)
    assert code == 0, text
    run_dir = tmp_path / "runs" / "demo" / "cap"
    manifest = json.loads((run_dir / "run.json").read_text())
    assert list(manifest["stages"])[:3] == ["split", "pretrain", "masks"]  # the base model before the masks
    info = json.loads((run_dir / "masks" / "stage.json").read_text())["info"]
    assert info["learned"]["accepted"] > 0
    summary = json.loads((run_dir / "masks" / "summary.json").read_text())
    assert Path(summary["spec"]["learned"]["model"]).resolve() == (run_dir / "pretrain" / "model").resolve()
    samples = pq.read_table(run_dir / "generate" / "cutpaste" / "samples.parquet").to_pylist()
    assert len(samples) == 4
    code, text = run_cli(args)  # unchanged: every stage reused, nothing retrained
    assert code == 0 and "up to date" in text, text


def test_model_base_outside_a_run_is_a_clear_error(tmp_path: Path, demo_root: Path) -> None:
    code, text = run_cli(
        ["masks", "demo/cap", "--data-root", str(demo_root), "--out", str(tmp_path / "m"), "-n", "2",
         "--set", "masks.source=learned"]
    )  # fmt: skip
    assert code == 2
    assert "anoaug pretrain" in " ".join(text.split()) and "masks.learned.model" in text
