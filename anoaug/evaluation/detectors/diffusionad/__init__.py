"""DiffusionAD (Zhang et al. 2023): norm-guided one-step denoising + a segmentation subnetwork, fed our anomalies.

anomalib does not ship DiffusionAD; ``torch_model`` builds it from diffusers' ``UNet2DModel`` /
``DDPMScheduler`` and anomalib's DRÆM discriminative U-Net (the paper's segmentation subnetwork), and
``lightning_model`` trains both jointly. Like the DRÆM detector it trains on normal images and makes
about half of them anomalous: with the arm's defect pairs (real few, a generator's shards), or in the
'none' arm with its own Perlin anomalies (restricted to the object's foreground, filled with textures from
``texture_dir`` or the image's own shuffled tiles). The last epoch is evaluated (no checkpoint chosen on
evaluation data). Sizes follow the profile: a small UNet under ``cpu-tiny``, the authors' (base 128)
under ``gpu``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field, model_validator

from anoaug.errors import AnoaugError
from anoaug.evaluation.detectors.base import Detector, FitContext, Prediction, register_detector
from anoaug.evaluation.detectors.draem import discriminative_unet_size_problems
from anoaug.registry import Settings

if TYPE_CHECKING:
    from anoaug.evaluation.protocol import Sample
    from anoaug.spec import EvaluationSection

MAX_TEXTURES = 64


class DiffusionADSettings(Settings):
    """``evaluation.params.diffusionad`` (defaults: the authors' values)."""

    size: Literal["auto", "small", "authors"] = Field(
        "auto", description="Network sizes: small (UNet ~1M parameters), authors (UNet base 128), auto: by profile."
    )
    base_channels: int | None = Field(None, ge=8, description="UNet base width (default: the size's).")
    seg_width: int | None = Field(None, ge=4, description="Segmentation subnetwork base width (default: the size's).")
    num_train_timesteps: int = Field(1000, ge=10, description="T, linear betas.")
    less_t_range: int = Field(300, ge=1, description="Lower timestep from [0, less_t_range), noisier from the rest.")
    condition_w: float = Field(1.0, ge=0, description="Weight w of the norm guidance (0: plain one-step x0).")
    eval_timesteps: tuple[int, int] = Field((200, 400), description="(lower, noisier) timesteps at evaluation.")
    lr: float = Field(1e-4, gt=0)
    epochs: int | None = Field(None, ge=1, description="Default: evaluation.epochs.")
    steps_per_epoch: int | None = Field(
        None, ge=1, description="Default: evaluation.steps_per_epoch, else 2 x normal images / batch size."
    )
    focal_weight: float = Field(5.0, ge=0)
    smooth_l1_weight: float = Field(1.0, ge=0)
    top_k: int | None = Field(None, ge=1, description="Image score = mean of the top-k map values (50 at 256 px).")
    anomaly_probability: float = Field(0.5, ge=0, le=1, description="Share of training images made anomalous.")
    beta: tuple[float, float] = Field((0.2, 0.8), description="'none' arm: opacity range of the normal image.")
    texture_dir: str | None = Field(None, description="'none' arm: texture images (e.g. DTD); default: own tiles.")
    foreground: Literal["auto", "whole"] = Field(
        "auto", description="'none' arm: Perlin masks inside the object (auto, for object categories) or anywhere."
    )
    reconstructions: bool = Field(True, description="Save the one-step reconstructions in predictions.npz.")

    @model_validator(mode="after")
    def _timesteps(self) -> DiffusionADSettings:
        lo, hi = self.eval_timesteps
        if not 0 < self.less_t_range < self.num_train_timesteps:
            raise ValueError(f"less_t_range must be in (0, num_train_timesteps={self.num_train_timesteps})")
        if not (0 <= lo < self.less_t_range <= hi < self.num_train_timesteps):
            raise ValueError(
                f"eval_timesteps {list(self.eval_timesteps)} must be [lower < less_t_range <= noisier < "
                f"num_train_timesteps]"
            )
        if not 0 <= self.beta[0] <= self.beta[1] <= 1:
            raise ValueError(f"beta must be [low, high] within [0, 1], got {list(self.beta)}")
        return self


def _load_textures(texture_dir: str, size: int) -> list[np.ndarray]:
    import cv2

    from anoaug.data.io import is_image_file, load_image

    root = Path(texture_dir).expanduser()
    if not root.is_dir():
        raise AnoaugError("evaluation.params.diffusionad.texture_dir is not a directory", root)
    paths = sorted(p for p in root.rglob("*") if is_image_file(p))[:MAX_TEXTURES]
    if not paths:
        raise AnoaugError("evaluation.params.diffusionad.texture_dir holds no images", root)
    return [cv2.resize(load_image(p), (size, size), interpolation=cv2.INTER_AREA) for p in paths]


@register_detector
class DiffusionADDetector(Detector):
    """DiffusionAD trained on normals; anomalies from the arm's defect pairs (else its own Perlin ones)."""

    name = "diffusionad"
    Settings = DiffusionADSettings
    task = "ad"
    needs_defects = "one-class"
    none_arm_note = (
        " DiffusionAD ('diffusionad') makes its own Perlin anomalies in 'none' (inside the object's foreground, "
        "filled with shuffled tiles of the image unless params.diffusionad.texture_dir names textures); in the other "
        "arms its anomalies are the arm's defect pairs, pasted under their masks onto normal training images."
    )

    @classmethod
    def check(cls, cfg: EvaluationSection) -> list[str]:
        return discriminative_unet_size_problems(cls.name, cfg.image_size)

    def sizes(self, image_size: int, profile: str):  # noqa: ANN201 (torch_model.Sizes; torch-free import)
        """The network sizes for this profile and image side, with the settings' overrides."""
        from dataclasses import replace

        from anoaug.evaluation.detectors.diffusionad.torch_model import SMALL, authors_sizes

        s = self.settings
        size = s.size if s.size != "auto" else ("authors" if profile == "gpu" else "small")
        out = authors_sizes(image_size) if size == "authors" else SMALL
        if s.base_channels is not None:
            out = replace(out, base_channels=s.base_channels, norm_groups=min(out.norm_groups, s.base_channels))
        if s.seg_width is not None:
            out = replace(out, seg_width=s.seg_width)
        return out

    def _augmenter(self, normals: list[Sample], defects: list[Sample], size: int):  # noqa: ANN202
        """(augmenter module, description): the arm's pairs, else DiffusionAD's own Perlin anomalies."""
        from anoaug.evaluation.detectors.common import pair_source
        from anoaug.evaluation.detectors.diffusionad.torch_model import PerlinAugmenter

        s = self.settings
        if defects:
            return pair_source(defects, s.anomaly_probability, flips=True)
        kind = "texture"
        if s.foreground == "auto":
            from anoaug.masks.foreground import detect_kind

            kind = detect_kind([n.image for n in normals])
        textures = _load_textures(s.texture_dir, size) if s.texture_dir else []
        fill = f"{len(textures)} textures" if textures else "shuffled 8x8 tiles"
        where = "inside the foreground" if kind == "object" else "anywhere"
        aug = PerlinAugmenter(textures, kind, s.anomaly_probability, s.beta)
        return aug, f"perlin ({where}, {fill})"

    def fit(self, train: list[Sample], context: FitContext, seed: int) -> None:
        """The settings' epochs over the normals of ``train``; its defects are the anomaly source."""
        import time

        import lightning as L

        from anoaug.evaluation.datasets import balanced_loader, make_trainer
        from anoaug.evaluation.detectors.diffusionad.lightning_model import DiffusionADModule
        from anoaug.evaluation.detectors.diffusionad.torch_model import DiffusionADModel

        cfg, s = context.cfg, self.settings
        normals = [x for x in train if not x.label]
        defects = [x for x in train if x.label]
        if not normals:
            raise AnoaugError("diffusionad needs normal training images")
        size = normals[0].image.shape[0]
        t0 = time.perf_counter()
        L.seed_everything(seed, verbose=False)
        sizes = self.sizes(size, context.profile)
        model = DiffusionADModel(size, sizes, s.num_train_timesteps, s.eval_timesteps, s.condition_w, s.top_k)
        augmenter, self.source = self._augmenter(normals, defects, size)
        module = DiffusionADModule(model, augmenter, s.lr, s.less_t_range, s.focal_weight, s.smooth_l1_weight)
        steps = s.steps_per_epoch or cfg.steps_per_epoch
        loader = balanced_loader(normals, cfg.batch_size, seed, num_samples=steps * cfg.batch_size if steps else None)
        self.epochs = s.epochs or cfg.epochs
        make_trainer(self.epochs, device=context.device).fit(module, train_dataloaders=loader)
        self.model, self.seed, self.sizes_used = model.eval(), seed, sizes
        self.fit_seconds = time.perf_counter() - t0
        self.context = context

    def predict(self, eval_samples: list[Sample]) -> Prediction:
        import time

        import torch

        from anoaug.evaluation.datasets import plain_loader

        ctx = self._fitted()
        t0 = time.perf_counter()
        model = self.model.to(ctx.device).eval()
        model.noise_generator = torch.Generator().manual_seed(self.seed)  # the same noise for every arm
        scores, maps, recons = [], [], []
        with torch.no_grad():
            for batch in plain_loader(eval_samples, ctx.cfg.batch_size):
                out = model(batch.image.to(ctx.device))
                scores.append(out.pred_score.float().cpu())
                maps.append(out.anomaly_map.float().cpu())
                recons.append((out.reconstruction.float().cpu().permute(0, 2, 3, 1) * 255).round().to(torch.uint8))
        z = self.sizes_used
        n_params = sum(p.numel() for p in model.unet.parameters())
        info = {
            "implementation": f"anoaug diffusionad (UNet2DModel {n_params / 1e6:.1f}M, anomalies: {self.source})",
            "anomaly_source": self.source,
            "epochs": self.epochs,
            "unet_channels": [z.base_channels * m for m in z.channel_mults],
            "eval_timesteps": list(self.settings.eval_timesteps),
            "top_k": model.k,
            "fit_seconds": round(self.fit_seconds, 2),
            "predict_seconds": round(time.perf_counter() - t0, 2),
        }
        arrays = {"reconstructions": torch.cat(recons).numpy()} if self.settings.reconstructions else {}
        return Prediction(torch.cat(scores).numpy(), torch.cat(maps).numpy(), info=info, arrays=arrays)
