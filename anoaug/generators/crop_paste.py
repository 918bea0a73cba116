"""Crop&Paste: real defect pixels from the generator-training defects, pasted at the synthesized location.

The copy-paste augmentation of anomaly-synthesis baselines (e.g. "Defect-GAN"/"few-shot defect copy-paste"
comparisons; Ghiasi et al. CVPR 2021 for copy-paste in general). ``fit`` cuts every connected component
of every training defect mask out of its image (with a few pixels of context) and stores crop + mask in
the artifact. ``generate`` picks a crop of the requested defect type, transforms crop and mask together
(flips, 90-degree rotations and mild colour jitter with albumentations; the orientation whose aspect
ratio best fits the synthesized mask's box is kept), scales it uniformly so its defect area matches the
synthesized mask's, centres it on the synthesized mask's box, and blends it in: alpha feathering
(default) or Poisson blending (OpenCV seamlessClone). The drawn region is the crop's own defect mask
(inside the object, when a trimap is given), so the final mask is what was actually pasted; if that
region falls off the object the synthesized mask is used as the region instead (``info["fallback"]``).

Params: ``blend`` ("alpha" | "poisson" | "poisson-mixed" | "none"), ``feather`` (px, default 2),
``context`` (px of surroundings kept around each crop, default 6), ``min_pixels`` (smallest component
kept, default 9), ``jitter`` (colour jitter, default 0.05), ``max_scale`` (uniform scale clamp, 3.0).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np

from anoaug.data.io import load_image, load_mask
from anoaug.generators.base import (
    FitData,
    GenerationRequest,
    GenerationResult,
    Generator,
    GeneratorError,
    register,
)
from anoaug.generators.blending import BLEND_MODES, bbox, blend, seed_of

DEFAULTS: dict[str, Any] = {
    "blend": "alpha",
    "feather": 2.0,
    "context": 6,
    "min_pixels": 9,
    "jitter": 0.05,
    "max_scale": 3.0,
}
CROPS_INDEX = "crops.json"


@dataclass
class _Crop:
    image: np.ndarray  # (h, w, 3) uint8
    mask: np.ndarray  # (h, w) bool
    defect_type: str
    name: str
    relpath: str


@register
class CropPasteGenerator(Generator):
    """Crop&Paste: transformed real defect crops, blended at the synthesized location."""

    name = "crop-paste"

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__({**DEFAULTS, **(params or {})})
        unknown = set(self.params) - set(DEFAULTS)
        if unknown:
            raise GeneratorError(f"crop-paste: unknown params {sorted(unknown)}; known: {sorted(DEFAULTS)}")
        if self.params["blend"] not in BLEND_MODES:
            raise GeneratorError(f"crop-paste: blend must be one of {BLEND_MODES}, got {self.params['blend']!r}")
        j = float(self.params["jitter"])
        self._aug = A.Compose(
            [
                A.HorizontalFlip(p=0.5),
                A.VerticalFlip(p=0.5),
                A.RandomRotate90(p=1.0),
                A.ColorJitter(brightness=j, contrast=j, saturation=j, hue=min(j, 0.5) / 2, p=1.0),
            ]
        )
        self._crops: dict[str, list[_Crop]] = {}

    # --- fit / load ---------------------------------------------------------------------------

    def _fit(self, data: FitData, out_dir: Path, seed: int) -> None:
        if not data.defects:
            raise GeneratorError(f"crop-paste: category '{data.category}' has no generator-training defects")
        crop_dir = out_dir / "crops"
        crop_dir.mkdir(parents=True, exist_ok=True)
        ctx = int(self.params["context"])
        min_px = int(self.params["min_pixels"])
        index = []
        for d_i, ex in enumerate(sorted(data.defects, key=lambda d: d.relpath)):
            n, labels, stats, _ = cv2.connectedComponentsWithStats(ex.mask.astype(np.uint8), connectivity=8)
            comps = [c for c in range(1, n) if stats[c, cv2.CC_STAT_AREA] >= min_px]
            if not comps and ex.mask.sum() > 0:
                comps = [int(np.argmax(stats[1:, cv2.CC_STAT_AREA])) + 1]  # keep the largest, however small
            H, W = ex.mask.shape
            for c in comps:
                x, y, w, h = (int(v) for v in stats[c, :4])
                x0, y0, x1, y1 = max(0, x - ctx), max(0, y - ctx), min(W, x + w + ctx), min(H, y + h + ctx)
                name = f"{d_i:04d}_{c:03d}"
                crop = ex.image[y0:y1, x0:x1]
                cmask = (labels[y0:y1, x0:x1] == c).astype(np.uint8) * 255
                _write_png(crop_dir / f"{name}.png", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
                _write_png(crop_dir / f"{name}_mask.png", cmask)
                index.append(
                    {"name": name, "defect_type": ex.defect_type, "relpath": ex.relpath, "box": [x0, y0, x1, y1]}
                )
        (out_dir / CROPS_INDEX).write_text(json.dumps(index, indent=1, sort_keys=True))

    def _load(self, artifact_dir: Path, meta: dict[str, Any]) -> None:
        index_path = artifact_dir / CROPS_INDEX
        if not index_path.is_file():
            raise GeneratorError(f"crop-paste artifact has no {CROPS_INDEX}", artifact_dir)
        self._crops = {}
        for row in json.loads(index_path.read_text()):
            crop = _Crop(
                image=load_image(artifact_dir / "crops" / f"{row['name']}.png"),
                mask=load_mask(artifact_dir / "crops" / f"{row['name']}_mask.png"),
                defect_type=row["defect_type"],
                name=row["name"],
                relpath=row["relpath"],
            )
            self._crops.setdefault(crop.defect_type, []).append(crop)

    def fit(self, data: FitData, out_dir: str | Path, seed: int = 0) -> Path:
        out = super().fit(data, out_dir, seed)
        self._load(out, {})
        return out

    # --- generate -----------------------------------------------------------------------------

    def generate(self, batch: Sequence[GenerationRequest]) -> list[GenerationResult]:
        if not self._crops:
            raise GeneratorError("crop-paste: not fitted (call fit or Generator.load first)")
        return [self._one(req) for req in batch]

    def _one(self, req: GenerationRequest) -> GenerationResult:
        crops = self._crops.get(req.defect_type)
        if not crops:
            raise GeneratorError(
                f"crop-paste: no training crop of defect type '{req.defect_type}' "
                f"(have: {', '.join(sorted(self._crops))})"
            )
        box = bbox(req.mask)
        if box is None:
            raise GeneratorError("crop-paste: the requested mask is empty")
        rng = np.random.default_rng(req.seed)
        crop = crops[int(rng.integers(len(crops)))]
        self._aug.set_random_seed(seed_of(rng))
        t = self._aug(image=crop.image, mask=crop.mask.astype(np.uint8))
        c_img, c_mask = t["image"], t["mask"].astype(bool)
        c_img, c_mask = _best_orientation(c_img, c_mask, box)

        # Uniform scale: the crop's defect area becomes the synthesized mask's area.
        target_area = float(req.mask.sum())
        scale = float(np.sqrt(target_area / max(1.0, float(c_mask.sum()))))
        max_s = float(self.params["max_scale"])
        scale = float(np.clip(scale, 1.0 / max_s, max_s))
        ch, cw = c_mask.shape
        nh, nw = max(1, round(ch * scale)), max(1, round(cw * scale))
        c_img = cv2.resize(c_img, (nw, nh), interpolation=cv2.INTER_LINEAR if scale >= 1 else cv2.INTER_AREA)
        c_mask = cv2.resize(c_mask.astype(np.float32), (nw, nh), interpolation=cv2.INTER_LINEAR) >= 0.5
        if not c_mask.any():  # scaled below a pixel: keep the brightest-weight pixel
            c_mask[nh // 2, nw // 2] = True

        # Centre the crop's defect box on the synthesized mask's box.
        mb = bbox(c_mask)
        assert mb is not None
        x, y, w, h = box
        ox = round(x + w / 2 - (mb[0] + mb[2] / 2))
        oy = round(y + h / 2 - (mb[1] + mb[3] / 2))
        src, region = _place(req.normal, c_img, c_mask, ox, oy)
        region &= req.allowed
        fallback = False
        if region.sum() < max(1, 0.1 * min(target_area, float(c_mask.sum()))):
            region = req.mask.astype(bool).copy()  # the crop fell off the object: paste through the request
            fallback = True
        out, final, used = blend(req.normal, src, region, self.params["blend"], float(self.params["feather"]))
        info = {
            "crop": crop.name,
            "crop_source": crop.relpath,
            "scale": round(scale, 4),
            "offset": [int(ox), int(oy)],
            "blend": used,
            "fallback": fallback,
        }
        return GenerationResult(image=out, mask=final, info=info)


def _best_orientation(img: np.ndarray, mask: np.ndarray, box: tuple[int, int, int, int]) -> tuple[np.ndarray, ...]:
    """Rotate by 90 degrees when that brings the defect's aspect ratio closer to the target box's."""
    mb = bbox(mask)
    if mb is None:
        return img, mask
    target = np.log(box[3] / box[2])
    here = np.log(mb[3] / mb[2])
    if abs(-here - target) < abs(here - target):
        return np.ascontiguousarray(np.rot90(img)), np.ascontiguousarray(np.rot90(mask))
    return img, mask


def _place(
    normal: np.ndarray, c_img: np.ndarray, c_mask: np.ndarray, ox: int, oy: int
) -> tuple[np.ndarray, np.ndarray]:
    """A copy of ``normal`` with the crop pasted at (ox, oy) (clipped to the image), and the placed mask."""
    H, W = normal.shape[:2]
    ch, cw = c_mask.shape
    src = normal.copy()
    region = np.zeros((H, W), bool)
    x0, y0, x1, y1 = max(0, ox), max(0, oy), min(W, ox + cw), min(H, oy + ch)
    if x0 >= x1 or y0 >= y1:
        return src, region
    src[y0:y1, x0:x1] = c_img[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
    region[y0:y1, x0:x1] = c_mask[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
    return src, region


def _write_png(path: Path, array: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", array)
    if not ok:  # pragma: no cover
        raise GeneratorError("cannot encode PNG", path)
    path.write_bytes(buf.tobytes())
