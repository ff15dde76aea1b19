"""Datasets: the in-memory sample form, native-format loaders, the synthetic default, splits."""
from ..core.errors import DataError
from .formats import FORMATS, detect_format, load, save
from .imageio import read_image
from .open import open_dataset
from .sample import Sample, Skip, SmearDataset

__all__ = ["DataError", "FORMATS", "Sample", "Skip", "SmearDataset", "detect_format", "load", "open_dataset",
           "read_image", "save"]
