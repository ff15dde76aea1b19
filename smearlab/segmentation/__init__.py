"""Segmentation: the U-Net (class maps), two-stage (boxes -> crops) and classical methods."""
