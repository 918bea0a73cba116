"""``adabldm``: trimap-conditioned blended latent diffusion with multi-stage denoising and decoder adaptation."""
