"""Generation and scoring across processes, on the same engine (Lightning) and trainer configs as training."""
