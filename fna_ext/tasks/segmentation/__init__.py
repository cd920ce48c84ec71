"""Semantic segmentation (Cityscapes; DeepLabv3 and DeepLabv3+), the second task: see heads and model."""
