"""ipywidgets front ends. They hold no logic of their own: drawing lives in :mod:`smearlab.viz`.

Figures are rendered to PNG and shown in an ``ipywidgets.Image`` rather than captured by an
``Output`` widget: output capture races with headless executors (papermill/nbclient can hang
waiting for captured messages), and a PNG swap is also what makes redraws feel instant.
"""
from __future__ import annotations

import ipywidgets as W
import matplotlib.pyplot as plt

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
        with plt.ioff():
            fig, ax = plt.subplots(figsize=self.figsize)
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
