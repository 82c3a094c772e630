"""Training loops: the evaluator classifier (plain PyTorch) and the diffusion model (Lightning)."""
