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

Matched paste (``match``, default on): when the request's ``mask_params`` say the synthesized mask is a
training defect's mask (or one component group of it, see ``anoaug.masks.synthesis``) under a recorded
rotation/scale/offset, and that defect is one this generator was fitted on, the defect's own pixels are
warped with the very same transform (``anoaug.masks.synthesis.affine_warp``) and blended under the
synthesized mask, so texture and mask fit exactly (no colour jitter). The transform is re-applied to the
stored mask first and must reproduce the requested mask bit for bit; otherwise, and for masks of unknown
origin (Perlin, hand-made), the rescaled crop above is used. ``info["source"]`` is "matched" or "rescaled".

Settings: see `CropPasteGenerator.Settings` (defaults and ranges documented there).
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
from pydantic import Field

from anoaug.data.io import load_image, load_mask
from anoaug.generators.base import (
    FitData,
    GenerationRequest,
    GenerationResult,
    Generator,
    GeneratorError,
    GeneratorSettings,
    register,
)
from anoaug.generators.compositing import BlendMode, bbox, blend, seed_of
from anoaug.masks.synthesis import AFFINE_PAD, affine_warp, split_components
from anoaug.png import write_png

CROPS_INDEX = "crops.json"
SOURCES_INDEX = "sources.json"
DEFAULT_SPLIT = {"gap": 3, "min_area": 8}  # MasksSection's defaults, for mask_params without "split"


@dataclass
class _Crop:
    image: np.ndarray  # (h, w, 3) uint8
    mask: np.ndarray  # (h, w) bool
    defect_type: str
    name: str
    relpath: str


@dataclass
class _Source:
    """One whole training defect for the matched paste: its full-size mask and the image around it."""

    mask: np.ndarray  # (H, W) bool, the full real mask
    patch: np.ndarray  # (y1 - y0, x1 - x0, 3) uint8, the image inside `box`
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the defect image (mask bbox + AFFINE_PAD, clipped)
    defect_type: str

    def image_window(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Image pixels of [y0:y1, x0:x1] in defect-image coordinates; edge-replicated off the image."""
        bx0, by0, bx1, by1 = self.box
        H, W = self.mask.shape
        cx0, cy0, cx1, cy1 = max(x0, bx0), max(y0, by0), min(x1, bx1), min(y1, by1)
        inner = self.patch[cy0 - by0 : cy1 - by0, cx0 - bx0 : cx1 - bx0]
        # The patch covers the window wherever the window is on the image (it holds the mask bbox + pad).
        assert cx0 - x0 == max(0, -x0) and x1 - cx1 == max(0, x1 - W), "window leaves the stored patch"
        assert cy0 - y0 == max(0, -y0) and y1 - cy1 == max(0, y1 - H), "window leaves the stored patch"
        return cv2.copyMakeBorder(inner, cy0 - y0, y1 - cy1, cx0 - x0, x1 - cx1, cv2.BORDER_REPLICATE)


@register
class CropPasteGenerator(Generator):
    """Crop&Paste: transformed real defect crops, blended at the synthesized location."""

    name = "crop-paste"

    class Settings(GeneratorSettings):
        """crop-paste settings."""

        blend: BlendMode = Field("alpha", description="alpha feathering, Poisson (OpenCV seamlessClone) or none")
        feather: float = Field(2.0, ge=0, description="alpha ramp half-width in px (blend alpha)")
        context: int = Field(6, ge=0, description="px of surroundings kept around each stored crop")
        min_pixels: int = Field(9, ge=1, description="smallest defect component kept as a crop (px)")
        jitter: float = Field(0.05, ge=0, description="colour-jitter strength of rescaled crops")
        max_scale: float = Field(3.0, ge=1, description="uniform crop scale clamped to [1/max_scale, max_scale]")
        match: bool = Field(True, description="warp the mask's own source defect when the mask came from one")

    settings: Settings

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__(params)
        j = self.settings.jitter
        self._aug = A.Compose(
            [
                A.HorizontalFlip(p=0.5),
                A.VerticalFlip(p=0.5),
                A.RandomRotate90(p=1.0),
                A.ColorJitter(brightness=j, contrast=j, saturation=j, hue=min(j, 0.5) / 2, p=1.0),
            ]
        )
        self._crops: dict[str, list[_Crop]] = {}
        self._sources: dict[str, _Source] = {}
        self._groups: dict[tuple[str, int, int], list[np.ndarray]] = {}

    # --- fit / load ---------------------------------------------------------------------------

    def _fit(self, data: FitData, out_dir: Path, seed: int) -> None:
        if not data.defects:
            raise GeneratorError(f"crop-paste: category '{data.category}' has no generator-training defects")
        crop_dir = out_dir / "crops"
        crop_dir.mkdir(parents=True, exist_ok=True)
        ctx = self.settings.context
        min_px = self.settings.min_pixels
        src_dir = out_dir / "sources"
        src_dir.mkdir(parents=True, exist_ok=True)
        index, sources = [], []
        for d_i, ex in enumerate(sorted(data.defects, key=lambda d: d.relpath)):
            if ex.mask.any():
                H, W = ex.mask.shape
                bx, by, bw, bh = bbox(ex.mask)  # type: ignore[misc]
                box = [max(0, bx - AFFINE_PAD), max(0, by - AFFINE_PAD)]
                box += [min(W, bx + bw + AFFINE_PAD), min(H, by + bh + AFFINE_PAD)]
                name = f"{d_i:04d}"
                patch = ex.image[box[1] : box[3], box[0] : box[2]]
                write_png(src_dir / f"{name}.png", patch)
                write_png(src_dir / f"{name}_mask.png", ex.mask)
                sources.append({"name": name, "defect_type": ex.defect_type, "relpath": ex.relpath, "box": box})
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
                write_png(crop_dir / f"{name}.png", crop)
                write_png(crop_dir / f"{name}_mask.png", cmask)
                index.append(
                    {"name": name, "defect_type": ex.defect_type, "relpath": ex.relpath, "box": [x0, y0, x1, y1]}
                )
        (out_dir / CROPS_INDEX).write_text(json.dumps(index, indent=1, sort_keys=True))
        (out_dir / SOURCES_INDEX).write_text(json.dumps(sources, indent=1, sort_keys=True))
        self._load(out_dir, {})  # ready to generate, in the same state as a loaded artifact

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
        # Artifacts from before the matched paste have no sources: they always use the rescaled crop.
        self._sources, self._groups = {}, {}
        sources_path = artifact_dir / SOURCES_INDEX
        rows = json.loads(sources_path.read_text()) if sources_path.is_file() else []
        for row in rows:
            self._sources[row["relpath"]] = _Source(
                mask=load_mask(artifact_dir / "sources" / f"{row['name']}_mask.png"),
                patch=load_image(artifact_dir / "sources" / f"{row['name']}.png"),
                box=tuple(int(v) for v in row["box"]),  # type: ignore[arg-type]
                defect_type=row["defect_type"],
            )

    # --- generate -----------------------------------------------------------------------------

    def generate(self, batch: Sequence[GenerationRequest]) -> list[GenerationResult]:
        if not self._crops:
            raise GeneratorError("crop-paste: not fitted (call fit or Generator.load first)")
        return [self._one(req) for req in batch]

    def _one(self, req: GenerationRequest) -> GenerationResult:
        miss = None
        if req.mask_params is not None and self.settings.match:
            matched = self._matched(req, req.mask_params)
            if isinstance(matched, GenerationResult):
                return matched
            miss = matched
        res = self._rescaled(req)
        res.info["source"] = "rescaled"
        if miss is not None:
            res.info["match_miss"] = miss
        return res

    def _matched(self, req: GenerationRequest, mp: dict[str, Any]) -> GenerationResult | str:
        """The source defect warped exactly as its mask was, blended under ``req.mask``; else why not."""
        key = mp.get("source_image")
        src = self._sources.get(key) if isinstance(key, str) else None
        if src is None:
            return "source not a fitted training defect"
        if src.defect_type != req.defect_type:
            return f"source is a '{src.defect_type}' defect"
        try:
            comp, angle = int(mp["component"]), float(mp["angle"])
            scale = float(mp["scale"]) * float(mp.get("resolution_scale", 1.0))
            tx, ty = int(mp["tx"]), int(mp["ty"])
        except (KeyError, TypeError, ValueError):
            return "mask_params lack component/angle/scale/tx/ty"
        part = self._component(key, src, comp, mp.get("split"))
        if part is None:
            return f"no component {comp} in the source mask"
        x, y, w, h = bbox(part)  # type: ignore[misc]
        p = AFFINE_PAD
        padded = np.pad(part[y : y + h, x : x + w].astype(np.uint8) * 255, p)
        frame = affine_warp(padded, angle, scale) >= 128
        fb = bbox(frame)
        if fb is None:
            return "the warped source mask is empty"
        fx, fy, fw, fh = fb
        H, W = req.mask.shape
        tight = frame[fy : fy + fh, fx : fx + fw]
        if (
            tx < 0
            or ty < 0
            or tx + fw > W
            or ty + fh > H
            or not np.array_equal(req.mask[ty : ty + fh, tx : tx + fw], tight)
            or int(np.count_nonzero(req.mask)) != int(np.count_nonzero(tight))
        ):
            return "re-warped source mask differs from the requested mask"
        # Warp the image patch of the padded crop's exact size: same frame, so it lands under the mask.
        f_img = affine_warp(src.image_window(x - p, y - p, x + w + p, y + h + p), angle, scale)
        f_valid = affine_warp(np.full(padded.shape, 255, np.uint8), angle, scale) == 255  # no zero border mixed in
        placed, valid = _place(req.normal, f_img, f_valid, tx - fx, ty - fy)
        src_img = np.where(valid[..., None], placed, req.normal)
        region = req.mask.astype(bool) & req.allowed
        out, final, used = blend(req.normal, src_img, region, self.settings.blend, self.settings.feather)
        info = {
            "source": "matched",
            "crop_source": key,
            "component": comp,
            "angle": round(angle, 4),
            "scale": round(scale, 4),
            "offset": [tx - fx, ty - fy],
            "blend": used,
            "fallback": False,
        }
        return GenerationResult(image=out, mask=final, info=info)

    def _component(self, key: str, src: _Source, comp: int, split: Any) -> np.ndarray | None:
        """The (H, W) bool mask the synthesizer's bank entry was cut from: whole mask (-1) or component group."""
        if comp < 0:
            return src.mask
        split = {**DEFAULT_SPLIT, **(split if isinstance(split, dict) else {})}
        gap, min_area = int(split["gap"]), int(split["min_area"])
        groups = self._groups.get((key, gap, min_area))
        if groups is None:
            groups = self._groups[(key, gap, min_area)] = split_components(src.mask, gap, min_area)
        return groups[comp] if comp < len(groups) else None

    def _rescaled(self, req: GenerationRequest) -> GenerationResult:
        """A random crop of the requested type, flipped/rotated/jittered and rescaled to the mask's area and box."""
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
        max_s = self.settings.max_scale
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
        out, final, used = blend(req.normal, src, region, self.settings.blend, self.settings.feather)
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
