"""The release rule: `policy` (pure compare and decide) and `promote` (the rule applied in the MLflow
registry, through tracking/registry.py's primitives)."""
