"""Training of the tiny pixel-space defect UNet from a few defects (CPU, from scratch).

Crops around the generator-training defects (class = defect type) and normal crops with a borrowed
defect-shaped hole (class = normal) are augmented heavily with albumentations. The loss is the
v-prediction MSE weighted to the mask region plus a small weight on the context, so the seam is
learned too (the masked loss of AnomalyDiffusion). Training stops at ``train_steps`` or when the
cumulative time budget is spent, checkpoints periodically, and resumes from its checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from anoaug.generators.compositing import dilate_mask
from anoaug.generators.diffusion.crops import crop_window, piece_sides

log = logging.getLogger("anoaug.diffusion")

CHECKPOINT_FILE = ".train_state.pt"  # leading dot: not part of the artifact hash (see base.artifact_hash)


# ----------------------------------------------------------------------------- windows and mask channel


# Mask-channel levels: generated = defect and band; known context = object or background (the trimap).
DEFECT, BAND, OBJECT, BACKGROUND = 1.0, 0.5, 0.25, 0.0


def mask_channel(mask: np.ndarray, band: int, obj: np.ndarray | None = None) -> np.ndarray:
    """1 on the defect, 0.5 on a ``band``-px ring around it (also generated); on the known context 0.25
    where ``obj`` (the trimap's object) is True and 0 elsewhere. Without ``obj`` the context is 0."""
    m = mask.astype(bool)
    out = np.zeros(m.shape, np.float32) if obj is None else obj.astype(np.float32) * OBJECT
    out[dilate_mask(m, band)] = BAND
    out[m] = DEFECT
    return out


# ----------------------------------------------------------------------------- data


@dataclass
class CropExample:
    image: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray  # (H, W) bool
    label: int
    obj: np.ndarray | None = None  # (H, W) bool object foreground (trimap); None = not conditioned on it


def build_augment(crop: int, kind: str) -> A.Compose:
    """Heavy augmentation for few defects: geometry on a 1.5x window, then a centre crop, then colour."""
    rotate = (-180, 180) if kind == "object" else (-15, 15)  # textures keep their weave orientation
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.Affine(
                scale=(0.8, 1.25),
                rotate=rotate,
                shear=(-8, 8),
                border_mode=cv2.BORDER_REFLECT_101,
                p=0.9,
            ),
            A.CenterCrop(crop, crop),
            A.ColorJitter(brightness=0.15, contrast=0.15, saturation=0.15, hue=0.02, p=0.8),
            A.OneOf([A.GaussianBlur(blur_limit=(3, 3)), A.GaussNoise(std_range=(0.01, 0.03))], p=0.2),
        ],
        additional_targets={"obj": "mask"},  # the trimap's object mask follows the geometry
    )


class CropSampler:
    """Draws augmented training batches: defect crops (class = type) and normal crops (class = normal).

    Random state is a numpy Generator (saved in checkpoints), plus albumentations seeded from it.
    """

    def __init__(
        self,
        defects: Sequence[CropExample],
        normals: Sequence[np.ndarray],
        crop: int,
        band: int,
        kind: str = "object",
        normal_fraction: float = 0.25,
        seed: int = 0,
        normal_objs: Sequence[np.ndarray] | None = None,
    ) -> None:
        """``normal_objs``: the object foreground of each normal; given (and ``obj`` on every defect), the
        mask channel carries the trimap (see `mask_channel`)."""
        if not defects:
            raise ValueError("no defect examples to train on")
        self.defects = list(defects)
        self.normals = list(normals)
        self.trimap = normal_objs is not None
        if self.trimap and (len(normal_objs) != len(self.normals) or any(d.obj is None for d in self.defects)):
            raise ValueError("trimap training needs an object mask for every normal and every defect")
        self.normal_objs = list(normal_objs) if normal_objs is not None else []
        self.crop, self.band = crop, band
        self.normal_fraction = normal_fraction if self.normals else 0.0
        self.normal_label = max(d.label for d in self.defects) + 1
        self.rng = np.random.default_rng(seed)
        self.augment = build_augment(crop, kind)
        self.pixels = [np.argwhere(d.mask) for d in self.defects]
        self.sides = [piece_sides(d.mask, crop, pts) for d, pts in zip(self.defects, self.pixels, strict=True)]

    def _defect_crop(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        d, pts = self.defects[i], self.pixels[i]
        for _ in range(8):
            if len(pts):
                k = self.rng.integers(len(pts))
                (cy, cx), side = pts[k], int(self.sides[i][k])
            else:
                cy, cx, side = d.mask.shape[0] / 2, d.mask.shape[1] / 2, self.crop
            cy += self.rng.uniform(-0.25, 0.25) * side
            cx += self.rng.uniform(-0.25, 0.25) * side
            big = int(round(side * 1.5))
            img = crop_window(d.image, cy, cx, big)
            msk = crop_window(d.mask.astype(np.uint8), cy, cx, big)
            obj = None if d.obj is None else crop_window(d.obj.astype(np.uint8), cy, cx, big)
            img, msk, obj = self._resize_augment(img, msk, obj)
            if msk.any():
                return img, msk, obj
        return img, msk, obj

    def _resize_augment(
        self, img: np.ndarray, msk: np.ndarray, obj: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        big = int(round(self.crop * 1.5))
        if img.shape[0] != big:
            img = cv2.resize(img, (big, big), interpolation=cv2.INTER_AREA)
            msk = cv2.resize(msk.astype(np.float32), (big, big), interpolation=cv2.INTER_LINEAR) > 0.5
            if obj is not None:
                obj = cv2.resize(obj.astype(np.float32), (big, big), interpolation=cv2.INTER_LINEAR) > 0.5
        self.augment.set_random_seed(int(self.rng.integers(2**31 - 1)))
        extra = {} if obj is None else {"obj": obj.astype(np.uint8)}
        out = self.augment(image=img, mask=msk.astype(np.uint8), **extra)
        return out["image"], out["mask"].astype(bool), None if obj is None else out["obj"].astype(bool)

    def _normal_crop(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        j = int(self.rng.integers(len(self.normals)))
        normal = self.normals[j]
        _, hole, _ = self._defect_crop(int(self.rng.integers(len(self.defects))))  # a defect-shaped hole
        h, w = normal.shape[:2]
        big = int(round(self.crop * 1.5))
        cy, cx = self.rng.uniform(big / 3, h - big / 3), self.rng.uniform(big / 3, w - big / 3)
        img = crop_window(normal, cy, cx, big)
        obj = crop_window(self.normal_objs[j].astype(np.uint8), cy, cx, big) if self.trimap else None
        img, _, obj = self._resize_augment(img, np.zeros(img.shape[:2], bool), obj)
        return img, hole, obj

    def batch(self, n: int) -> dict[str, torch.Tensor]:
        """``image`` (n,3,S,S) in [-1,1], ``mask`` (n,1,S,S) mask channel, ``label`` (n,) class index."""
        imgs, masks, labels = [], [], []
        for _ in range(n):
            if self.rng.random() < self.normal_fraction:
                img, msk, obj = self._normal_crop()
                label = self.normal_label
            else:
                i = int(self.rng.integers(len(self.defects)))
                img, msk, obj = self._defect_crop(i)
                label = self.defects[i].label
            imgs.append(img)
            masks.append(mask_channel(msk, self.band, obj))
            labels.append(label)
        image = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 127.5 - 1
        mask = torch.from_numpy(np.stack(masks))[:, None]
        return {"image": image, "mask": mask, "label": torch.tensor(labels, dtype=torch.long)}


# ----------------------------------------------------------------------------- training loop


@dataclass
class TrainConfig:
    train_steps: int = 2500
    max_train_seconds: float | None = None  # optional wall-clock cap (cumulative over resumes)
    batch: int = 16
    lr: float = 1e-3
    warmup_steps: int = 100
    ctx_weight: float = 0.1  # loss weight on known context (mask weight is 1)
    ema_decay: float = 0.999
    checkpoint_every_s: float = 60.0
    bf16: bool = False
    seed: int = 0

    def signature(self) -> dict[str, Any]:
        """Settings that must match to resume (budgets may change between runs)."""
        d = asdict(self)
        for k in ("train_steps", "max_train_seconds", "checkpoint_every_s"):
            d.pop(k)
        return d


@dataclass
class TrainProgress:
    step: int
    total: int
    loss: float
    elapsed_s: float
    steps_per_s: float


@dataclass
class TrainResult:
    steps: int
    elapsed_s: float
    stopped_by: str  # "steps" or "time" (the cap stopped it before the planned steps)
    losses: list[float] = field(default_factory=list)  # mean loss per logging interval
    resumed_from: int = 0


def make_noise_scheduler(num_train_timesteps: int = 1000) -> DDPMScheduler:
    """Training schedule: cosine betas (good for small pixel images) and v-prediction."""
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        clip_sample=False,
        timestep_spacing="trailing",  # few-step samplers start from the last (pure-noise) timestep
    )


def masked_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted MSE: sum(w * (pred - target)^2) / sum(w * C)."""
    w = weight.expand_as(pred)
    return ((pred.float() - target.float()) ** 2 * w).sum() / w.sum().clamp_min(1e-8)


def _log_progress(p: TrainProgress) -> None:
    log.info("step %d/%d  loss %.4f  %.1f steps/s  %.0fs", p.step, p.total, p.loss, p.steps_per_s, p.elapsed_s)


def train_tiny(
    model: UNet2DModel,
    sampler: CropSampler,
    noise_scheduler: DDPMScheduler,
    cfg: TrainConfig,
    checkpoint: Path | None = None,
    progress: Callable[[TrainProgress], None] | None = _log_progress,
    progress_every: int = 50,
    progress_every_s: float = 30.0,
    device: torch.device | str = "cpu",
) -> tuple[UNet2DModel, TrainResult]:
    """Train ``model`` in place; returns the EMA weights copied into ``model`` and a summary.

    ``progress`` is called every ``progress_every`` steps (which is also the loss-history interval) and at
    least every ``progress_every_s`` seconds.

    If ``checkpoint`` exists, training resumes from it (same model shape and ``cfg.signature()``
    required) and the time cap counts the time already spent. The same seed and steps give the same weights
    whatever the machine's load (at a fixed torch thread count), with or without resumes.

    Training runs on ``device``; random draws (noise, timesteps, crops) come from CPU generators, so a run
    draws the same numbers on every device. The returned model is on ``device``.
    """
    from anoaug.generators.diffusion.tiny.unet import denoise, model_input

    device = torch.device(device)
    model.train()
    model.to(device, memory_format=torch.channels_last)  # ~2x faster convolutions on CPU (oneDNN)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4, fused=True)
    sched = get_scheduler("constant_with_warmup", opt, num_warmup_steps=cfg.warmup_steps)
    ema = EMAModel(model.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, inv_gamma=1.0, power=2 / 3)
    gen = torch.Generator().manual_seed(cfg.seed)
    step, spent, losses, resumed_from = 0, 0.0, [], 0

    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if state.get("signature") != cfg.signature():
            raise ValueError(
                f"checkpoint {checkpoint} was written with different training settings "
                f"({state.get('signature')} != {cfg.signature()}); delete it to start over"
            )
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise ValueError(f"checkpoint {checkpoint} does not fit this model: {exc}") from None
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["lr_scheduler"])
        ema.load_state_dict(state["ema"])
        ema.to(device)
        gen.set_state(state["torch_rng"])
        sampler.rng.bit_generator.state = state["np_rng"]
        step, spent, losses = state["step"], state["elapsed_s"], list(state["losses"])
        resumed_from = step
        log.info("resumed from %s at step %d (%.0fs spent)", checkpoint, step, spent)

    def save() -> None:
        if checkpoint is None:
            return
        state = {
            "step": step,
            "elapsed_s": spent + (time.perf_counter() - t0),
            "losses": losses,
            "signature": cfg.signature(),
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "lr_scheduler": sched.state_dict(),
            "ema": ema.state_dict(),
            "torch_rng": gen.get_state(),
            "np_rng": sampler.rng.bit_generator.state,
        }
        tmp = checkpoint.with_name(checkpoint.name + ".tmp")
        torch.save(state, tmp)
        tmp.replace(checkpoint)

    t0 = time.perf_counter()
    last_ckpt, last_report, run_steps, acc, acc_n = t0, t0, 0, 0.0, 0
    stopped_by = "steps"
    while step < cfg.train_steps:
        if cfg.max_train_seconds is not None and spent + (time.perf_counter() - t0) >= cfg.max_train_seconds:
            stopped_by = "time"
            break
        b = sampler.batch(cfg.batch)
        x0, mch = b["image"], b["mask"]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (x0.shape[0],), generator=gen)
        if device.type != "cpu":
            x0, mch, noise, t = (v.to(device) for v in (x0, mch, noise, t))
        noisy = noise_scheduler.add_noise(x0, noise, t)
        inp = model_input(noisy, x0, mch).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            pred = denoise(model, inp, t, b["label"].to(device))
        target = noise_scheduler.get_velocity(x0, noise, t)
        weight = torch.where(mch >= BAND, torch.ones_like(mch), torch.full_like(mch, cfg.ctx_weight))
        loss = masked_mse(pred, target, weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.step(model.parameters())
        step += 1
        run_steps += 1
        acc += float(loss.detach())
        acc_n += 1
        interval_done = step % progress_every == 0 or step == cfg.train_steps
        now = time.perf_counter()
        if progress is not None and (interval_done or now - last_report >= progress_every_s):
            el = now - t0
            progress(TrainProgress(step, cfg.train_steps, acc / acc_n, spent + el, run_steps / max(el, 1e-9)))
            last_report = now
        if interval_done:
            losses.append(acc / acc_n)
            acc, acc_n = 0.0, 0
        if time.perf_counter() - last_ckpt >= cfg.checkpoint_every_s:
            save()
            last_ckpt = time.perf_counter()
    if acc_n:
        losses.append(acc / acc_n)
    save()
    elapsed = spent + (time.perf_counter() - t0)
    ema.copy_to(model.parameters())
    model.eval()
    model.to(memory_format=torch.contiguous_format)
    return model, TrainResult(step, elapsed, stopped_by, losses, resumed_from)
