"""Diffusion: noise schedules and samplers (diffusers schedulers), the Lightning training module, sampling."""
