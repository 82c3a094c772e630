"""The release rule, apart from where versions are stored (tracking/registry.py applies it in MLflow)."""
