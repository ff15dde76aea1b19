"""Shared fixtures: where the real datasets live, and the rule for when they are missing.

Tests that need ``../shared/data`` skip when it is absent on a user's machine, but under CI
(``CI=true``) a missing dataset is a failure, never a silent skip.
"""
from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from helpers import skip_or_fail

os.environ.setdefault("MPLBACKEND", "Agg")  # no display in tests or CI
# Idle OpenMP threads sleep instead of spinning: torch in the test process and in notebook
# kernels then share the cores instead of slowing each other down many times over.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SMEARLAB_SHARED_DATA", REPO.parent / "shared" / "data"))


def _need(path: Path) -> Path:
    if path.exists():
        return path
    skip_or_fail(f"real dataset not found at {path} (set SMEARLAB_SHARED_DATA)",
                 "under CI a missing dataset is an error")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the shared real datasets."""
    return _need(SHARED_DATA)


@pytest.fixture(scope="session")
def cbc_root(shared_data) -> Path:
    return _need(shared_data / "cbc")


@pytest.fixture(scope="session")
def zheng_root(shared_data, tmp_path_factory) -> Path:
    """The Zheng WBC tree, extracted once per session into a temporary folder."""
    archive = _need(shared_data / "wbc_zheng.tar.xz")
    out = tmp_path_factory.mktemp("zheng")
    with tarfile.open(archive) as tf:
        tf.extractall(out, filter="data")
    return out


@pytest.fixture
def rng():
    return np.random.default_rng(0)
