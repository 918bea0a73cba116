"""DiffusionAD's networks (Zhang et al., "DiffusionAD: Norm-guided One-step Denoising Diffusion for Anomaly
Detection", 2023): a denoising UNet, the norm-guided one-step reconstruction and a segmentation subnetwork,
plus the Perlin anomaly source of the 'none' arm.

* Denoiser: diffusers ``UNet2DModel`` predicting the noise (epsilon), linear betas, T = 1000; diffusers'
  ``DDPMScheduler`` holds the schedule and adds the noise.
* Norm-guided one-step denoising: the input is noised to a lower timestep t_lo and to a noisier one t_hi;
  the noisier step's x0 estimate (which has lost the anomaly but also detail) is re-noised to t_lo with
  the lower step's noise estimate, and the difference to the lower step's noisy input corrects that
  estimate: ``eps_hat = eps_lo - sqrt(1 - abar_lo) * w * (x_hat_lo - x_lo)``; one step from ``eps_hat``
  gives the reconstruction. ``w = 0`` is the plain one-step x0 prediction from t_lo.
* Segmentation subnetwork: anomalib's DRÆM discriminative U-Net on concat(input, reconstruction)
  (6 channels) with one output channel (logits; the anomaly map is its sigmoid); image score = mean of
  the top-k map values.
* Loss = noise MSE (both timesteps, normal samples only) + 5 x focal + SmoothL1 on the mask.

Images are in [-1, 1] inside the model; the detector feeds [0, 1] tensors and scales them here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from anomalib.models.image.draem.torch_model import DiscriminativeSubNetwork
from diffusers import DDPMScheduler, UNet2DModel
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from anoaug.generators.perlin.generator import perlin_mask
from anoaug.masks.foreground import ForegroundCache
from anoaug.spec import ForegroundSection

# The authors' UNet channel multipliers by image side (base 128); other sides take the 256 px ones,
# shortened until the lowest resolution stays >= 4 px.
AUTHORS_MULTS = {256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}
AUTHORS_ATTENTION = (32, 16, 8)  # resolutions (px) of the authors' attention layers


@dataclass(frozen=True)
class Sizes:
    """Network sizes of one profile: denoising UNet and segmentation subnetwork."""

    base_channels: int
    channel_mults: tuple[int, ...]
    layers_per_block: int
    attention_resolutions: tuple[int, ...]  # feature-map sides (px) with self-attention; () = lowest only
    norm_groups: int
    seg_width: int


SMALL = Sizes(16, (1, 2, 4, 4), 1, (), 8, 16)  # cpu-tiny: UNet ~1.1M parameters, attention at the lowest level


def authors_sizes(image_size: int) -> Sizes:
    """The authors' sizes (base 128, 2 residual blocks per level, attention at 32/16/8 px, seg base 64)."""
    mults = AUTHORS_MULTS.get(image_size, AUTHORS_MULTS[256])
    while len(mults) > 1 and image_size // 2 ** (len(mults) - 1) < 4:
        mults = mults[:-1]
    return Sizes(128, mults, 2, AUTHORS_ATTENTION, 32, 64)


def build_unet(image_size: int, sizes: Sizes, num_train_timesteps: int = 1000) -> UNet2DModel:
    """The epsilon-predicting denoiser: one diffusers down/up block per channel multiplier."""
    channels = tuple(sizes.base_channels * m for m in sizes.channel_mults)
    sides = [image_size // 2**i for i in range(len(channels))]
    attend = set(sizes.attention_resolutions) or {sides[-1]}
    down = tuple("AttnDownBlock2D" if s in attend else "DownBlock2D" for s in sides)
    up = tuple(("AttnUpBlock2D" if s in attend else "UpBlock2D") for s in reversed(sides))
    return UNet2DModel(
        sample_size=image_size,
        in_channels=3,
        out_channels=3,
        block_out_channels=channels,
        down_block_types=down,
        up_block_types=up,
        layers_per_block=sizes.layers_per_block,
        norm_num_groups=sizes.norm_groups,
        attention_head_dim=max(8, sizes.base_channels // 4),
        num_train_timesteps=num_train_timesteps,
    )


def top_k(image_size: int, k_at_256: int = 50) -> int:
    """k of the image score (mean of the top-k map values): the authors' 50 at 256 px, scaled by area."""
    return max(1, round(k_at_256 * image_size * image_size / 256**2))


@dataclass
class Output:
    """Inference on a batch: image scores (B,), anomaly maps (B, H, W), reconstructions (B, 3, H, W) in [0, 1]."""

    pred_score: torch.Tensor
    anomaly_map: torch.Tensor
    reconstruction: torch.Tensor


class DiffusionADModel(nn.Module):
    """Denoising UNet + segmentation subnetwork; ``forward`` is inference at the fixed evaluation timesteps."""

    def __init__(
        self,
        image_size: int,
        sizes: Sizes,
        num_train_timesteps: int = 1000,
        eval_timesteps: tuple[int, int] = (200, 400),
        condition_w: float = 1.0,
        k: int | None = None,
    ) -> None:
        super().__init__()
        self.unet = build_unet(image_size, sizes, num_train_timesteps)
        self.seg = DiscriminativeSubNetwork(in_channels=6, out_channels=1, base_width=sizes.seg_width)
        self.scheduler = DDPMScheduler(
            num_train_timesteps=num_train_timesteps, beta_schedule="linear", prediction_type="epsilon"
        )
        self.register_buffer("alphas_cumprod", self.scheduler.alphas_cumprod.clone().float(), persistent=False)
        self.eval_timesteps = eval_timesteps
        self.condition_w = condition_w
        self.k = k or top_k(image_size)
        self.noise_generator: torch.Generator | None = None  # inference noise (set by the detector per seed)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    def _abar(self, t: torch.Tensor) -> torch.Tensor:
        return self.alphas_cumprod[t].view(-1, 1, 1, 1)

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x0 from x_t and a noise estimate, for per-sample timesteps.

        By hand: ``DDPMScheduler.step`` computes the same for one scalar timestep only and also samples x_{t-1}.
        """
        abar = self._abar(t)
        return (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()

    def one_step(
        self,
        x0: torch.Tensor,
        t_lo: torch.Tensor,
        t_hi: torch.Tensor,
        noise_lo: torch.Tensor,
        noise_hi: torch.Tensor,
        condition_w: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Norm-guided one-step denoising of ``x0`` ([-1, 1]): (reconstruction, eps_lo, eps_hi).

        Both noisy inputs go through the UNet as one batch.
        """
        w = self.condition_w if condition_w is None else condition_w
        x_lo = self.scheduler.add_noise(x0, noise_lo, t_lo)
        x_hi = self.scheduler.add_noise(x0, noise_hi, t_hi)
        eps = self.unet(torch.cat([x_lo, x_hi]), torch.cat([t_lo, t_hi])).sample
        eps_lo, eps_hi = eps.chunk(2)
        x0_hi = self.predict_x0(x_hi, t_hi, eps_hi).clamp(-1, 1)
        x_hat_lo = self.scheduler.add_noise(x0_hi, eps_lo, t_lo)  # the noisier estimate, re-noised to t_lo
        eps_hat = eps_lo - (1 - self._abar(t_lo)).sqrt() * w * (x_hat_lo - x_lo)
        return self.predict_x0(x_lo, t_lo, eps_hat).clamp(-1, 1), eps_lo, eps_hi

    def segment(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """Anomaly logits (B, 1, H, W) of input and reconstruction (both [-1, 1])."""
        return self.seg(torch.cat([x, recon], dim=1))

    def training_loss(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        less_t_range: int = 300,
        focal_weight: float = 5.0,
        smooth_l1_weight: float = 1.0,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Joint loss on (possibly anomalous) images [0, 1] and their masks (B, 1, H, W).

        Timesteps: t_lo in [0, less_t_range), t_hi in [less_t_range, T), drawn from torch's RNG. The noise
        loss counts on normal samples (empty mask) only; a batch without one gives a zero noise loss.
        """
        x = images * 2 - 1
        b, dev = x.shape[0], x.device
        t_lo = torch.randint(0, less_t_range, (b,), device=dev)
        t_hi = torch.randint(less_t_range, self.num_train_timesteps, (b,), device=dev)
        n_lo, n_hi = torch.randn_like(x), torch.randn_like(x)
        recon, eps_lo, eps_hi = self.one_step(x, t_lo, t_hi, n_lo, n_hi)
        per_sample = (eps_lo - n_lo).pow(2).flatten(1).mean(1) + (eps_hi - n_hi).pow(2).flatten(1).mean(1)
        normal = (masks.flatten(1).amax(1) == 0).float()
        noise = (per_sample * normal).sum() / normal.sum().clamp(min=1)
        logits = self.segment(x, recon)
        target = masks.float()
        focal = sigmoid_focal_loss(logits, target, alpha=-1, gamma=2, reduction="mean")
        smooth = F.smooth_l1_loss(logits.sigmoid(), target)
        loss = noise + focal_weight * focal + smooth_l1_weight * smooth
        return loss, {"noise": noise.detach(), "focal": focal.detach(), "smooth_l1": smooth.detach()}

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, condition_w: float | None = None) -> torch.Tensor:
        """One-step reconstructions ([-1, 1]) of images [0, 1] at the evaluation timesteps."""
        x = images * 2 - 1
        b = x.shape[0]
        lo, hi = self.eval_timesteps
        t_lo = torch.full((b,), lo, dtype=torch.long, device=x.device)
        t_hi = torch.full((b,), hi, dtype=torch.long, device=x.device)
        gen = self.noise_generator
        noise = torch.randn((2, *x.shape), generator=gen, device=gen.device if gen else "cpu").to(x)
        return self.one_step(x, t_lo, t_hi, noise[0], noise[1], condition_w)[0]

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> Output:
        """Scores, maps and reconstructions of images [0, 1] (B, 3, H, W)."""
        recon = self.reconstruct(images)
        amap = self.segment(images * 2 - 1, recon).sigmoid()[:, 0]
        k = min(self.k, amap[0].numel())
        score = amap.flatten(1).topk(k, dim=1).values.mean(1)
        return Output(score, amap, (recon + 1) / 2)


def shuffled_tiles(image: np.ndarray, rng: np.random.Generator, grid: int = 8) -> np.ndarray:
    """The image cut into grid x grid tiles, shuffled (DiffusionAD's self-augmented anomaly source)."""
    h, w = image.shape[:2]
    th, tw = h // grid, w // grid
    core = image[: th * grid, : tw * grid]
    tiles = core.reshape(grid, th, grid, tw, -1).transpose(0, 2, 1, 3, 4).reshape(grid * grid, th, tw, -1)
    tiles = tiles[rng.permutation(grid * grid)]
    out = image.copy()
    out[: th * grid, : tw * grid] = tiles.reshape(grid, grid, th, tw, -1).transpose(0, 2, 1, 3, 4).reshape(
        th * grid, tw * grid, -1
    )
    return out


class PerlinAugmenter(nn.Module):
    """The 'none' arm's anomalies: ``images (B, 3, H, W) [0, 1] -> (augmented, masks (B, 1, H, W))``.

    Same call as the DRÆM detector's ``PairAugmenter``. Each image is made anomalous with ``probability``:
    a DRÆM Perlin mask, restricted to the object's foreground for object categories (anoaug's foreground
    extraction, cached), filled with a texture (``textures``, when given) or with the image's own 8x8
    shuffled tiles, blended as ``I (1 - M) + (1 - beta) M A + beta M I`` with beta ~ U(beta range). Random
    choices come from torch's RNG (one draw per batch seeds numpy), so ``seed_everything`` fixes them.
    """

    def __init__(
        self,
        textures: Sequence[np.ndarray] = (),
        kind: str = "texture",
        probability: float = 0.5,
        beta: tuple[float, float] = (0.2, 0.8),
        perlin_scale: int = 6,
        threshold: float = 0.5,
        min_pixels: int = 16,
        tries: int = 10,
    ) -> None:
        super().__init__()
        self.textures = [np.asarray(t, np.uint8) for t in textures]
        self.foreground = ForegroundCache(ForegroundSection(), "object") if kind == "object" else None
        self.probability, self.beta = probability, beta
        self.perlin_scale, self.threshold, self.min_pixels, self.tries = perlin_scale, threshold, min_pixels, tries

    def _mask(self, arr: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
        shape = arr.shape[:2]
        fg = self.foreground.get(arr) if self.foreground is not None else None
        for _ in range(self.tries):
            m = perlin_mask(shape, rng, self.perlin_scale, self.threshold)
            if fg is not None:
                m &= fg
            if m.sum() >= min(self.min_pixels, m.size // 4):
                return m
        return None

    def _source(self, arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if not self.textures:
            return shuffled_tiles(arr, rng)
        tex = self.textures[int(rng.integers(len(self.textures)))]
        tex = cv2.resize(tex, arr.shape[1::-1], interpolation=cv2.INTER_AREA)
        if rng.random() < 0.5:
            tex = tex[:, ::-1]
        return np.ascontiguousarray(np.rot90(tex, int(rng.integers(4))) if tex.shape[0] == tex.shape[1] else tex)

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = img.shape
        rng = np.random.default_rng(int(torch.randint(2**31 - 1, ())))
        out, masks = img.clone(), torch.zeros((b, 1, h, w), dtype=img.dtype, device=img.device)
        cpu = (img.detach().float().cpu().permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        for i in range(b):
            if rng.random() >= self.probability:
                continue
            m = self._mask(cpu[i], rng)
            if m is None:
                continue
            src = torch.from_numpy(self._source(cpu[i], rng)).permute(2, 0, 1).to(img) / 255.0
            mask = torch.from_numpy(m).to(img)[None]
            beta = float(rng.uniform(*self.beta))
            out[i] = img[i] * (1 - mask) + (1 - beta) * src * mask + beta * img[i] * mask
            masks[i] = mask
        return out, masks
