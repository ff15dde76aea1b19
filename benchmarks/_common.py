"""What every benchmark records beside its figures: hardware, date and the exact command."""
from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

# Before anything loads PyTorch: idle OpenMP threads sleep instead of spinning, as in every
# process smearlab starts (smearlab.core.threads), so that a benchmark beside other work measures
# its own speed rather than a fight over the cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from smearlab.core.device import describe  # noqa: E402
from smearlab.core.files import write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def hardware() -> str:
    """CPU model, core count and platform, and the GPU when torch sees one."""
    return describe("auto")


def save_result(name: str, figures: dict, argv=None, script: str | None = None) -> Path:
    """Write ``results/<name>.json``: the figures plus hardware, date and command.

    ``script``: the benchmark script's name when it differs from ``name``.
    """
    result = dict(figures)
    result["hardware"] = hardware()
    result["date"] = datetime.date.today().isoformat()
    result["command"] = " ".join(["python", f"benchmarks/{script or name}.py", *(sys.argv[1:] if argv is None else argv)])
    path = RESULTS / f"{name}.json"
    write_json(path, result)
    return path
