"""The one exception type for bad input: it names the file, the record and the problem."""
from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A file (or one record in it) that smearlab cannot use.

    The message reads ``<file>[ record]: <problem>`` so that a user sees at once which file to
    open and what to fix.

    Parameters
    ----------
    path : the file that cannot be used (kept as a string in ``self.path``).
    problem : what is wrong with it, in words (``self.problem``).
    record : optional name of the record within the file (an image id, a line, an annotation...),
        shown in brackets after the file name (``self.record``).
    """

    def __init__(self, path: str | Path, problem: str, record: str | None = None):
        self.path = str(path)
        self.problem = problem
        self.record = record
        rec = f" [{record}]" if record else ""
        super().__init__(f"{self.path}{rec}: {problem}")


def os_error_message(e: OSError) -> str:
    """An OSError in the shape of a DataError message, ``<path>: <problem>`` (no errno, no traceback)."""
    problem = e.strerror or str(e)
    return f"{e.filename}: {problem}" if e.filename else problem
