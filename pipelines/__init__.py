"""Thin entry points, one per DVC stage: read params.yaml, call the library, log, write outputs."""
