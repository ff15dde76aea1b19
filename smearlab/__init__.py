"""smearlab: a Jupyter-first research workbench for blood-smear and cell microscopy images."""
__version__ = "0.1.0"
