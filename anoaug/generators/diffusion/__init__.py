"""Diffusion defect generators: `tiny/` (small pixel-space UNet trained per category) and `sd/` (Stable
Diffusion with learned defect tokens). Shared: `blending` (blended sampling), `crops` (windows around a
mask), `settings` (sampling settings under diffusers' names); pixel compositing is `generators.compositing`.

Kept minimal: importing the package does not import backends.
"""
