"""Diffusion defect generators. Shared blended sampler in `blending`; the tiny CPU profile in `tiny`.

Kept minimal: importing the package does not import backends (the Stable Diffusion one lives in `sd/`).
"""
