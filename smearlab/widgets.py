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
