"""What every benchmark records beside its figures: hardware, date and the exact command."""
from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path

from smearlab.io import write_json

RESULTS = Path(__file__).resolve().parent / "results"


def hardware() -> str:
    """CPU model, core count and platform (from /proc/cpuinfo where available)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores ({platform.machine()}, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()})")


def save_result(name: str, figures: dict, argv=None) -> Path:
    """Write ``results/<name>.json``: the figures plus hardware, date and command."""
    result = dict(figures)
    result["hardware"] = hardware()
    result["date"] = datetime.date.today().isoformat()
    result["command"] = " ".join(["python", f"benchmarks/{name}.py", *(sys.argv[1:] if argv is None else argv)])
    path = RESULTS / f"{name}.json"
    write_json(path, result)
    return path
