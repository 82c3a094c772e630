"""Networks: the diffusion denoiser (a diffusers UNet) and the evaluator classifier."""
