"""Datasets: loading (embedded digits, torchvision on-disk formats, image folders), preparation, splits."""
