"""What every benchmark shares: how it starts and ends (``run_benchmark``), and what it records beside its
figures (hardware, date and the exact command)."""
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
from smearlab.core.errors import DataError, os_error_message  # noqa: E402
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


def run_benchmark(main) -> None:
    """Run a benchmark's ``main()`` and exit with its code.

    Bad input (a DataError: a wrong ``--data`` folder, a malformed file) or a file the system
    refuses ends as one line ``error: <file>: <problem>`` on stderr and exit code 2, as the
    ``smearlab`` command does, instead of a traceback. Every other exception keeps its traceback:
    it is a fault in the benchmark, not in the input.
    """
    try:
        code = main()
    except DataError as e:
        sys.exit(_fail(str(e)))
    except OSError as e:
        sys.exit(_fail(os_error_message(e)))
    sys.exit(code or 0)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2
