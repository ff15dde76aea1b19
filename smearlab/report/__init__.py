"""The report runner: papermill runs of the notebooks, sweeps, and what a run records.

A notebook ends with ``from smearlab.report import record; record({...}, metrics_path)``.
"""
from .results import record  # noqa: F401
from .runner import run_report  # noqa: F401
from .sweep import run_sweep  # noqa: F401
