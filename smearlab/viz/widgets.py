"""ipywidgets front ends: dataset browser, preprocessing and classical explorers, t-SNE explorer,
the threshold tuner."""
from __future__ import annotations

import html
import io
import logging
import time
from typing import Sequence

import ipywidgets as W
import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from ..classification.embed import tsne
from ..data.classes import match_classes
from ..data.sample import SmearDataset
from ..detection.postprocess import DEFAULT_SCORE, RawPredictions, Selector, take
from ..detection.tune import Thresholds
from ..metrics.detection import FastEvaluator
from ..metrics.instances import dsb_score
from ..segmentation import classical
from ..segmentation.classical import BLOB_THRESHOLDS
from .plots import box_patch, class_colors, draw_sample, figure_to_png, overlay_instances, plot_embedding

log = logging.getLogger("smearlab.viz")


class DatasetBrowser:
    """Browse a dataset: an image slider and one toggle per class.

    ``DatasetBrowser(ds).widget`` is the widget to display; ``.slider`` and ``.toggles`` can be
    set from code as well as by hand, and ``.drawn`` holds how many boxes the last redraw drew.

    Parameters
    ----------
    dataset : the SmearDataset to browse.
    figsize : size of the figure in inches.
    """

    def __init__(self, dataset: SmearDataset, figsize=(7, 5)):
        self.dataset = dataset
        self.figsize = figsize
        self.slider = W.IntSlider(value=0, min=0, max=max(len(dataset) - 1, 0), description="image",
                                  continuous_update=False)
        self.toggles = [W.Checkbox(value=True, description=n, indent=False,
                                   layout=W.Layout(width="auto")) for n in dataset.class_names]
        self.image = W.Image(format="png")
        self.drawn = 0
        for w in [self.slider, *self.toggles]:
            w.observe(lambda _change: self.redraw(), names="value")
        self.widget = W.VBox([W.HBox([self.slider, *self.toggles]), self.image])
        self.redraw()

    @property
    def visible_classes(self) -> list[int]:
        return [i for i, t in enumerate(self.toggles) if t.value]

    def redraw(self) -> None:
        """Draw the selected image with the selected classes."""
        if not len(self.dataset):
            return
        s = self.dataset[self.slider.value]
        fig = Figure(figsize=self.figsize)
        ax = fig.subplots()
        crowd = int(s.crowd.sum())  # counted apart, as the dataset's summary counts them
        draw_sample(s, self.dataset.class_names, ax, classes=self.visible_classes,
                    title=f"{s.image_id}  ({len(s.boxes) - crowd} objects"
                          + (f", {crowd} crowd region{'s' * (crowd > 1)}, dotted)" if crowd else ")"))
        self.drawn = len(ax.patches)
        self.image.value = figure_to_png(fig)

    def _ipython_display_(self):
        from IPython.display import display
        display(self.widget)


def dataset_browser(dataset: SmearDataset, **kw) -> DatasetBrowser:
    """A :class:`DatasetBrowser` for ``dataset``; display it as the cell's last expression.

    Parameters
    ----------
    dataset : the SmearDataset to browse.
    **kw : further :class:`DatasetBrowser` options (``figsize``).
    """
    return DatasetBrowser(dataset, **kw)


class PreprocessExplorer:
    """Before/after view of one preprocessing method with a strength slider.

    Parameters
    ----------
    images : list of RGB uint8 images to choose from.
    methods : ``{name: f(image, strength) -> image}``; see
        :func:`smearlab.preprocess.explorer_methods`.
    strength : (min, max, step, default) of the strength slider.
    figsize : size of the before/after figure in inches.
    """

    def __init__(self, images, methods, strength=(0.0, 2.0, 0.05, 1.0), figsize=(10, 4.2)):
        self.images = list(images)
        self.methods = dict(methods)
        self.figsize = figsize
        lo, hi, step, default = strength
        self.index = W.IntSlider(value=0, min=0, max=max(len(self.images) - 1, 0), description="image",
                                 continuous_update=False)
        self.method = W.Dropdown(options=list(self.methods), description="method")
        self.strength = W.FloatSlider(value=default, min=lo, max=hi, step=step, description="strength",
                                      continuous_update=False)
        self.image = W.Image(format="png")
        self.result = None
        for w in (self.index, self.method, self.strength):
            w.observe(lambda _change: self.redraw(), names="value")
        self.widget = W.VBox([W.HBox([self.index, self.method, self.strength]), self.image])
        self.redraw()

    def redraw(self) -> None:
        """Apply the chosen method and show the image before and after."""
        if not self.images:
            return
        before = self.images[self.index.value]
        fn = self.methods[self.method.value]
        self.result = fn(before, self.strength.value)
        cap = getattr(fn, "max_strength", None)  # the title says the strength applied, not the slider's
        shown = self.strength.value if cap is None else min(self.strength.value, cap)
        note = ", its most" if cap is not None and self.strength.value > cap else ""
        fig = Figure(figsize=self.figsize)
        axes = fig.subplots(1, 2)
        for ax, img, title in zip(axes, (before, self.result),
                                  ("before", f"{self.method.value} (strength {shown:g}{note})")):
            ax.imshow(img)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        self.image.value = figure_to_png(fig)

    def _ipython_display_(self):
        from IPython.display import display
        display(self.widget)


class TSNEExplorer:
    """t-SNE of one or more embeddings with a perplexity slider and a colour-by choice.

    Each (embedding, perplexity) map is computed once (:func:`smearlab.classification.embed.tsne`) and cached, so
    going back to a perplexity is instant; the figure is drawn by :func:`smearlab.viz.plots.plot_embedding`.

    Parameters
    ----------
    embeddings : ``{name: (N, D) features}`` (e.g. ``{"pixels (PCA)": ..., "CNN": ...}``) or one array.
    labels, domains : ``(N,)`` class and domain of each point.
    class_names : names of integer ``labels``.
    perplexity : initial value of the perplexity slider.
    perplexity_range : (min, max, step) of the slider (the maximum is capped below the number
        of points).
    seed : t-SNE random state.
    maps : ``{name: (N, 2) map}`` already computed at ``perplexity`` with ``seed`` (put in the
        cache, so the first view costs nothing).
    figsize : size of the figure in inches.

    ``.perplexity``, ``.colour_by`` and ``.embedding`` can be set from code as well as by hand;
    ``.Y`` holds the map drawn last and ``.computed`` how many maps were computed.
    """

    def __init__(self, embeddings, labels, domains, class_names=None, *, perplexity: int = 30,
                 perplexity_range=(5, 50, 5), seed: int = 0, maps=None, figsize=(6, 5)):
        self.embeddings = dict(embeddings) if isinstance(embeddings, dict) else {"embedding": embeddings}
        if not self.embeddings:
            raise ValueError("embeddings is empty")
        sizes = {len(np.asarray(x)) for x in self.embeddings.values()}
        if len(sizes) != 1:
            raise ValueError(f"embeddings have different numbers of points: {sorted(sizes)}")
        n = sizes.pop()
        if labels is None and domains is None:
            raise ValueError("give labels or domains: the map is coloured by one of them")
        self.labels, self.domains, self.class_names = labels, domains, class_names
        self.seed, self.figsize = seed, figsize
        self._cache: dict = {(k, int(perplexity)): v for k, v in (maps or {}).items() if k in self.embeddings}
        self.computed = 0
        self.Y = None
        lo, hi, step = perplexity_range
        hi = max(1, min(int(hi), n - 1))
        lo = max(1, min(int(lo), hi))
        self.embedding = W.Dropdown(options=list(self.embeddings), description="embedding")
        self.perplexity = W.IntSlider(value=int(min(max(perplexity, lo), hi)), min=lo, max=hi, step=int(step),
                                      description="perplexity", continuous_update=False)
        # only the colourings there is something for (choosing 'domain' without domains failed in
        # its callback and left the class view under a dropdown reading 'domain')
        self.colour_by = W.Dropdown(options=[o for o, v in (("class", labels), ("domain", domains)) if v is not None],
                                    description="colour by")
        self.image = W.Image(format="png")
        for w in (self.embedding, self.perplexity, self.colour_by):
            w.observe(lambda _change: self.redraw(), names="value")
        self.widget = W.VBox([W.HBox([self.embedding, self.perplexity, self.colour_by]), self.image])
        self.redraw()

    def map(self, name: str, perplexity: int):
        """The cached t-SNE map of embedding ``name`` at ``perplexity``.

        Parameters
        ----------
        name : a key of the embeddings.
        perplexity : t-SNE perplexity (an integer).
        """
        key = (name, int(perplexity))
        if key not in self._cache:
            self._cache[key] = tsne(self.embeddings[name], perplexity=int(perplexity), seed=self.seed)
            self.computed += 1
        return self._cache[key]

    def redraw(self) -> None:
        """Compute (or fetch) the selected map and draw it coloured as selected."""
        name, p = self.embedding.value, self.perplexity.value
        self.Y = self.map(name, p)
        fig = Figure(figsize=self.figsize)
        ax = fig.subplots()
        plot_embedding(self.Y, self.labels, self.domains, class_names=self.class_names,
                       by=[self.colour_by.value], axes=[ax], title=f"{name}, perplexity {p}")
        self.image.value = figure_to_png(fig)

    def _ipython_display_(self):
        from IPython.display import display
        display(self.widget)


class ClassicalExplorer:
    """Tune a classical segmenter by hand: method, threshold, minimum distance, sigma range.

    Each change re-runs :func:`smearlab.segmentation.classical.segment` on the chosen image, shows the
    outlines (:func:`smearlab.viz.plots.overlay_instances`: predictions yellow, ground truth cyan) as a
    PNG and the image's metrics (instances found and expected, count error, DSB score when the
    dataset has instance masks, milliseconds) as HTML.

    Parameters
    ----------
    dataset : SmearDataset (instance masks optional).
    method : initial method, a key of :data:`smearlab.segmentation.classical.METHODS`.
    params : initial settings: ``method`` (threshold method), ``channel`` (or "default": the
        method's own), ``offset``, ``min_distance``, ``min_sigma``, ``max_sigma`` set the controls;
        the blob threshold slider is a factor on each blob method's default threshold
        (:data:`smearlab.segmentation.classical.BLOB_THRESHOLDS`); other keys (``min_size``, ``opening_radius``...)
        are passed to the segmenters unchanged (e.g. :func:`smearlab.segmentation.classical.suggest_params`).
    max_width : images wider than this are shown scaled down.

    ``.params()`` is the current settings dict (what :func:`smearlab.segmentation.classical.segment` gets),
    ``.prediction`` the last prediction and ``.result`` its metrics; every control can be set
    from code as well as by hand.
    """

    #: Settings the controls own (``threshold``: the blob slider times the method's default).
    _CONTROLLED = ("method", "channel", "offset", "min_distance", "min_sigma", "max_sigma", "threshold")

    def __init__(self, dataset, method: str = "threshold", params=None, max_width: int = 720):
        p = {"method": "otsu", "channel": "default", "offset": 0.02, "min_distance": 5, "min_sigma": 2.0,
             "max_sigma": 20.0, **(params or {})}
        if method not in classical.METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {list(classical.METHODS)}")
        self.dataset, self.max_width = dataset, int(max_width)
        self.fixed = {k: v for k, v in p.items() if k not in self._CONTROLLED}
        self.prediction, self.result = None, {}
        style = {"description_width": "initial"}
        self.index = W.IntSlider(value=0, min=0, max=max(len(dataset) - 1, 0), description="image",
                                 continuous_update=False)
        self.method = W.Dropdown(options=list(classical.METHODS), value=method, description="method")
        self.threshold_method = W.Dropdown(options=["otsu", "li", "adaptive"], value=p["method"],
                                           description="threshold", style=style)
        self.channel = W.Dropdown(options=["default", *classical.CHANNELS], value=p["channel"], description="channel")
        # each range holds the value given (a slider clamps silently: suggest_params' 70 px minimum
        # distance for large cells became 40, and the explorer segmented with other settings)
        self.offset = W.FloatSlider(value=p["offset"], min=min(0.0, p["offset"]), max=max(0.2, p["offset"]), step=0.005,
                                    description="offset", continuous_update=False)
        self.min_distance = W.IntSlider(value=p["min_distance"], min=min(1, p["min_distance"]),
                                        max=max(40, int(np.ceil(p["min_distance"]))), description="min distance",
                                        continuous_update=False, style=style)
        self.sigma = W.FloatRangeSlider(value=(p["min_sigma"], p["max_sigma"]), min=min(0.5, p["min_sigma"]),
                                        max=max(40.0, float(np.ceil(p["max_sigma"]))), step=0.5,
                                        description="sigma range", continuous_update=False, style=style)
        factor = float(p["threshold"]) / BLOB_THRESHOLDS.get(method, BLOB_THRESHOLDS["log"]) if "threshold" in p else 1.0
        if not factor > 0:
            raise ValueError(f"the blob threshold must be positive, got {p.get('threshold')!r}")
        self.blob_threshold = W.FloatLogSlider(value=factor, base=10, min=min(-1.0, float(np.floor(np.log10(factor)))),
                                               max=max(1.0, float(np.ceil(np.log10(factor)))), step=0.05,
                                               description="blob thr. ×", continuous_update=False, style=style)
        self.image = W.Image(format="png")
        self.metrics = W.HTML()
        controls = [self.index, self.method, self.threshold_method, self.channel, self.offset,
                    self.min_distance, self.sigma, self.blob_threshold]
        for w in controls:
            w.observe(lambda _change: self.redraw(), names="value")
        self.widget = W.VBox([W.HBox(controls[:4]), W.HBox(controls[4:]), self.metrics, self.image])
        self.redraw()

    def params(self) -> dict:
        """The current settings, as :func:`smearlab.segmentation.classical.segment` takes them."""
        lo, hi = self.sigma.value
        default = BLOB_THRESHOLDS.get(self.method.value, BLOB_THRESHOLDS["log"])
        out = {**self.fixed, "method": self.threshold_method.value, "offset": float(self.offset.value),
               "min_distance": int(self.min_distance.value), "min_sigma": float(lo), "max_sigma": float(hi),
               "threshold": float(self.blob_threshold.value) * default}
        if self.channel.value != "default":
            out["channel"] = self.channel.value
        return out

    def redraw(self) -> None:
        """Segment the chosen image with the current settings and show outlines and metrics."""
        if not len(self.dataset):
            return
        s = self.dataset[self.index.value]
        t0 = time.perf_counter()
        try:
            self.prediction = classical.segment(s.image, self.method.value, self.params())
        except ValueError as e:  # e.g. min_sigma > max_sigma: say so instead of raising in a callback
            self.prediction, self.result = None, {"error": str(e)}
            self.metrics.value = f"<b>{html.escape(str(e))}</b>"
            return
        ms = 1000 * (time.perf_counter() - t0)
        n_pred, n_true = len(self.prediction["masks"]), len(s.boxes)
        self.result = {"found": n_pred, "expected": n_true, "count_error": abs(n_pred - n_true) / max(n_true, 1),
                       "dsb_metric": dsb_score([s.masks], [self.prediction], kind="masks") if s.has_masks else None,
                       "ms": ms}
        r = self.result
        dsb = "n/a" if r["dsb_metric"] is None else f"{r['dsb_metric']:.3f}"
        self.metrics.value = (f"<b>{html.escape(s.image_id)}</b> · {self.method.value}: {n_pred} found, "
                              f"{n_true} expected (count error {r['count_error']:.0%}) · DSB score {dsb} · "
                              f"{ms:.0f} ms")
        self.image.value = self._png(overlay_instances(s.image, self.prediction, s if s.has_masks else None))

    def _png(self, rgb) -> bytes:
        im = Image.fromarray(rgb)
        if im.width > self.max_width:
            im = im.resize((self.max_width, max(1, round(im.height * self.max_width / im.width))))
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return buf.getvalue()

    def _ipython_display_(self):
        from IPython.display import display
        display(self.widget)


class ThresholdTuner:
    """Tune per-class score thresholds and the NMS IoU by hand, watching the metrics.

    Parameters
    ----------
    dataset : the (validation) SmearDataset with ground truth.
    raw : its :class:`RawPredictions` (or a plain list of prediction dicts).
    class_names : must equal the dataset's (checked) when given.
    images_for_overlay : dataset indices the image slider walks through (default: all).
    initial : a :class:`Thresholds` to start from, keyed by the model's class names as
        :func:`~smearlab.detection.tune.auto_tune` writes them (default: every class 0.5, NMS 0.5).
    figsize : size of the overlay figure.
    max_dets : most boxes kept per image and forward pass (highest scores), None for no cap; stored in
        :meth:`thresholds`; ``"initial"``: that of ``initial`` (300 without one).
    iou : the IoU of a match for precision, recall and F1 (AP50 is always at 0.5); None: the IoU
        ``initial`` was tuned at (``auto_tune(iou=...)``), else 0.5. The table names it.

    Score sliders start at the raw cache's ``score_floor``: boxes below it were never kept, so a
    lower threshold would be counted here on fewer boxes than the model gives when it is applied.

    Attributes
    ----------
    sliders : ``{class name: FloatSlider}`` score thresholds, keyed by the model's class names
        (what :meth:`thresholds` applies to; labelled with the dataset's name where it differs).
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
                 initial: Thresholds | None = None, figsize=(7, 5), max_dets: int | None | str = "initial",
                 iou: float | None = None):
        if not isinstance(raw, RawPredictions):
            raw = RawPredictions.for_dataset(dataset, raw)
        raw.check(dataset)
        if class_names is not None and list(class_names) != list(dataset.class_names):
            raise ValueError(f"class_names {list(class_names)} differ from the dataset's "
                             f"{list(dataset.class_names)}")
        self.dataset, self.raw = dataset, raw
        self.class_names = list(dataset.class_names)
        # thresholds apply to the model's output, so each slider is keyed by the model's name of
        # its class (the dataset may list the classes in another order or spelling)
        self.to_dataset = match_classes(raw.class_names, self.class_names, require="both").lut
        model_name = {self.class_names[int(d)]: m for m, d in zip(raw.class_names, self.to_dataset)}
        if isinstance(max_dets, str):
            if max_dets != "initial":
                raise ValueError(f"max_dets must be a number, None or 'initial', got {max_dets!r}")
            max_dets = initial.max_dets if initial is not None else 300
        self.figsize, self.max_dets = figsize, max_dets
        self.overlay_indices = list(range(len(dataset))) if images_for_overlay is None \
            else [int(i) for i in images_for_overlay]
        outside = [i for i in self.overlay_indices if not 0 <= i < len(dataset)]
        if outside:
            raise ValueError(f"images_for_overlay {outside} are not indices of the {len(dataset)} images of "
                             f"{getattr(dataset, 'name', 'the dataset')!r}")
        tuned_at = (initial.metrics or {}).get("iou") if initial is not None else None
        self.iou = float(iou if iou is not None else tuned_at if tuned_at is not None else 0.5)
        if not 0 < self.iou <= 1:
            raise ValueError(f"iou must be in (0, 1], got {iou!r}")
        self.evaluator = FastEvaluator(dataset)
        self.prepared = self.evaluator.prepare(raw, min_iou=min(self.iou, 0.5))
        self.selector = Selector(raw)
        self.initial = initial
        init = initial or Thresholds({m: DEFAULT_SCORE for m in model_name.values()})
        unknown = sorted(set(init.score) - set(model_name.values()))
        if unknown:  # a slider would start at the default without a word
            raise ValueError(f"initial thresholds name {unknown}, not classes of the model {list(raw.class_names)} "
                             "(thresholds apply to the model's output, as auto_tune keys them)")
        style = {"description_width": "initial"}
        floor = float(raw.score_floor)
        below = {m: v for m, v in init.score.items() if float(v) < floor}
        if below:
            log.warning("initial thresholds %s lie below the raw predictions' score floor %g: the sliders start "
                        "at the floor (boxes under it were never kept)", below, floor)

        def readout(v: float) -> str:  # enough decimals to show a value off the 0.01 grid (0.033333)
            return ".2f" if abs(round(v, 2) - v) < 1e-9 else ".4f"
        self.sliders = {}
        for n, m in ((n, model_name[n]) for n in self.class_names):
            start = max(floor, float(init.score.get(m, DEFAULT_SCORE)))
            fmt = ".4f" if ".4f" in (readout(start), readout(floor)) else ".2f"  # steps fall at floor + k * 0.01
            self.sliders[m] = W.FloatSlider(value=start, min=floor, max=1.0, step=0.01,
                                            description=m if m == n else f"{m} ({n})", continuous_update=False,
                                            style=style, readout_format=fmt)
        self.nms = W.FloatSlider(value=1.0 if init.nms_iou is None else float(init.nms_iou),
                                 min=min(0.1, 1.0 if init.nms_iou is None else float(init.nms_iou)), max=1.0,
                                 step=0.05, description="NMS IoU",
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
        nms = None if self.nms.value >= 1.0 else round(float(self.nms.value), 6)
        m = self.metrics
        model_name = {self.class_names[int(d)]: c for c, d in zip(self.raw.class_names, self.to_dataset)}
        metrics = {"mAP50": m.get("mAP50"), "iou": self.iou,  # keyed as the thresholds: the model's names
                   "per_class": {model_name.get(n, n): {"AP50": pc["AP50"], "f1": pc["f1"]}
                                 for n, pc in m.get("per_class", {}).items()}}
        # set by hand, but on the raw predictions the initial thresholds were tuned on: their
        # test-time augmentation flag travels on (predict refuses them made the other way)
        start = self.initial
        tuned = start is not None and start.objective != "manual"
        return Thresholds({n: round(float(s.value), 6) for n, s in self.sliders.items()}, nms,
                          bool(self.agnostic.value), self.max_dets, "tuner" if tuned else "manual", metrics,
                          tta=bool(start.tta) if start is not None else False)

    def refilter(self) -> dict:
        """Re-filter the raw cache and re-evaluate (what a slider change costs, without drawing)."""
        t = time.perf_counter()
        th = self.thresholds()
        self.keep = self.selector(th.score, th.nms_iou, th.class_agnostic, self.max_dets)
        self.metrics = self.evaluator.evaluate_subset(self.prepared, self.keep, iou=self.iou)
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
        at = f"@{self.iou:g}"
        rows = [f"<tr><th>class</th><th>AP50</th><th>P{at}</th><th>R{at}</th><th>F1{at}</th>"
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
        fig = Figure(figsize=self.figsize)  # not through pyplot: every redraw was shown again by a later cell
        ax = fig.subplots()
        ax.imshow(s.image)
        for (x0, y0, x1, y1), lab in zip(s.boxes, s.labels):
            ax.add_patch(box_patch((x0, y0, x1, y1), lw=1.0, ls="--", ec=colors[lab]))
        for (x0, y0, x1, y1), lab, sc in zip(p["boxes"], p["labels"], p["scores"]):
            colour = colors[int(self.to_dataset[lab])]  # the model's label, drawn in its dataset class's colour
            ax.add_patch(box_patch((x0, y0, x1, y1), lw=1.5, ec=colour))
            ax.text(x0, y0, f"{sc:.2f}", color="white", fontsize=5, va="bottom",
                    bbox=dict(fc=colour, ec="none", pad=0.3))
        ax.set_title(f"{s.image_id}: {len(p['boxes'])} predicted (solid), {len(s.boxes)} true "
                     f"(dashed)", fontsize=8)
        ax.axis("off")
        self.image.value = figure_to_png(fig)

    def _ipython_display_(self):
        from IPython.display import display
        display(self.widget)


class ReviewGallery:
    """Browse the images of a ``smearlab predict`` run, the most uncertain first.

    The order is :func:`smearlab.batch.review_order` (images with the most objects scored just
    above their class's threshold first); each image is drawn with its boxes (borderline ones
    dashed) and its counts per class, and, where the run scored a dataset, the true counts.

    Parameters
    ----------
    records : per-image records (:func:`smearlab.batch.read_results`).
    summary : the run's summary (its ``classes`` and ``score_thresholds``).
    read_image : ``f(record) -> (H, W, 3) array``, the image of a record.
    truth : optional ``{image name: {class: count}}`` shown beside the predicted counts.
    margin : how far above its threshold a score counts as borderline.
    figsize : size of the figure in inches.
    """

    def __init__(self, records: Sequence[dict], summary: dict, read_image, *, truth: dict | None = None,
                 margin: float = 0.15, figsize=(7, 5)):
        from ..batch import review_order
        self.records, self.summary, self.read_image = list(records), summary, read_image
        self.truth, self.margin, self.figsize = truth or {}, float(margin), figsize
        self.classes = list(summary["classes"])
        self.thresholds = summary.get("score_thresholds") or {c: DEFAULT_SCORE for c in self.classes}
        self.order = review_order(self.records, self.thresholds, self.margin)
        self.slider = W.IntSlider(value=0, min=0, max=max(len(self.order) - 1, 0), description="rank",
                                  continuous_update=False)
        self.text = W.HTML()
        self.image = W.Image(format="png")
        self.slider.observe(lambda _change: self.redraw(), names="value")
        self.widget = W.VBox([self.slider, self.text, self.image])
        self.redraw()

    def redraw(self) -> None:
        """Draw the image at the slider's rank."""
        if not self.order:
            self.text.value = "no images"
            return
        i, near = self.order[self.slider.value]
        rec = self.records[i]
        colours = dict(zip(self.classes, class_colors(len(self.classes))))
        fig = Figure(figsize=self.figsize)
        ax = fig.subplots()
        ax.imshow(self.read_image(rec))
        for o in rec["objects"]:
            x0, y0, x1, y1 = o["bbox"]
            border = o["score"] - float(self.thresholds.get(o["class"], 0.0)) < self.margin
            ax.add_patch(box_patch((x0, y0, x1, y1), edgecolor=colours.get(o["class"]), linewidth=1.2,
                                   linestyle="--" if border else "-"))
        ax.set_axis_off()
        ax.set_title(f"{rec['image']}: {len(rec['objects'])} objects, {near} borderline (dashed)", fontsize=9)
        self.image.value = figure_to_png(fig)
        counts = {c: sum(o["class"] == c for o in rec["objects"]) for c in self.classes}
        true = self._true_counts(self.truth.get(rec["image"]))
        cells = "".join(f"<td>{html.escape(c)}: <b>{n}</b>" + (f" (true {true.get(c, '-')})" if true else "") + "</td>"
                        for c, n in counts.items())
        self.text.value = f"<table><tr><td>rank {self.slider.value + 1}/{len(self.order)}</td>{cells}</tr></table>"

    def _true_counts(self, true: dict | None) -> dict | None:
        """The true counts of an image keyed by the model's classes: matched by name (aliases
        such as Platelet/Platelets), all objects for a class-agnostic model (one class
        ``object``); a class without a counterpart is absent (shown "-", not 0)."""
        if not true:
            return true
        if self.classes == ["object"]:
            return {"object": int(sum(true.values()))}
        # each name on its own: two truth classes may fall on one model class (Platelet and Platelets)
        lut = [int(match_classes([n], self.classes).lut[0]) for n in true]
        out: dict = {}
        for name, t in zip(true, lut):
            if t >= 0:
                out[self.classes[t]] = out.get(self.classes[t], 0) + int(true[name])
        return out

    def _ipython_display_(self):
        from IPython.display import display
        display(self.widget)
