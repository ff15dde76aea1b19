"""What every training loop returns: a :class:`History` of records.

Every task trains through the same call shape, ``train_x(model, train_data, val_data=None, ...)``
returning a :class:`History` (the model is trained in place): the detector
(:func:`smearlab.detection.train.train_detector`), the U-Net
(:func:`smearlab.segmentation.train.train_unet`) and the classifier, plain or domain-adversarial
(:func:`smearlab.classification.train.train_classifier`, ``train_dann``). A history is a
sequence of records (``history[-1]["loss"]``), one per epoch or evaluation, and knows its best
record and the run folder it was saved in.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .errors import DataError


@dataclass
class History:
    """What a training run did: one record per epoch (or evaluation), every step's loss, the best.

    Parameters
    ----------
    records : one dict per epoch or evaluation (``loss``, validation scores, learning rate ...).
    step_losses : the training loss of every optimisation step, where the loop keeps them.
    best_epoch, best_value, best_metric : the record with the best ``best_metric``.
    out_dir : the run folder, when the run wrote one.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    best_value: float | None = None
    best_metric: str = "loss"
    out_dir: Path | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)

    def append(self, record: dict[str, Any]) -> None:
        """Add one record.

        Parameters
        ----------
        record : the record of one epoch or evaluation (``loss``, validation scores ...).
        """
        self.records.append(record)

    def column(self, key: str) -> list:
        """One metric over the records (None where missing).

        Parameters
        ----------
        key : the metric's name in the records.
        """
        return [r.get(key) for r in self.records]

    @property
    def last(self) -> dict[str, Any] | None:
        """The last record, or None before the first."""
        return self.records[-1] if self.records else None

    def to_dataframe(self):
        """The records as a pandas DataFrame (pandas is not a dependency: install it to use this)."""
        import pandas as pd
        return pd.DataFrame(self.records)

    def to_state(self) -> dict[str, Any]:
        """A JSON-ready dict of the whole history."""
        return {"records": self.records, "step_losses": list(self.step_losses), "best_epoch": self.best_epoch,
                "best_value": self.best_value, "best_metric": self.best_metric}

    @classmethod
    def load(cls, out_dir) -> "History":
        """The history of a run folder, from its ``metrics.jsonl``.

        Parameters
        ----------
        out_dir : the run folder.
        """
        p = Path(out_dir) / "metrics.jsonl"
        if not p.is_file():
            raise DataError(p, "no metrics.jsonl in this run folder")
        recs = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        return cls(records=recs, out_dir=Path(out_dir))
