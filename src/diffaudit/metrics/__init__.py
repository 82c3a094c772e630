"""Quality metrics of generated images, each named by the feature space it is computed in."""
