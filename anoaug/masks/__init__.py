"""Mask synthesis: where a synthetic defect goes and what shape it has.

* ``anoaug.masks.foreground`` -- the object region of a normal image (classical, weight-free methods,
  or a local TorchScript model), object/texture detection and a per-image-hash cache;
* ``anoaug.masks.synthesis`` -- the bank of real generator-training masks and ``MaskSynthesizer``,
  which places a randomly rotated and scaled bank mask inside the foreground of a normal image;
* ``anoaug.masks.learned`` -- ``masks.source: learned``: mask shapes sampled from tokens learned by textual
  inversion of the real training masks, placed by the same ``MaskSynthesizer``;
* ``anoaug.masks.sources`` -- ``make_synthesizer``: the synthesizer of a spec's ``masks.source``;
* ``anoaug.masks.run`` -- the ``anoaug masks`` command: masks, trimaps, a Parquet manifest, a summary and
  a contact sheet.

This package module stays import-light (no OpenCV / albumentations) so that ``MaskError`` is cheap to use.
"""

from __future__ import annotations

from anoaug.errors import AnoaugError


class MaskError(AnoaugError):
    """A mask cannot be synthesized: no bank masks, or a foreground too small for any of them."""


class ForegroundError(MaskError):
    """The foreground of an image cannot be extracted (bad input, unusable model file)."""


__all__ = ["ForegroundError", "MaskError"]
