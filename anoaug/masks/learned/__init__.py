"""The learned mask generator of ``masks.source: learned`` (AnomalyDiffusion's mask embedding).

* ``settings`` -- ``LearnedMasksSettings`` (``masks.learned.*`` in a spec; pydantic only, imported by the spec);
* ``training`` -- textual inversion of k' tokens per defect type on the type's generator-training masks
  (white defect on black, 3 channels), the SD-family base model frozen;
* ``sampling`` -- DDIM with classifier-free guidance from the learned tokens, threshold, cleanup and the
  border / empty rejections;
* ``artifact`` -- the cache of learned embeddings and sampled masks (safetensors + manifest, keyed by the
  base model's identity, the training masks, the settings and the seed);
* ``source`` -- ``LearnedMaskSource``: the accepted learned masks as a mask source, which
  ``MaskSynthesizer`` places inside the foreground exactly as it places the bank's real masks.

This package module imports nothing heavy: ``anoaug.spec`` imports ``settings`` through it.
"""
