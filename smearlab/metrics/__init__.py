"""Metrics by task; every function takes the truth first, then the prediction."""
