"""Drawing samples and plotting dataset statistics with matplotlib.

Every function takes an optional ``ax`` and returns the axes (or figure) it drew on, so
notebooks compose them and tests can count what was drawn.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from .data.sample import Sample, SmearDataset


def figure_to_png(fig, dpi: int = 90) -> bytes:
    """Render a figure to PNG bytes (for ``ipywidgets.Image``).

    Widgets draw on a bare ``matplotlib.figure.Figure``, never through pyplot, so that their
    redraws neither appear as extra notebook outputs nor change pyplot's interactive state.
    """
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def class_colors(n: int) -> list[tuple[float, float, float, float]]:
    """``n`` distinct colours (tab10, then tab20 for more classes)."""
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def draw_sample(sample: Sample, class_names: Sequence[str], ax=None, *, classes: Iterable[int] | None = None,
                boxes: bool = True, masks: bool = True, labels: bool = False, linewidth: float = 1.0,
                title: str | None = None):
    """Show the image with its boxes (and instance masks as a translucent overlay).

    ``classes`` limits the drawing to those class indices. Returns the axes; the number of
    boxes drawn is ``len(ax.patches)``.
    """
    ax = ax or plt.gca()
    img = sample.image
    show = np.ones(len(sample.labels), bool) if classes is None else np.isin(sample.labels, list(classes))
    colors = class_colors(len(class_names))
    if masks and sample.has_masks and show.any():
        overlay = img.astype(np.float32) / 255.0
        for m, lab in zip(sample.masks[show], sample.labels[show]):
            overlay[m] = 0.55 * overlay[m] + 0.45 * np.asarray(colors[lab][:3])
        img = overlay
    ax.imshow(img)
    if boxes:
        for (x0, y0, x1, y1), lab in zip(sample.boxes[show], sample.labels[show]):
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=linewidth, ec=colors[lab]))
            if labels:
                ax.text(x0, y0, class_names[lab], color="white", fontsize=6, va="bottom",
                        bbox=dict(fc=colors[lab], ec="none", pad=0.5))
    ax.set_title(title if title is not None else sample.image_id, fontsize=8)
    ax.axis("off")
    return ax


def prediction_sample(sample: Sample, prediction: dict, score_threshold: float = 0.0) -> Sample:
    """A Sample with ``sample``'s image and the prediction's boxes, labels and masks (those with
    ``score >= score_threshold``), for drawing predictions with :func:`draw_sample`."""
    keep = np.asarray(prediction["scores"]) >= score_threshold
    masks = prediction.get("masks")
    return Sample(sample.image_id, boxes=np.asarray(prediction["boxes"])[keep],
                  labels=np.asarray(prediction["labels"])[keep], _image=sample.image,
                  _masks=None if masks is None else np.asarray(masks)[keep])


def draw_prediction(sample: Sample, prediction: dict, class_names: Sequence[str], ax=None, *,
                    score_threshold: float = 0.0, title: str | None = None, **kw):
    """Predicted boxes and masks (score >= ``score_threshold``) over the sample's image."""
    pred = prediction_sample(sample, prediction, score_threshold)
    return draw_sample(pred, class_names, ax, title=title if title is not None else
                       f"{sample.image_id}: {len(pred.boxes)} predicted", **kw)


def draw_semantic(image: np.ndarray, semantic: np.ndarray, names: Sequence[str], ax=None, *,
                  alpha: float = 0.45, title: str | None = None):
    """A class map (0 = background, not drawn) as a translucent overlay with a legend."""
    if semantic.shape != image.shape[:2]:
        raise ValueError(f"class map of shape {semantic.shape} does not match the image {image.shape[:2]}")
    ax = ax or plt.gca()
    colors = class_colors(max(len(names) - 1, 1))
    overlay = image.astype(np.float32) / 255.0
    for k in range(1, len(names)):
        m = semantic == k
        overlay[m] = (1 - alpha) * overlay[m] + alpha * np.asarray(colors[k - 1][:3])
    ax.imshow(overlay)
    ax.legend(handles=legend_handles(list(names[1:])), fontsize=6, loc="lower right")
    if title:
        ax.set_title(title, fontsize=8)
    ax.axis("off")
    return ax


def gallery(dataset: SmearDataset, indices: Sequence[int] | None = None, n: int = 8, cols: int = 4,
            size: float = 3.0, **draw_kw):
    """A grid of samples with their annotations; returns the figure."""
    indices = list(range(min(n, len(dataset)))) if indices is None else list(indices)
    rows = max(1, int(np.ceil(len(indices) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size * 0.8), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, indices):
        draw_sample(dataset[i], dataset.class_names, ax, **draw_kw)
    fig.tight_layout()
    return fig


def legend_handles(class_names: Sequence[str]):
    """Patches for a legend of the class colours."""
    from matplotlib.patches import Patch
    return [Patch(color=c, label=n) for n, c in zip(class_names, class_colors(len(class_names)))]


def plot_class_distribution(counts: dict[str, int], ax=None, title: str = "objects per class"):
    """Bar chart of object counts per class, counts written on the bars."""
    ax = ax or plt.gca()
    names, vals = list(counts), list(counts.values())
    bars = ax.bar(names, vals, color=class_colors(len(names)))
    ax.bar_label(bars, fontsize=8)
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=30)
    return ax


def plot_objects_per_image(per_image: np.ndarray, class_names: Sequence[str], ax=None):
    """Histogram of objects per image, one line per class."""
    ax = ax or plt.gca()
    colors = class_colors(len(class_names))
    top = int(per_image.max()) if per_image.size else 1
    bins = np.arange(0, top + 2) - 0.5 if top < 60 else 30
    for k, name in enumerate(class_names):
        ax.hist(per_image[:, k], bins=bins, histtype="step", color=colors[k], label=name, lw=1.5)
    ax.set_xlabel("objects in the image")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    ax.set_title("objects per image")
    return ax


def plot_box_sizes(sizes: dict[str, np.ndarray], ax=None):
    """Width/height scatter of boxes, one colour per class (``sizes[name]`` is (N, 2))."""
    ax = ax or plt.gca()
    colors = class_colors(len(sizes))
    for (name, wh), c in zip(sizes.items(), colors):
        if len(wh):
            ax.scatter(wh[:, 0], wh[:, 1], s=6, alpha=0.5, color=c, label=f"{name} ({len(wh)})")
    ax.set_xlabel("box width (px)")
    ax.set_ylabel("box height (px)")
    ax.legend(fontsize=8, markerscale=2)
    ax.set_title("box size per class")
    return ax


def plot_colour_stats(stats: dict[str, np.ndarray], ax=None):
    """Per-image mean colour: hue vs saturation scatter, one colour per domain.

    ``stats`` maps a domain name to an (N, 6) array of mean R, G, B, H, S, V in [0, 1]
    (see :func:`smearlab.eda.colour_stats`). Each point is drawn in the image's mean colour,
    with a marker per domain.
    """
    ax = ax or plt.gca()
    markers = "osD^v<>"
    for (dom, a), mk in zip(stats.items(), markers):
        if len(a):
            ax.scatter(a[:, 3], a[:, 4], c=np.clip(a[:, :3], 0, 1), marker=mk, s=25, ec="k", lw=0.3,
                       label=f"{dom} ({len(a)})")
    ax.set_xlabel("mean hue")
    ax.set_ylabel("mean saturation")
    ax.legend(fontsize=8)
    ax.set_title("colour per image and domain")
    return ax


def plot_channel_histograms(groups: dict[str, Sequence[np.ndarray]], axes=None, bins: int = 64,
                            max_pixels: int = 200_000, seed: int = 0):
    """Density of R, G and B values per group of images (one line per group, one axes per channel).

    ``groups`` maps a name (a domain, or "B normalised") to a list of RGB uint8 images; pixels
    are subsampled with a fixed seed to at most ``max_pixels`` per group.
    """
    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(12, 3))
    rng = np.random.default_rng(seed)
    styles = ["-", "--", ":", "-."]
    for (name, images), ls in zip(groups.items(), styles * 4):
        px = np.concatenate([im.reshape(-1, 3) for im in images])
        if len(px) > max_pixels:
            px = px[rng.choice(len(px), max_pixels, replace=False)]
        for c, (ax, colour) in enumerate(zip(axes, ("red", "green", "blue"))):
            ax.hist(px[:, c], bins=bins, range=(0, 255), density=True, histtype="step", ls=ls,
                    color=colour, label=name)
    for ax, ch in zip(axes, "RGB"):
        ax.set_title(f"{ch} channel", fontsize=9)
        ax.set_xlabel("value")
        ax.legend(fontsize=7)
    return axes


def draw_failures(sample: Sample, prediction: dict, class_names: Sequence[str], ax=None, iou: float = 0.5):
    """Detections against ground truth: found cells thin green, missed cells red dashed,
    spurious detections orange. Returns the axes; the title gives the counts."""
    from .evaluate import match_image
    ax = ax or plt.gca()
    tp, found = match_image(sample, prediction, iou)
    ax.imshow(sample.image)
    for box, ok in zip(sample.boxes, found):
        x0, y0, x1, y1 = box
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=0.6 if ok else 1.6,
                               ec="limegreen" if ok else "red", ls="-" if ok else "--"))
    for (x0, y0, x1, y1), lab, ok in zip(prediction["boxes"], prediction["labels"], tp):
        if not ok:
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.4, ec="orange"))
            ax.text(x0, y0, class_names[lab], color="orange", fontsize=6, va="bottom")
    ax.set_title(f"{sample.image_id}: {int((~found).sum())} missed, {int((~tp).sum())} spurious", fontsize=8)
    ax.axis("off")
    return ax
