"""The mask bank and ``MaskSynthesizer``: real generator-training masks, re-posed inside the foreground.

One synthesized mask = one bank mask (a whole real mask, or one group of its connected components), a
random rotation and scale (albumentations ``Affine``), and a position drawn uniformly among all positions
where every defect pixel lies inside the (eroded) foreground of the chosen normal image. An affine that
fits nowhere is a rejected placement; after ``attempts_per_mask`` rejections the next bank mask is tried
(cycling through the bank), and after ``max_attempts`` in total ``MaskError`` is raised, so synthesis never
loops forever.

All randomness comes from the ``rng`` passed to ``synthesize``: the same rng state gives the same mask.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import albumentations as A
import cv2
import numpy as np

from anoaug.data.io import load_mask
from anoaug.data.records import CategoryData
from anoaug.data.split import SplitManifest
from anoaug.errors import DatasetError
from anoaug.masks import MaskError
from anoaug.masks.foreground import KINDS, ForegroundCache, erode, foreground_flags, kind_report
from anoaug.spec import MasksSection

DEFECT, FOREGROUND, BACKGROUND = 255, 127, 0


@dataclass
class SynthesizedMask:
    """One synthesized defect region, its trimap and how it was made."""

    mask: np.ndarray  # (H, W) bool, the defect region
    trimap: np.ndarray  # (H, W) uint8: 255 defect, 127 foreground, 0 background
    defect_type: str
    params: dict[str, Any]  # JSON-serialisable (see MaskSynthesizer.synthesize)


@dataclass(frozen=True)
class BankMask:
    """One real mask (or one group of its components), cropped to its bounding box."""

    defect_type: str
    mask_relpath: str
    image_relpath: str
    component: int  # -1: the whole mask; else the index of the component group
    crop: np.ndarray  # (h, w) bool, tight bounding box
    source_shape: tuple[int, int]  # (H, W) of the mask file it came from

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.crop))

    @property
    def perimeter(self) -> int:
        """Boundary pixel count (a rasterisation-error scale)."""
        m = self.crop.astype(np.uint8)
        return int(np.count_nonzero(m - cv2.erode(m, np.ones((3, 3), np.uint8), borderValue=0)))


class MaskSource(Protocol):
    """Where candidate masks come from: the real bank today, a learned or parametric source later."""

    def candidates(self, defect_type: str) -> list[BankMask]: ...

    @property
    def defect_types(self) -> list[str]: ...


def _crop(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].copy()


def split_components(mask: np.ndarray, gap: int, min_area: int) -> list[np.ndarray]:
    """Groups of connected components of a bool mask; components within ``gap`` px stay together.

    Groups smaller than ``min_area`` are dropped (the largest is kept if all are).
    """
    m = mask.astype(np.uint8)
    grown = cv2.dilate(m, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * gap + 1,) * 2)) if gap > 0 else m
    n, labels = cv2.connectedComponents(grown, connectivity=8)
    groups = [mask & (labels == k) for k in range(1, n)]
    groups = [g for g in groups if g.any()]
    kept = [g for g in groups if np.count_nonzero(g) >= min_area]
    if not kept and groups:
        kept = [max(groups, key=np.count_nonzero)]
    return kept


@dataclass
class MaskBank:
    """Bank masks per defect type, plus the areas of the real masks they came from."""

    entries: dict[str, list[BankMask]] = field(default_factory=dict)
    real_areas: dict[str, list[int]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # why some masks are not in the bank

    @property
    def defect_types(self) -> list[str]:
        return sorted(t for t, e in self.entries.items() if e)

    def candidates(self, defect_type: str) -> list[BankMask]:
        return self.entries.get(defect_type, [])

    def add(
        self, defect_type: str, mask: np.ndarray, mask_relpath: str, image_relpath: str, spec: MasksSection
    ) -> None:
        """Add one real mask (bool, full size), split into component groups if the spec says so."""
        if not mask.any():
            self.skipped.append(f"{mask_relpath}: empty mask")
            return
        self.real_areas.setdefault(defect_type, []).append(int(np.count_nonzero(mask)))
        parts = (
            split_components(mask, spec.component_gap, spec.min_component_area)
            if spec.split_components
            else []
        )
        lst = self.entries.setdefault(defect_type, [])
        if len(parts) <= 1:
            lst.append(BankMask(defect_type, mask_relpath, image_relpath, -1, _crop(mask), mask.shape[:2]))
        else:
            for i, part in enumerate(parts):
                lst.append(BankMask(defect_type, mask_relpath, image_relpath, i, _crop(part), mask.shape[:2]))

    @classmethod
    def from_split(cls, data: CategoryData, split: SplitManifest, spec: MasksSection) -> MaskBank:
        """The bank of the ``gen_train_defect`` masks of a split; evaluation masks are never read."""
        if split.table.num_rows and split.category != data.category:
            raise MaskError(f"split manifest is for category {split.category!r}, not {data.category!r}")
        eval_masks = {r.mask_relpath for r in split.records("eval_defect") if r.mask_relpath}
        bank = cls()
        for rec in sorted(split.records("gen_train_defect"), key=lambda r: r.relpath):
            if not rec.mask_relpath:
                bank.skipped.append(f"{rec.relpath}: no mask")
                continue
            if rec.mask_relpath in eval_masks:  # defence in depth: the split already forbids this
                raise MaskError(f"mask {rec.mask_relpath} is both generator-training and evaluation")
            try:
                mask = load_mask(data.path(rec.mask_relpath))
            except DatasetError as exc:
                raise MaskError(f"cannot read bank mask: {exc.message}", exc.path) from None
            bank.add(rec.label, mask, rec.mask_relpath, rec.relpath, spec)
        return bank


AFFINE_PAD = 2  # px of zeros around a bank crop before ``affine_mask`` warps it


def affine_warp(array: np.ndarray, angle: float, scale: float) -> np.ndarray:
    """Rotate (degrees) and scale an (h, w) or (h, w, c) array exactly as ``affine_mask`` does.

    The whole warped frame is returned (albumentations ``Affine`` with ``fit_output``, bilinear, zero
    border), so any two arrays of the same (h, w) land on the same output pixels: warping a defect image
    patch of the padded mask crop's size puts its pixels under the warped mask.
    """
    tf = A.Affine(
        rotate=(angle, angle),
        scale=(scale, scale),
        fit_output=True,
        interpolation=cv2.INTER_LINEAR,
        border_mode=cv2.BORDER_CONSTANT,
        fill=0,
        p=1.0,
    )
    return tf(image=array)["image"]


def affine_mask(crop: np.ndarray, angle: float, scale: float) -> np.ndarray:
    """Rotate (degrees) and scale a bool crop with albumentations; returns the tight bool crop (may be empty).

    The 0/255 crop is padded by ``AFFINE_PAD``, warped with ``affine_warp`` (bilinear) and thresholded at
    half, which keeps the area closer to scale**2 times the source than nearest-neighbour warping.
    """
    src = np.pad(crop.astype(np.uint8) * 255, AFFINE_PAD)
    out = affine_warp(src, angle, scale) >= 128
    if not out.any():
        return np.zeros((0, 0), bool)
    return _crop(out)


def valid_positions(allowed: np.ndarray, shape_mask: np.ndarray) -> np.ndarray:
    """Bool map of top-left positions (y, x) where ``shape_mask`` lies entirely inside ``allowed``.

    Correlates the forbidden region with the mask (OpenCV filter2D, which switches to a DFT for big
    kernels): a zero sum means no defect pixel falls on a forbidden one. Positions where the mask would
    leave the image are not returned at all. OpenCV/scikit-image erosion with an arbitrary anchored
    kernel would do the same, but in O(pixels x kernel) time.
    """
    H, W = allowed.shape
    h, w = shape_mask.shape
    if h > H or w > W or h == 0 or w == 0:
        return np.zeros((max(H - h + 1, 0), max(W - w + 1, 0)), bool)
    forbidden = (~allowed).astype(np.float32)
    if not forbidden.any():
        return np.ones((H - h + 1, W - w + 1), bool)
    hits = cv2.filter2D(
        forbidden, cv2.CV_32F, shape_mask.astype(np.float32), anchor=(0, 0), borderType=cv2.BORDER_CONSTANT
    )
    return hits[: H - h + 1, : W - w + 1] < 0.5


def make_trimap(mask: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """uint8 trimap: 255 defect, 127 foreground without defect, 0 background."""
    return np.where(mask, DEFECT, np.where(foreground, FOREGROUND, BACKGROUND)).astype(np.uint8)


def resolve_kind(spec_kind: str, data: CategoryData, max_images: int = 8) -> tuple[str, str]:
    """(kind, reason): the spec's kind, or for ``auto`` the one ``detect_kind`` sees in the normal images."""
    kind, reason, _ = resolve_kind_report(spec_kind, data, max_images)
    return kind, reason


def resolve_kind_report(
    spec_kind: str, data: CategoryData, max_images: int = 8
) -> tuple[str, str, dict[str, Any] | None]:
    """(kind, reason, evidence): as ``resolve_kind``, plus ``KindEvidence.as_dict()`` (confidence, votes,
    per-image region shares) when the kind was detected, else None."""
    if spec_kind in KINDS:
        return spec_kind, "set by the spec or --kind", None
    if spec_kind != "auto":
        raise MaskError(f"kind must be object, texture or auto, got {spec_kind!r}")
    from anoaug.data.io import load_image

    recs = sorted(data.normal_train or data.normal_test, key=lambda r: r.relpath)
    if not recs:
        raise MaskError(f"category {data.category!r} has no normal images to decide object vs texture")
    idx = np.unique(np.linspace(0, len(recs) - 1, min(max_images, len(recs))).round().astype(int))
    rep = kind_report([load_image(data.path(recs[i].relpath)) for i in idx])
    return rep.kind, f"detected automatically: {rep.reason}", rep.as_dict()


class MaskSynthesizer:
    """Places bank masks inside the foreground of normal images (see the module docstring)."""

    def __init__(
        self, source: MaskSource, spec: MasksSection, kind: str, cache: ForegroundCache | None = None
    ):
        if kind not in KINDS:
            raise MaskError(f"kind must be one of {KINDS}, got {kind!r}")
        if not source.defect_types:
            raise MaskError("the mask bank is empty: no generator-training defect has a usable mask")
        self.source, self.spec, self.kind = source, spec, kind
        self.placement = (
            spec.placement if spec.placement != "auto" else ("foreground" if kind == "object" else "free")
        )
        self.cache = cache or ForegroundCache(spec.foreground, kind)

    @classmethod
    def from_split(
        cls, data: CategoryData, split: SplitManifest, spec: MasksSection, kind: str
    ) -> MaskSynthesizer:
        """A synthesizer over the generator-training masks of ``split`` (never an evaluation mask)."""
        if spec.source == "learned":
            raise MaskError("masks.source 'learned' is built by anoaug.masks.sources.make_synthesizer, not from_split")
        if spec.source != "bank":
            raise MaskError(f"masks.source {spec.source!r} is not implemented yet; use 'bank' or 'learned'")
        return cls(MaskBank.from_split(data, split, spec), spec, kind)

    @property
    def defect_types(self) -> list[str]:
        return self.source.defect_types

    def foreground(self, normal: np.ndarray, normal_key: str | None = None) -> np.ndarray:
        """The (cached) foreground of a normal image."""
        return self.cache.get(normal, normal_key)

    def image_flags(self, normal: np.ndarray, normal_key: str | None = None) -> list[str]:
        """Why a normal image cannot take masks (``foreground_flags`` of its foreground); [] when it can.

        Only foreground placement looks at the foreground, so free placement never excludes an image.
        """
        if self.placement != "foreground":
            return []
        return foreground_flags(self.foreground(normal, normal_key), self.kind, self.spec.foreground)

    def synthesize(
        self, normal: np.ndarray, defect_type: str, rng: np.random.Generator, normal_key: str | None = None
    ) -> SynthesizedMask:
        """One mask for ``normal``; params hold the source mask, component, angle, scale, tx, ty, attempts.

        ``tx, ty`` are the top-left corner of the placed mask's bounding box in the normal image; ``scale``
        is the random scale and ``resolution_scale`` the factor from the source mask's image size.
        """
        candidates = self.source.candidates(defect_type)
        if not candidates:
            raise MaskError(
                f"no generator-training masks for defect type {defect_type!r} (bank has {self.defect_types})"
            )
        fg = self.foreground(normal, normal_key)
        H, W = fg.shape
        allowed = erode(fg, self.spec.erode) if self.placement == "foreground" else np.ones_like(fg)
        n_allowed = int(np.count_nonzero(allowed))
        (r0, r1), (s0, s1) = self.spec.rotation, self.spec.scale
        attempts, tried = 0, 0
        rejections: Counter[str] = Counter()
        order = rng.permutation(len(candidates))
        # Bank masks in random order, attempts_per_mask affines each, cycling until max_attempts is spent.
        turns = math.ceil(self.spec.max_attempts / self.spec.attempts_per_mask)
        for turn in range(turns):
            if attempts >= self.spec.max_attempts:
                break
            entry = candidates[int(order[turn % len(order)])]
            tried += 1
            res = math.sqrt((H * W) / (entry.source_shape[0] * entry.source_shape[1]))
            for _ in range(min(self.spec.attempts_per_mask, self.spec.max_attempts - attempts)):
                attempts += 1
                angle = float(rng.uniform(r0, r1))
                scale = float(rng.uniform(s0, s1))
                if entry.area * (scale * res) ** 2 * 0.8 > n_allowed:  # cannot fit: skip the warp
                    rejections["no_fit"] += 1
                    continue
                warped = affine_mask(entry.crop, angle, scale * res)
                if warped.size == 0:
                    rejections["empty"] += 1
                    continue
                h, w = warped.shape
                if h > H or w > W:
                    rejections["too_large"] += 1
                    continue
                valid = valid_positions(allowed, warped)
                flat = np.flatnonzero(valid)
                if flat.size == 0:
                    rejections["no_fit"] += 1
                    continue
                ty, tx = divmod(int(flat[int(rng.integers(flat.size))]), valid.shape[1])
                mask = np.zeros((H, W), bool)
                mask[ty : ty + h, tx : tx + w] = warped
                params = {
                    "source_mask": entry.mask_relpath,
                    "source_image": entry.image_relpath,
                    "component": entry.component,
                    "angle": angle,
                    "scale": scale,
                    "resolution_scale": res,
                    "tx": tx,
                    "ty": ty,
                    "width": w,
                    "height": h,
                    "area": int(np.count_nonzero(mask)),
                    "source_area": entry.area,
                    "attempts": attempts,
                    "masks_tried": tried,
                    "rejections": dict(sorted(rejections.items())),
                    "placement": self.placement,
                    "erode": self.spec.erode if self.placement == "foreground" else 0,
                    "foreground_fraction": float(fg.mean()),
                }
                return SynthesizedMask(mask, make_trimap(mask, fg), defect_type, params)
        smallest = min(c.area for c in candidates)
        raise MaskError(
            f"no placement for a {defect_type!r} mask after {attempts} attempt(s) over "
            f"{min(tried, len(candidates))} bank mask(s): "
            f"the {'eroded foreground' if self.placement == 'foreground' else 'image'} has {n_allowed} px "
            f"({n_allowed / (H * W):.1%} of {W}x{H}), the smallest bank mask {smallest} px "
            f"({dict(sorted(rejections.items()))}); check masks.foreground, or lower masks.erode/scale"
        )
