"""Pictures and documents for people: image grids, plots, the audit report and model card."""
