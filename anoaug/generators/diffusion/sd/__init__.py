"""Real-scale Stable Diffusion (1.x/2.x, diffusers format) defect generator: the `diffusion-sd` profile.

Modules: `loading` (base model + identity manifest), `textual_inversion`, `lora`, `spatial`
(mask -> extra condition tokens), `training` (masked diffusion loss), `generator` (the registered
`Generator`) and `tiny_stand_in` (tiny random weights in the standard SD folder layout, for tests
and smoke runs). Heavy libraries (torch, diffusers, transformers, peft) are imported lazily.
"""
