"""Explanations: Grad-CAM maps and the cell masks made from them."""
