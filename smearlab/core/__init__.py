"""Shared foundations: devices, files, geometry of windows and crops, network blocks."""
