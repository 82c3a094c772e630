"""diffaudit: train, evaluate and audit image diffusion models as one reproducible pipeline."""

__version__ = "0.1.0"
