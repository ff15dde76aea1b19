"""ipywidgets front ends. They hold no logic of their own: drawing lives in :mod:`smearlab.viz`.

Figures are rendered to PNG and shown in an ``ipywidgets.Image`` rather than captured by an
``Output`` widget: output capture races with headless executors (papermill/nbclient can hang
waiting for captured messages), and a PNG swap is also what makes redraws feel instant.
"""
from __future__ import annotations

import ipywidgets as W
from matplotlib.figure import Figure

from .data.sample import SmearDataset
from .viz import draw_sample, figure_to_png


class DatasetBrowser:
    """Browse a dataset: an image slider and one toggle per class.

    ``DatasetBrowser(ds).widget`` is the widget to display; ``.slider`` and ``.toggles`` can be
    set from code as well as by hand, and ``.drawn`` holds how many boxes the last redraw drew.
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
        draw_sample(s, self.dataset.class_names, ax, classes=self.visible_classes,
                    title=f"{s.image_id}  ({len(s.boxes)} objects)")
        self.drawn = len(ax.patches)
        self.image.value = figure_to_png(fig)

    def _ipython_display_(self):
        from IPython.display import display
        display(self.widget)


def dataset_browser(dataset: SmearDataset, **kw) -> DatasetBrowser:
    """A :class:`DatasetBrowser` for ``dataset``; display it as the cell's last expression."""
    return DatasetBrowser(dataset, **kw)


class PreprocessExplorer:
    """Before/after view of one preprocessing method with a strength slider.

    Parameters
    ----------
    images : list of RGB uint8 images to choose from.
    methods : ``{name: f(image, strength) -> image}``; see
        :func:`smearlab.preprocess.explorer_methods`.
    strength : (min, max, step, default) of the strength slider.
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
        self.result = self.methods[self.method.value](before, self.strength.value)
        fig = Figure(figsize=self.figsize)
        axes = fig.subplots(1, 2)
        for ax, img, title in zip(axes, (before, self.result),
                                  ("before", f"{self.method.value} (strength {self.strength.value:g})")):
            ax.imshow(img)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        self.image.value = figure_to_png(fig)

    def _ipython_display_(self):
        from IPython.display import display
        display(self.widget)


class TSNEExplorer:
    """t-SNE of one or more embeddings with a perplexity slider and a colour-by choice.

    Each (embedding, perplexity) map is computed once (:func:`smearlab.embed.tsne`) and cached, so
    going back to a perplexity is instant; the figure is drawn by :func:`smearlab.embed.plot_embedding`.

    Parameters
    ----------
    embeddings : ``{name: (N, D) features}`` (e.g. ``{"pixels (PCA)": ..., "CNN": ...}``) or one array.
    labels, domains : ``(N,)`` class and domain of each point.
    class_names : names of integer ``labels``.
    perplexity : initial value; ``perplexity_range`` is (min, max, step) of the slider (the
        maximum is capped below the number of points).
    seed : t-SNE random state.
    maps : ``{name: (N, 2) map}`` already computed at ``perplexity`` with ``seed`` (put in the
        cache, so the first view costs nothing).

    ``.perplexity``, ``.colour_by`` and ``.embedding`` can be set from code as well as by hand;
    ``.Y`` holds the map drawn last and ``.computed`` how many maps were computed.
    """

    def __init__(self, embeddings, labels, domains, class_names=None, *, perplexity: int = 30,
                 perplexity_range=(5, 50, 5), seed: int = 0, maps=None, figsize=(6, 5)):
        import numpy as np
        self.embeddings = dict(embeddings) if isinstance(embeddings, dict) else {"embedding": embeddings}
        if not self.embeddings:
            raise ValueError("embeddings is empty")
        sizes = {len(np.asarray(x)) for x in self.embeddings.values()}
        if len(sizes) != 1:
            raise ValueError(f"embeddings have different numbers of points: {sorted(sizes)}")
        n = sizes.pop()
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
        self.colour_by = W.Dropdown(options=["class", "domain"], description="colour by")
        self.image = W.Image(format="png")
        for w in (self.embedding, self.perplexity, self.colour_by):
            w.observe(lambda _change: self.redraw(), names="value")
        self.widget = W.VBox([W.HBox([self.embedding, self.perplexity, self.colour_by]), self.image])
        self.redraw()

    def map(self, name: str, perplexity: int):
        """The cached t-SNE map of embedding ``name`` at ``perplexity``."""
        from .embed import tsne
        key = (name, int(perplexity))
        if key not in self._cache:
            self._cache[key] = tsne(self.embeddings[name], perplexity=int(perplexity), seed=self.seed)
            self.computed += 1
        return self._cache[key]

    def redraw(self) -> None:
        """Compute (or fetch) the selected map and draw it coloured as selected."""
        from .embed import plot_embedding
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

    Each change re-runs :func:`smearlab.classical.segment` on the chosen image, shows the
    outlines (:func:`smearlab.classical.overlay`: predictions yellow, ground truth cyan) as a
    PNG and the image's metrics (instances found and expected, count error, DSB score when the
    dataset has instance masks, milliseconds) as HTML.

    Parameters
    ----------
    dataset : SmearDataset (instance masks optional).
    method : initial method, a key of :data:`smearlab.classical.METHODS`.
    params : initial settings: ``method`` (threshold method), ``channel`` (or "default": the
        method's own), ``offset``, ``min_distance``, ``min_sigma``, ``max_sigma`` set the controls;
        the blob threshold slider is a factor on each blob method's default threshold
        (:data:`smearlab.classical.BLOB_THRESHOLDS`); other keys (``min_size``, ``opening_radius``...)
        are passed to the segmenters unchanged (e.g. :func:`smearlab.classical.suggest_params`).
    max_width : images wider than this are shown scaled down.

    ``.params()`` is the current settings dict (what :func:`smearlab.classical.segment` gets),
    ``.prediction`` the last prediction and ``.result`` its metrics; every control can be set
    from code as well as by hand.
    """

    #: Settings the controls own (``threshold``: the blob slider times the method's default).
    _CONTROLLED = ("method", "channel", "offset", "min_distance", "min_sigma", "max_sigma", "threshold")

    def __init__(self, dataset, method: str = "threshold", params=None, max_width: int = 720):
        from . import classical
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
        self.offset = W.FloatSlider(value=p["offset"], min=0.0, max=0.2, step=0.005, description="offset",
                                    continuous_update=False)
        self.min_distance = W.IntSlider(value=p["min_distance"], min=1, max=40, description="min distance",
                                        continuous_update=False, style=style)
        self.sigma = W.FloatRangeSlider(value=(p["min_sigma"], p["max_sigma"]), min=0.5, max=40.0, step=0.5,
                                        description="sigma range", continuous_update=False, style=style)
        self.blob_threshold = W.FloatLogSlider(value=1.0, base=10, min=-1, max=1, step=0.05,
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
        """The current settings, as :func:`smearlab.classical.segment` takes them."""
        lo, hi = self.sigma.value
        from .classical import BLOB_THRESHOLDS
        default = BLOB_THRESHOLDS.get(self.method.value, BLOB_THRESHOLDS["log"])
        out = {**self.fixed, "method": self.threshold_method.value, "offset": float(self.offset.value),
               "min_distance": int(self.min_distance.value), "min_sigma": float(lo), "max_sigma": float(hi),
               "threshold": float(self.blob_threshold.value) * default}
        if self.channel.value != "default":
            out["channel"] = self.channel.value
        return out

    def redraw(self) -> None:
        """Segment the chosen image with the current settings and show outlines and metrics."""
        import html
        import time
        import numpy as np
        from . import classical
        from .evaluate import dsb_score
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
                       "dsb": dsb_score([s.masks], [self.prediction], kind="masks") if s.has_masks else None,
                       "ms": ms}
        r = self.result
        dsb = "n/a" if r["dsb"] is None else f"{r['dsb']:.3f}"
        self.metrics.value = (f"<b>{html.escape(s.image_id)}</b> · {self.method.value}: {n_pred} found, "
                              f"{n_true} expected (count error {r['count_error']:.0%}) · DSB score {dsb} · "
                              f"{ms:.0f} ms")
        self.image.value = self._png(classical.overlay(s.image, self.prediction, s if s.has_masks else None))

    def _png(self, rgb) -> bytes:
        import io
        from PIL import Image
        im = Image.fromarray(rgb)
        if im.width > self.max_width:
            im = im.resize((self.max_width, max(1, round(im.height * self.max_width / im.width))))
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return buf.getvalue()

    def _ipython_display_(self):
        from IPython.display import display
        display(self.widget)
