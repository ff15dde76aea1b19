"""What notebook 05 runs: the classical methods scored beside a network, on the same images."""
from __future__ import annotations

import time

from ..metrics.instances import score_instances
from ..segmentation.classical import segment


def evaluate_method(dataset, method: str = "threshold", params: dict | None = None, **kw) -> tuple[dict, list]:
    """Run :func:`segment` on every image and score it: ``(metrics, predictions)``.

    ``metrics`` is :func:`score_instances` plus ``seconds_per_image`` (segmentation only, not
    scoring, one CPU thread of this process).
    """
    t0 = time.perf_counter()
    preds = [segment(s.image, method, params, **kw) for s in dataset]
    spi = (time.perf_counter() - t0) / max(len(dataset), 1)
    return {**score_instances(dataset, preds), "seconds_per_image": spi}, preds
