"""The threshold tuner: per-class score sliders over cached raw predictions, live metrics.

Like :mod:`smearlab.widgets`, figures are rendered to PNG into an ``ipywidgets.Image`` (no
``Output`` capture, which hangs headless notebook runs). Moving a slider re-filters the raw
cache (:class:`~smearlab.detection.postprocess.Selector`, NMS cached per setting) and re-evaluates with the
:class:`~smearlab.evaluate.FastEvaluator`, whose IoUs against the ground truth were computed
once; only then is the overlay redrawn.
"""
from __future__ import annotations

import html
import time
from typing import Sequence

import ipywidgets as W
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from ..evaluate import FastEvaluator
from ..viz import class_colors, figure_to_png
from .postprocess import DEFAULT_SCORE, RawPredictions, Selector, take
from .tune import Thresholds


class ThresholdTuner:
    """Tune per-class score thresholds and the NMS IoU by hand, watching the metrics.

    Parameters
    ----------
    dataset : the (validation) SmearDataset with ground truth.
    raw : its :class:`RawPredictions` (or a plain list of prediction dicts).
    class_names : must equal the dataset's (checked) when given.
    images_for_overlay : dataset indices the image slider walks through (default: all).
    initial : a :class:`Thresholds` to start from (default: every class 0.5, NMS 0.5).
    figsize : size of the overlay figure.

    Attributes
    ----------
    sliders : ``{class name: FloatSlider}`` score thresholds.
    nms : FloatSlider of the NMS IoU (1.0 = no extra NMS).
    agnostic : Checkbox for class-agnostic NMS.
    index : IntSlider choosing the overlay image (a position in ``images_for_overlay``).
    metrics : the last :meth:`FastEvaluator.evaluate_subset` result.
    last_ms : milliseconds of the last re-filter + re-evaluate (drawing excluded).
    keep : per image, indices of the raw boxes currently kept.
    draw_overlay : set False to skip redrawing the overlay (benchmarks).
    widget : the widget to display.
    """

    def __init__(self, dataset, raw, class_names: Sequence[str] | None = None,
                 images_for_overlay: Sequence[int] | None = None,
                 initial: Thresholds | None = None, figsize=(7, 5), max_dets: int | None = 300):
        if not isinstance(raw, RawPredictions):
            raw = RawPredictions.for_dataset(dataset, raw)
        raw.check(dataset)
        if class_names is not None and list(class_names) != list(dataset.class_names):
            raise ValueError(f"class_names {list(class_names)} differ from the dataset's "
                             f"{list(dataset.class_names)}")
        self.dataset, self.raw = dataset, raw
        self.class_names = list(dataset.class_names)
        self.figsize, self.max_dets = figsize, max_dets
        self.overlay_indices = list(range(len(dataset))) if images_for_overlay is None \
            else [int(i) for i in images_for_overlay]
        self.evaluator = FastEvaluator(dataset)
        self.prepared = self.evaluator.prepare(raw)
        self.selector = Selector(raw)
        init = initial or Thresholds({n: DEFAULT_SCORE for n in self.class_names})
        style = {"description_width": "initial"}
        self.sliders = {n: W.FloatSlider(value=float(init.score.get(n, DEFAULT_SCORE)), min=0.0,
                                         max=1.0, step=0.01, description=n,
                                         continuous_update=False, style=style,
                                         readout_format=".2f")
                        for n in self.class_names}
        self.nms = W.FloatSlider(value=1.0 if init.nms_iou is None else float(init.nms_iou),
                                 min=0.1, max=1.0, step=0.05, description="NMS IoU",
                                 continuous_update=False, style=style, readout_format=".2f")
        self.agnostic = W.Checkbox(value=bool(init.class_agnostic), description="class-agnostic NMS",
                                   indent=False)
        self.index = W.IntSlider(value=0, min=0, max=max(len(self.overlay_indices) - 1, 0),
                                 description="image", continuous_update=False)
        self.table = W.HTML()
        self.image = W.Image(format="png")
        self.metrics: dict = {}
        self.last_ms = float("nan")
        self.keep: list[np.ndarray] = []
        self.draw_overlay = True
        for w in [*self.sliders.values(), self.nms, self.agnostic]:
            w.observe(lambda _c: self.update(), names="value")
        self.index.observe(lambda _c: self.redraw(), names="value")
        controls = W.VBox([*self.sliders.values(), self.nms, self.agnostic, self.index])
        self.widget = W.VBox([W.HBox([controls, self.table]), self.image])
        self.update()

    # state ------------------------------------------------------------------------------------
    def thresholds(self) -> Thresholds:
        """The current settings as a :class:`Thresholds` (with the current metrics)."""
        nms = None if self.nms.value >= 1.0 else round(float(self.nms.value), 4)
        m = self.metrics
        metrics = {"mAP50": m.get("mAP50"),
                   "per_class": {n: {"AP50": pc["AP50"], "f1": pc["f1"]}
                                 for n, pc in m.get("per_class", {}).items()}}
        return Thresholds({n: round(float(s.value), 4) for n, s in self.sliders.items()}, nms,
                          bool(self.agnostic.value), self.max_dets, "manual", metrics)

    def refilter(self) -> dict:
        """Re-filter the raw cache and re-evaluate (what a slider change costs, without drawing)."""
        t = time.perf_counter()
        th = self.thresholds()
        self.keep = self.selector(th.score, th.nms_iou, th.class_agnostic, self.max_dets)
        self.metrics = self.evaluator.evaluate_subset(self.prepared, self.keep)
        self.last_ms = (time.perf_counter() - t) * 1000
        return self.metrics

    def update(self) -> None:
        """Re-filter, re-evaluate, refresh the table and the overlay."""
        self.refilter()
        self.table.value = self.metrics_html()
        self.redraw()

    # display ----------------------------------------------------------------------------------
    def metrics_html(self) -> str:
        """The metrics as an HTML table (per class and overall)."""
        def f(v, fmt="{:.3f}"):
            return "–" if v is None else fmt.format(v)
        m = self.metrics
        rows = ["<tr><th>class</th><th>AP50</th><th>P</th><th>R</th><th>F1</th>"
                "<th>true</th><th>pred</th><th>count MAE</th><th>count acc</th></tr>"]
        for n, pc in m["per_class"].items():
            c = m["counts"][n]
            rows.append(f"<tr><td>{html.escape(n)}</td><td>{f(pc['AP50'])}</td>"
                        f"<td>{f(pc['precision'])}</td><td>{f(pc['recall'])}</td>"
                        f"<td>{f(pc['f1'])}</td><td>{c['true']}</td><td>{c['predicted']}</td>"
                        f"<td>{f(c['mae'], '{:.2f}')}</td><td>{f(c['accuracy'])}</td></tr>")
        rows.append(f"<tr><th>all</th><th>{f(m['mAP50'])}</th><td colspan=7>mAP50 over classes; "
                    f"{sum(len(k) for k in self.keep)} boxes kept of {self.raw.num_boxes}; "
                    f"{self.last_ms:.1f} ms</td></tr>")
        return ("<table style='border-collapse:collapse;font-size:12px' border=1 cellpadding=3>"
                + "".join(rows) + "</table>")

    def redraw(self) -> None:
        """Draw the chosen image: kept predictions solid, ground truth dashed, by class colour."""
        if not (self.draw_overlay and self.overlay_indices and self.keep):
            return
        i = self.overlay_indices[self.index.value]
        s = self.dataset[i]
        p = take(self.raw[i], self.keep[i])
        colors = class_colors(len(self.class_names))
        with plt.ioff():
            fig, ax = plt.subplots(figsize=self.figsize)
        ax.imshow(s.image)
        for (x0, y0, x1, y1), lab in zip(s.boxes, s.labels):
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.0, ls="--",
                                   ec=colors[lab]))
        for (x0, y0, x1, y1), lab, sc in zip(p["boxes"], p["labels"], p["scores"]):
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.5, ec=colors[lab]))
            ax.text(x0, y0, f"{sc:.2f}", color="white", fontsize=5, va="bottom",
                    bbox=dict(fc=colors[lab], ec="none", pad=0.3))
        ax.set_title(f"{s.image_id}: {len(p['boxes'])} predicted (solid), {len(s.boxes)} true "
                     f"(dashed)", fontsize=8)
        ax.axis("off")
        self.image.value = figure_to_png(fig)

    def _ipython_display_(self):
        from IPython.display import display
        display(self.widget)


def threshold_tuner(dataset, raw, **kw) -> ThresholdTuner:
    """A :class:`ThresholdTuner`; display it as the cell's last expression."""
    return ThresholdTuner(dataset, raw, **kw)
