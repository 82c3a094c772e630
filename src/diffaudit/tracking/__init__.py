"""Experiment tracking: MLflow runs for the pipeline and its stages."""
