"""Plots (matplotlib) and widgets (ipywidgets)."""
