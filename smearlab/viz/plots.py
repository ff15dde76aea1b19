"""Drawing samples and predictions, and the plots of the notebooks (matplotlib)."""
from __future__ import annotations

import io
from typing import Iterable, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle
from pytorch_grad_cam.utils.image import show_cam_on_image
from skimage.segmentation import find_boundaries

from ..classification.embed import as_label_array
from ..data.predictions import check_predictions, class_names_of
from ..data.sample import Sample, SmearDataset
from ..explain.cam import CamMasks, DetectorCam
from ..metrics.detection import match_image
from ..metrics.semantic import semantic_of
from ..segmentation.classical import as_image_array, instances_to_label_image, stretch01


def figure_to_png(fig, dpi: int = 90) -> bytes:
    """Render a figure to PNG bytes (for ``ipywidgets.Image``).

    Widgets draw on a bare ``matplotlib.figure.Figure``, never through pyplot, so that their
    redraws neither appear as extra notebook outputs nor change pyplot's interactive state.

    Parameters
    ----------
    fig : a matplotlib figure.
    dpi : resolution of the PNG.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()



def box_patch(box, **style) -> Rectangle:
    """A matplotlib rectangle for a box ``(x0, y0, x1, y1)`` in pixel-edge coordinates (the
    project's convention) drawn over ``imshow``, which puts pixel *centres* on whole numbers:
    shifted half a pixel up and left, so that it frames the pixels it covers (unshifted it missed
    its own mask by half a pixel, visible on platelets).

    Parameters
    ----------
    box : ``(x0, y0, x1, y1)`` in pixels.
    **style : matplotlib patch options (``ec``, ``lw``, ``ls`` ...); not filled unless given.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    return Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, **{"fill": False, **style})

def class_colors(n: int) -> list[tuple[float, float, float, float]]:
    """``n`` distinct colours (tab10, then tab20 for more classes).

    Parameters
    ----------
    n : number of colours (RGBA tuples); colours repeat beyond 20.
    """
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


#: The colour of objects a method finds without a class (a class-agnostic segmenter): none of
#: :func:`class_colors`' first ten, so they never read as the first class.
NEUTRAL = (1.0, 0.85, 0.0, 1.0)


def draw_sample(sample: Sample, class_names: Sequence[str], ax=None, *, classes: Iterable[int] | None = None,
                boxes: bool = True, masks: bool = True, labels: bool = False, linewidth: float = 1.0,
                title: str | None = None, colors: Sequence | None = None):
    """Show the image with its boxes (and instance masks as a translucent overlay).

    ``classes`` limits the drawing to those class indices. A crowd region (a COCO ``iscrowd``
    box: a clump boxed as one, no single cell) is drawn dotted and, with ``labels``, named as
    such. Returns the axes; the number of boxes drawn is ``len(ax.patches)``.

    Parameters
    ----------
    sample : the Sample to draw (its image, boxes, labels and instance masks).
    class_names : the names ``sample.labels`` index (one colour per class).
    ax : matplotlib axes to draw on (default: the current axes).
    classes : class indices to draw (None: all).
    boxes : draw the boxes.
    masks : overlay the instance masks (when the sample has them).
    labels : write the class name above each box.
    linewidth : line width of the boxes.
    title : axes title (None: the sample's ``image_id``).
    colors : one colour per class (None: :func:`class_colors`).
    """
    ax = ax or plt.gca()
    img = sample.image
    show = np.ones(len(sample.labels), bool) if classes is None else np.isin(sample.labels, list(classes))
    colors = class_colors(len(class_names)) if colors is None else list(colors)
    if masks and sample.has_masks and show.any():
        overlay = img.astype(np.float32) / 255.0
        for m, lab in zip(sample.masks[show], sample.labels[show]):
            overlay[m] = 0.55 * overlay[m] + 0.45 * np.asarray(colors[lab][:3])
        img = overlay
    ax.imshow(img)
    if boxes:
        for (x0, y0, x1, y1), lab, crowd in zip(sample.boxes[show], sample.labels[show], sample.crowd[show]):
            ax.add_patch(box_patch((x0, y0, x1, y1), lw=linewidth, ec=colors[lab], ls=":" if crowd else "-"))
            if labels:
                ax.text(x0, y0, f"{class_names[lab]} (crowd)" if crowd else class_names[lab], color="white",
                        fontsize=6, va="bottom", bbox=dict(fc=colors[lab], ec="none", pad=0.5))
    ax.set_title(title if title is not None else sample.image_id, fontsize=8)
    ax.axis("off")
    return ax


def prediction_sample(sample: Sample, prediction: dict, score_threshold: float = 0.0) -> Sample:
    """A Sample with ``sample``'s image and the prediction's boxes, labels and masks (those with
    ``score >= score_threshold``), for drawing predictions with :func:`draw_sample`.

    Parameters
    ----------
    sample : the Sample whose image is used.
    prediction : prediction dict (``boxes``, ``scores``, ``labels``, optionally ``masks``).
    score_threshold : smallest score kept.
    """
    keep = np.asarray(prediction["scores"]) >= score_threshold
    masks = prediction.get("masks")
    return Sample(sample.image_id, boxes=np.asarray(prediction["boxes"])[keep],
                  labels=np.asarray(prediction["labels"])[keep], _image=sample.image,
                  _masks=None if masks is None else np.asarray(masks)[keep])


def draw_prediction(sample: Sample, prediction: dict, class_names: Sequence[str], ax=None, *,
                    score_threshold: float = 0.0, title: str | None = None, class_agnostic: bool = False, **kw):
    """Predicted boxes and masks (score >= ``score_threshold``) over the sample's image.

    Parameters
    ----------
    sample : the Sample whose image is drawn.
    prediction : prediction dict for that image.
    class_names : the names the prediction's labels index.
    ax : matplotlib axes to draw on (default: the current axes).
    score_threshold : smallest score drawn.
    title : axes title (None: the image id and the number of predictions drawn).
    class_agnostic : the method assigns no class (its labels are all 0): every object in the
        colour :data:`NEUTRAL`, without class names (drawn with the dataset's classes they read
        as its first class).
    **kw : further :func:`draw_sample` options (``boxes``, ``masks``, ``labels``, ``linewidth``...).
    """
    pred = prediction_sample(sample, prediction, score_threshold)
    if class_agnostic:
        pred.labels = np.zeros(len(pred.labels), np.int64)
        class_names, kw = ["object"], {**kw, "colors": [NEUTRAL], "labels": False}
    return draw_sample(pred, class_names, ax, title=title if title is not None else
                       f"{sample.image_id}: {len(pred.boxes)} predicted", **kw)


def draw_semantic(image: np.ndarray, semantic: np.ndarray, names: Sequence[str], ax=None, *,
                  alpha: float = 0.45, title: str | None = None):
    """A class map (0 = background, not drawn) as a translucent overlay with a legend.

    Parameters
    ----------
    image : ``(H, W, 3)`` uint8 RGB image.
    semantic : ``(H, W)`` class map of the same size.
    names : names of the class-map values (index = value; ``names[0]`` is the background).
    ax : matplotlib axes to draw on (default: the current axes).
    alpha : opacity of the overlay.
    title : optional axes title.
    """
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
    """A grid of samples with their annotations; returns the figure.

    Parameters
    ----------
    dataset : the SmearDataset.
    indices : which samples (default: the first ``n``).
    n : number of samples when ``indices`` is None.
    cols : number of columns of the grid.
    size : width of one panel in inches.
    **draw_kw : options of :func:`draw_sample`.
    """
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
    """Patches for a legend of the class colours.

    Parameters
    ----------
    class_names : the class names, in class-colour order (see :func:`class_colors`).
    """
    from matplotlib.patches import Patch
    return [Patch(color=c, label=n) for n, c in zip(class_names, class_colors(len(class_names)))]


def plot_class_distribution(counts: dict[str, int], ax=None, title: str = "objects per class"):
    """Bar chart of object counts per class, counts written on the bars.

    Parameters
    ----------
    counts : ``{class name: count}`` (e.g. :meth:`SmearDataset.class_counts`).
    ax : matplotlib axes to draw on (default: the current axes).
    title : axes title.
    """
    ax = ax or plt.gca()
    names, vals = list(counts), list(counts.values())
    bars = ax.bar(names, vals, color=class_colors(len(names)))
    ax.bar_label(bars, fontsize=8)
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=30)
    return ax


def plot_objects_per_image(per_image: np.ndarray, class_names: Sequence[str], ax=None):
    """Histogram of objects per image, one line per class.

    Parameters
    ----------
    per_image : ``(n_images, K)`` counts (:func:`smearlab.data.stats.objects_per_image`).
    class_names : the ``K`` class names.
    ax : matplotlib axes to draw on (default: the current axes).
    """
    ax = ax or plt.gca()
    colors = class_colors(len(class_names))
    top = int(per_image.max()) if per_image.size else 1
    # one set of edges for every class (bins=30 let each class pick its own widths)
    # whole numbers of objects per bin: bins of 2.5 counts drew flat counts as a sawtooth
    width = max(1, int(np.ceil((top + 1) / 60)))
    bins = np.arange(0, top + width + 1, width) - 0.5
    for k, name in enumerate(class_names):
        ax.hist(per_image[:, k], bins=bins, histtype="step", color=colors[k], label=name, lw=1.5)
    ax.set_xlabel("objects in the image")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    ax.set_title("objects per image")
    return ax


def plot_box_sizes(sizes: dict[str, np.ndarray], ax=None):
    """Width/height scatter of boxes, one colour per class (``sizes[name]`` is (N, 2)).

    Parameters
    ----------
    sizes : ``{class name: (N, 2) widths and heights in pixels}``
        (:func:`smearlab.data.stats.box_sizes`).
    ax : matplotlib axes to draw on (default: the current axes).
    """
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
    """Per-image mean colour: hue vs saturation scatter, one marker per domain.

    ``stats`` maps a domain name to an (N, 6) array of mean R, G, B, H, S, V in [0, 1]
    (see :func:`smearlab.data.stats.colour_stats`). Each point is drawn in its image's mean colour
    (the legend's colours are not a domain key: the markers are).

    Parameters
    ----------
    stats : ``{domain: (N, 6) array}``, see above.
    ax : matplotlib axes to draw on (default: the current axes).
    """
    ax = ax or plt.gca()
    markers = "osD^v<>"
    # hue is an angle: the circle is cut where no image lies (the middle of the widest gap between
    # the images' hues), so that a stain whose hues straddle red (0.97 and 0.03) is one cluster,
    # not two at the ends of a 0..1 line
    hues = np.concatenate([a[:, 3] for a in stats.values() if len(a)] or [np.zeros(0)])
    hues = np.sort(hues[np.isfinite(hues)] % 1.0)  # a grey image has no hue (NaN): not drawn
    cut = 0.0
    if len(hues):
        gaps = np.diff(np.append(hues, hues[0] + 1.0))
        k = int(np.argmax(gaps))
        cut = float((hues[k] + gaps[k] / 2) % 1.0)
    for k, (dom, a) in enumerate(stats.items()):  # every domain drawn: markers repeat past the seventh
        if len(a):
            hue = (a[:, 3] - cut) % 1.0 + cut
            grey = int((~np.isfinite(a[:, 3])).sum())
            ax.scatter(hue, a[:, 4], c=np.clip(a[:, :3], 0, 1), marker=markers[k % len(markers)], s=25, ec="k",
                       lw=0.3, label=f"{dom} ({len(a)}{f', {grey} grey: no hue' if grey else ''})")
    ax.set_xlabel(f"mean hue (a circle, cut at {cut:.2f} where no image lies)")
    ax.set_ylabel("mean saturation")
    ax.legend(fontsize=8)
    ax.set_title("colour per image and domain")
    return ax


def plot_channel_histograms(groups: dict[str, Sequence[np.ndarray]], axes=None, bins: int = 64,
                            max_pixels: int = 200_000, seed: int = 0):
    """Density of R, G and B values per group of images (one line per group, one axes per channel).

    ``groups`` maps a name (a domain, or "B normalised") to a list of RGB uint8 images; pixels
    are subsampled with a fixed seed to at most ``max_pixels`` per group.

    Parameters
    ----------
    groups : ``{name: [RGB uint8 images]}``.
    axes : three matplotlib axes, for R, G and B (default: a new pyplot figure).
    bins : number of histogram bins over 0..255.
    max_pixels : most pixels used per group.
    seed : seed of the pixel subsampling.
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


def draw_failures(sample: Sample, prediction: dict, class_names: Sequence[str], ax=None, iou: float = 0.5,
                  failures: Sequence[dict] | None = None):
    """Detections against ground truth: found cells thin green, missed cells red dashed,
    spurious detections orange. Returns the axes; the title gives the counts.

    Parameters
    ----------
    sample : the ground truth (a Sample with boxes and labels).
    prediction : the image's (final, thresholded) prediction dict.
    class_names : the names the labels index (written beside spurious detections).
    ax : matplotlib axes to draw on (default: the current axes).
    iou : smallest IoU of a match (see :func:`~smearlab.metrics.detection.match_image`).
    failures : this image's failures from :func:`~smearlab.metrics.instances.failure_cases` (masks
        matched by mask IoU); when given they decide what is drawn as missed and as spurious, each
        spurious detection named by its kind, so that the drawing agrees with the failures
        reported (matching boxes again by box IoU called a missed irregular cell found). None:
        boxes matched by box IoU.
    """
    ax = ax or plt.gca()
    if failures is None:
        tp, found = match_image(sample, prediction, iou)
        kind_of: dict[int, str] = {}
    else:
        missed = {int(f["index"]) for f in failures if f["kind"] in ("missed", "touching", "faint")}
        kind_of = {int(f["index"]): f["kind"] for f in failures if f["kind"] in ("debris", "split/merge")}
        found = np.array([j not in missed for j in range(len(sample.boxes))], bool)
        tp = np.array([d not in kind_of for d in range(len(prediction["boxes"]))], bool)
    ax.imshow(sample.image)
    for box, ok in zip(sample.boxes, found):
        x0, y0, x1, y1 = box
        ax.add_patch(box_patch(box, lw=0.6 if ok else 1.6, ec="limegreen" if ok else "red", ls="-" if ok else "--"))
    for d, ((x0, y0, x1, y1), lab, ok) in enumerate(zip(prediction["boxes"], prediction["labels"], tp)):
        if not ok:
            ax.add_patch(box_patch((x0, y0, x1, y1), lw=1.4, ec="orange"))
            ax.text(x0, y0, kind_of.get(d, class_names[lab]), color="orange", fontsize=6, va="bottom")
    ax.set_title(f"{sample.image_id}: {int((~found).sum())} missed, {int((~tp).sum())} spurious", fontsize=8)
    ax.axis("off")
    return ax


def plot_pr_curves(curves: dict, ax=None, title: str = "precision-recall", class_names=None, iou: float = 0.5):
    """One line per class of :func:`pr_curves`, the AP at their IoU in the legend (``AP50``: not
    the AP@[.5:.95] records call ``AP``).

    Parameters
    ----------
    curves : ``{class: (recall, precision)}`` from :func:`~smearlab.metrics.detection.pr_curves`.
    ax : matplotlib axes to draw on (default: the current axes).
    title : axes title.
    class_names : the dataset's classes, in label order: each line takes its class's colour, as
        the images do, also when a class without ground truth has no curve (None: the curves'
        own order, the colours shifting past a missing class).
    iou : the IoU the curves were computed at (``pr_curves``' ``iou``), named in the legend.
    """
    ax = ax or plt.gca()
    names = list(class_names) if class_names is not None else list(curves)
    ap = f"AP{round(100 * float(iou))}"
    palette = class_colors(max(len(names), 1))
    for name, (rc, pr) in curves.items():
        col = palette[names.index(name)] if name in names else "grey"
        ax.plot(rc, pr, color=col, label=f"{name} ({ap} {pr.mean():.3f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return ax


def plot_confusion(matrix: np.ndarray, names: Sequence[str], ax=None, *, normalize: bool = False,
                   title: str = "confusion (rows: true)", background: bool = True):
    """Heat map of a confusion matrix with the values written in the cells; ``normalize``
    divides each row by its total.

    Parameters
    ----------
    matrix : counts, rows true: ``(K+1, K+1)`` for detection (:func:`confusion_matrix`, the last
        row and column background), ``(K, K)`` for classification
        (:func:`~smearlab.metrics.classification.classification_report`'s ``confusion``).
    names : the ``K`` class names.
    ax : matplotlib axes to draw on (default: the current axes).
    normalize : show row fractions instead of counts; a class with no true objects has no
        fractions: its row is blank and reads "-" (not 0.00, "never recognised").
    title : axes title.
    background : the matrix has the detection's background row and column.
    """
    ax = ax or plt.gca()
    labels = list(names) + (["background"] if background else [])
    m = np.asarray(matrix, float)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] != len(labels):
        raise ValueError(f"a {m.shape} confusion matrix needs {m.shape[0] - background if m.ndim == 2 else '?'} "
                         f"class names{' (plus the background row)' if background else ''}, got {len(names)}: "
                         f"{list(names)}")
    rows = m.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        shown = np.where(rows > 0, m / np.where(rows > 0, rows, 1), np.nan) if normalize else m
    # fractions on one fixed scale (0..1): scaled to each panel's own range, a classifier at chance
    # (0.40 on its diagonal) was as dark as one at 0.95, side by side
    top = 1.0 if normalize else (float(np.nanmax(shown)) if shown.size and np.isfinite(shown).any() else 1.0)
    ax.imshow(np.ma.masked_invalid(shown), cmap="Blues", vmin=0.0, vmax=max(top, 1e-9))
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            txt = ("-" if np.isnan(shown[i, j]) else f"{shown[i, j]:.2f}") if normalize else f"{int(m[i, j])}"
            ax.text(j, i, txt, ha="center", va="center", fontsize=8,
                    color="white" if shown[i, j] > 0.6 * top else "black")  # on the cell's own shade
    ax.set_title(title)
    return ax


def plot_adaptation_confusions(results: dict, methods=("source_only", "dann")):
    """Notebook 07's confusion matrices on the target test split, summed over seeds and row
    normalised: one row of axes per direction, one column per method.

    Parameters
    ----------
    results : ``{direction: ExperimentResult}`` of
        :func:`smearlab.experiments.domain_adaptation.run_directions`.
    methods : the methods shown side by side.
    """
    fig, axes = plt.subplots(len(results), len(methods), figsize=(5 * len(methods), 4.6 * len(results)),
                             squeeze=False)
    for row, (name, res) in zip(axes, results.items()):
        for ax, m in zip(row, methods):
            plot_confusion(res.confusion[m]["target"], res.shared_classes, ax, normalize=True, background=False,
                           title=f"{name} {m}: target macro F1 {res.mean(m):.3f}")
    fig.tight_layout()
    return fig


def draw_failure_grid(dataset, predictions, indices, class_names: Sequence[str] | None = None, *, titles=None,
                      iou: float = 0.5, failures: Sequence[dict] | None = None):
    """:func:`draw_failures` of the images ``indices`` of ``dataset`` side by side.

    Parameters
    ----------
    dataset : the samples (truth).
    predictions : one prediction per sample; predictions that carry class names (``predict``'s)
        are mapped onto the dataset's classes by name first (matched by label index, a model
        listing its classes in another order had every cell missed and found again).
    indices : which images to draw.
    class_names : the names the predictions' labels index once mapped (None: the dataset's).
    titles : optional text put before each image's title (e.g. the kind of failure it shows).
    iou : the IoU at which a detection matches a cell.
    failures : the failures of :func:`~smearlab.metrics.instances.failure_cases` on these
        predictions (each with its ``"image"`` index): drawn as they were found (see
        :func:`draw_failures`). Give them whenever the titles name failure kinds.
    """
    indices = list(indices)
    if not indices:
        return None
    if class_names_of(predictions) is not None:
        predictions = check_predictions(dataset, predictions)
        class_names = dataset.class_names
    class_names = dataset.class_names if class_names is None else class_names
    fig, axes = plt.subplots(1, len(indices), figsize=(4.2 * len(indices), 3.6), squeeze=False)
    for k, (ax, i) in enumerate(zip(axes[0], indices)):
        draw_failures(dataset[i], predictions[i], class_names, ax, iou=iou,
                      failures=None if failures is None else [f for f in failures if f["image"] == i])
        if titles is not None:
            ax.set_title(f"{titles[k]}: {ax.get_title()}", fontsize=8)
    fig.tight_layout()
    return fig


def draw_segmentation_rows(dataset, predictions: dict, class_maps=None, n: int = 3, *,
                           class_agnostic: Sequence[str] = ()):
    """One row per test image: the truth, each method's instances, and the U-Net's class map.

    Parameters
    ----------
    dataset : samples with instance masks (and ``semantic_names`` for the class map).
    predictions : ``{method name: one prediction per sample}``; predictions that carry class
        names are mapped onto the dataset's classes by name.
    class_maps : the U-Net's ``(H, W)`` class map per sample, or None.
    n : how many images.
    class_agnostic : the methods that assign no class, drawn in one neutral colour
        (:func:`draw_prediction`'s ``class_agnostic``).
    """
    unknown = sorted(set(class_agnostic) - set(predictions))
    if unknown:
        raise ValueError(f"class_agnostic names methods {unknown} that are not among {sorted(predictions)}")
    predictions = {k: v if k in class_agnostic or class_names_of(v) is None else check_predictions(dataset, v)
                   for k, v in predictions.items()}
    n = min(n, len(dataset))
    cols = 1 + len(predictions) + (class_maps is not None)
    fig, axes = plt.subplots(n, cols, figsize=(4 * cols, 3.4 * n), squeeze=False)
    names = dataset.class_names
    for row, i in zip(axes, range(n)):
        draw_sample(dataset[i], names, row[0], title=f"{dataset[i].image_id}: ground truth")
        for ax, (name, preds) in zip(row[1:], predictions.items()):
            draw_prediction(dataset[i], preds[i], names, ax, title=name, class_agnostic=name in class_agnostic)
        if class_maps is not None:
            draw_semantic(dataset[i].image, class_maps[i], dataset.semantic_names, row[-1], title="U-Net class map")
    fig.tight_layout()
    return fig


def draw_outlines_side_by_side(sample, predictions: dict):
    """Each method's instance outlines (yellow) against the truth (cyan) on one image.

    Parameters
    ----------
    sample : the image and its instance masks.
    predictions : ``{method name: the method's prediction for this image}``.
    """
    fig, axes = plt.subplots(1, len(predictions), figsize=(5.5 * len(predictions), 4.2), squeeze=False)
    for ax, (title, pred) in zip(axes[0], predictions.items()):
        ax.imshow(overlay_instances(sample.image, pred, sample))
        ax.set_title(f"{title} (yellow) vs truth (cyan)", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return fig


def plot_cam_tuning(table: Sequence[dict], ax=None):
    """Mean training cell Dice against the relative threshold, one line per layer set (the
    tuning table of :func:`smearlab.explain.cam.tune_cam_masks`).

    Parameters
    ----------
    table : rows with ``layers``, ``rel_threshold`` and ``cell_dice``.
    ax : matplotlib axes to draw on (default: a new figure's).
    """
    ax = ax or plt.subplots(figsize=(7, 3.6))[1]
    for layers in dict.fromkeys(tuple(r["layers"] or ()) for r in table):
        rows = [r for r in table if tuple(r["layers"] or ()) == layers]
        ax.plot([r["rel_threshold"] for r in rows], [r["cell_dice"] for r in rows], marker="o",
                label=" + ".join(n.split(".")[-1] for n in layers) if layers else "summed maps")
    ax.set_xlabel("relative threshold")
    ax.set_ylabel("train cell Dice")
    ax.legend(fontsize=7)
    return ax


def overlay_instances(image: np.ndarray, prediction: dict | None = None, truth=None, *,
            colour=(255, 200, 0), truth_colour=(0, 200, 255)) -> np.ndarray:
    """``image`` (RGB uint8) with instance outlines drawn: predictions in ``colour``, truth in ``truth_colour``.

    ``truth`` is an ``(N, H, W)`` mask stack or a Sample (its masks). Outlines are the inner
    boundaries of each instance (``skimage.segmentation.find_boundaries``), so touching
    instances stay distinguishable; with both, the truth's are drawn just outside its objects, so
    that a prediction matching it shows both colours side by side. A grey image is drawn in grey.

    Parameters
    ----------
    image : ``(H, W, 3)`` or ``(H, W)`` image (uint8, or other dtypes stretched to 0..255).
    prediction : optional prediction dict with ``masks`` of the image's size.
    truth : optional ground-truth masks or Sample (see above).
    colour : RGB colour of the predicted outlines.
    truth_colour : RGB colour of the ground-truth outlines.

    Returns
    -------
    np.ndarray
        ``(H, W, 3)`` uint8 copy of the image.
    """
    img = as_image_array(image, "overlay_instances")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.dtype != np.uint8:
        img = (stretch01(img) * 255).round().astype(np.uint8)
    out = img.copy()
    layers = []
    if truth is not None:
        t = truth.masks if hasattr(truth, "masks") else truth
        if t is not None and len(t):
            layers.append((instances_to_label_image(np.asarray(t)), truth_colour))
    if prediction is not None and len(prediction.get("masks", ())):
        layers.append((instances_to_label_image(prediction), colour))
    for (lab, c), mode in zip(layers, ("outer", "inner") if truth is not None and len(layers) == 2 else ("inner",)):
        if lab.shape != out.shape[:2]:
            raise ValueError(f"overlay_instances: masks of size {lab.shape} on an image of size {out.shape[:2]}")
        # the truth just outside its objects, the prediction just inside: an exact match shows both
        # colours side by side (drawn on the same pixels, it looked like a false positive)
        out[find_boundaries(lab, mode=mode)] = c
    return out


def overlay_heatmap(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``image`` (uint8 RGB) blended with ``cam`` as a jet heat map (pytorch-grad-cam's
    ``show_cam_on_image``); the map is scaled to [0, 1] by its maximum first.

    Parameters
    ----------
    image : ``(H, W, 3)`` uint8 RGB image.
    cam : ``(H, W)`` map of the same size.
    alpha : weight of the heat map (the image gets ``1 - alpha``).

    Returns
    -------
    np.ndarray
        ``(H, W, 3)`` uint8 RGB.
    """
    img = np.asarray(image)
    c = np.asarray(cam, np.float32)
    if c.shape != img.shape[:2]:
        raise ValueError(f"cam has shape {c.shape}, image {img.shape[:2]}")
    top = float(c.max())
    c = c / top if top > 0 else c
    return show_cam_on_image(img.astype(np.float32) / 255.0, c, use_rgb=True, image_weight=1 - alpha)


def _outline(ax, mask, colour, style="solid"):
    m = np.asarray(mask, float)
    if m.all() and m.size:  # no edge to trace: a frame round the image, or it read as no mask at all
        h, w = m.shape
        ax.add_patch(Rectangle((-0.5, -0.5), w, h, fill=False, ec=colour, lw=2.4, ls=style))
    elif m.any():
        ax.contour(m, levels=[0.5], colors=[colour], linewidths=1.2, linestyles=style)


def plot_cam_examples(images, result: CamMasks, truth=None, *, classical=None, indices=None,
                      class_names=None, n: int = 4, axes=None):
    """One row per image: the image, each layer's CAM, the summed CAM, and the masks.

    The last panel outlines the Grad-CAM mask (red), the ground-truth cell (green) and nucleus
    (cyan, dotted), and the classical mask (blue, dashed) when ``classical`` masks are given.

    Parameters
    ----------
    images : the images (arrays or Samples) ``result`` was computed on.
    result : :class:`CamMasks` from :func:`cam_masks`.
    truth : semantic masks or Samples with them (optional).
    classical : masks of another method on the same images (optional).
    indices : which images (default the first ``n``).
    class_names : names of ``result.targets`` for the titles.
    n : number of images when ``indices`` is None.
    axes : ``(rows, len(layers) + 3)`` axes (default: a new pyplot figure).

    Returns
    -------
    matplotlib Figure
    """
    images = list(images)
    idx = list(indices) if indices is not None else list(range(min(n, len(images))))
    layers = list(result.per_layer)
    cols = len(layers) + 3
    if axes is None:
        _, axes = plt.subplots(len(idx), cols, figsize=(2.1 * cols, 2.2 * len(idx)), squeeze=False)
    axes = np.asarray(axes).reshape(len(idx), cols)
    truth = list(truth) if truth is not None else None
    for row, i in zip(axes, idx):
        img = np.asarray(getattr(images[i], "image", images[i]))
        tgt = result.targets[i] if result.targets else -1
        name = (class_names[tgt] if class_names is not None and 0 <= tgt < len(class_names)
                else "no one class" if tgt < 0 else str(tgt))  # -1: EigenCAM's class-agnostic map, a custom target
        row[0].imshow(img)
        row[0].set_title(f"{getattr(images[i], 'image_id', i)}\nexplains: {name}", fontsize=7)
        for ax, layer in zip(row[1:], layers):
            ax.imshow(overlay_heatmap(img, result.per_layer[layer][i]))
            ax.set_title(layer.split(".")[-1], fontsize=8)
        row[-2].imshow(overlay_heatmap(img, result.cams[i]))
        row[-2].set_title(f"sum of {len(layers)}", fontsize=8)
        row[-1].imshow(img)
        _outline(row[-1], result.masks[i], "red")
        if truth is not None:
            sem = semantic_of(truth[i])
            _outline(row[-1], sem > 0, "lime")
            _outline(row[-1], sem == 2, "cyan", "dotted")
        if classical is not None:
            _outline(row[-1], classical[i], "blue", "dashed")
        row[-1].set_title(f"mask (thr {result.rel_threshold:g})", fontsize=8)
        for ax in row:
            ax.axis("off")
    return axes[0, 0].figure


def plot_detector_cam(image, result: DetectorCam, class_names=None, axes=None):
    """The image with the explained box, and the summed detector CAM over it (two panels).

    Parameters
    ----------
    image : the image (array or Sample) the CAM was computed on.
    result : :class:`DetectorCam` from :func:`~smearlab.explain.cam.detector_cam`.
    class_names : names of the detector's classes for the title (None: the label index).
    axes : two matplotlib axes (default: a new pyplot figure).

    Returns
    -------
    matplotlib Figure
    """
    img = np.asarray(getattr(image, "image", image))
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 4))
    name = class_names[result.label] if class_names is not None else str(result.label)
    x0, y0, x1, y1 = result.box
    for ax, shown, title in zip(axes, (img, overlay_heatmap(img, result.cam)),
                                (f"box: {name} (score {result.score:.2f})", f"Grad-CAM, {' + '.join(result.layers)}")):
        ax.imshow(shown)
        ax.add_patch(box_patch((x0, y0, x1, y1), edgecolor="white", linewidth=1.5))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    return axes[0].figure


def _names(values, names: Sequence[str] | None) -> np.ndarray:
    a = np.asarray(values)
    if names is not None and np.issubdtype(a.dtype, np.integer):
        names = list(names)
        return np.asarray([names[int(v)] if 0 <= int(v) < len(names) else str(v) for v in a])
    return a.astype(str)


def plot_embedding(Y, labels=None, domains=None, *, class_names: Sequence[str] | None = None,
                   by: Sequence[str] = ("class", "domain"), axes=None, title: str | None = None,
                   point_size: float = 12.0):
    """Scatter a 2-D map coloured by class and by domain, one panel each.

    Parameters
    ----------
    Y : ``(N, 2)`` map (e.g. :func:`tsne`).
    labels : ``(N,)`` class of each point (ints into ``class_names``, or names).
    domains : ``(N,)`` domain of each point.
    class_names : names of integer ``labels``.
    by : panels to draw, any of ``"class"``, ``"domain"``.
    axes : matplotlib axes to draw on, one per panel (default: a new pyplot figure).
    title : prefix of the panel titles.
    point_size : marker size (matplotlib ``s``).

    Returns
    -------
    matplotlib Figure
    """
    y = np.asarray(Y, np.float64)
    if y.ndim != 2 or y.shape[1] != 2:
        raise ValueError(f"Y must be (N, 2), got shape {y.shape}")
    by = [by] if isinstance(by, str) else list(by)
    colour = {"class": labels, "domain": domains}
    for b in by:
        if b not in colour:
            raise ValueError(f"unknown colouring {b!r}; choose from 'class', 'domain'")
        if colour[b] is None:
            raise ValueError(f"colouring by {b} needs {'labels' if b == 'class' else 'domains'}")
    if axes is None:
        _, axes = plt.subplots(1, len(by), figsize=(5.2 * len(by), 4.4), squeeze=False)
        axes = axes[0]
    axes = list(np.atleast_1d(axes))
    if len(axes) != len(by):
        raise ValueError(f"{len(by)} panels but {len(axes)} axes")
    for ax, b in zip(axes, by):
        vals = _names(as_label_array(colour[b], len(y), "labels" if b == "class" else "domains"),
                      class_names if b == "class" else None)
        order = list(class_names) if b == "class" and class_names is not None else []
        numbers = not order and all(str(v).lstrip("-").isdigit() for v in vals)  # integer labels, no names
        extra = sorted(set(vals) - set(order), key=(lambda g: int(g)) if numbers else None)  # 2 before 10
        groups = [g for g in order if g in set(vals)] + extra
        # a class keeps its colour whichever classes are present (its place in class_names; an
        # integer label its value, as class_colors colours it in the other figures; negative
        # labels after the largest, never on another label's colour)
        if numbers:
            top = max([int(g) for g in extra if int(g) >= 0], default=-1)
            negative = [g for g in extra if int(g) < 0]
            index = {g: int(g) if int(g) >= 0 else top + 1 + negative.index(g) for g in extra}
        else:
            index = {g: k for k, g in enumerate(order + extra)}
        palette = class_colors(max(list(index.values()) + [len(order) + len(extra) - 1]) + 1)
        for g in groups:
            c = palette[index[g]]
            sel = vals == g
            ax.scatter(y[sel, 0], y[sel, 1], s=point_size, color=c, label=f"{g} ({int(sel.sum())})",
                       alpha=0.8, linewidths=0)
        ax.set_title(f"{title + ': ' if title else ''}by {b}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7, markerscale=1.5, loc="best", framealpha=0.7)
    return axes[0].figure


def plot_embeddings(maps: dict, labels, domains, *, class_names: Sequence[str] | None = None,
                    separability: dict | None = None, point_size: float = 10.0):
    """A grid of 2-D maps: one row per embedding, coloured by class (left) and domain (right).

    ``separability`` (from :func:`separability_table`) adds the domain scores to the titles.
    Returns the matplotlib Figure.

    Parameters
    ----------
    maps : ``{embedding name: (N, 2) map}``, one row each.
    labels : ``(N,)`` class of each point (ints into ``class_names``, or names).
    domains : ``(N,)`` domain of each point.
    class_names : names of integer ``labels``.
    separability : ``{embedding name: {"linear_domain_accuracy", "silhouette", ...}}`` (optional).
    point_size : marker size (matplotlib ``s``).
    """
    if not maps:
        raise ValueError("maps is empty")
    fig, axes = plt.subplots(len(maps), 2, figsize=(10.4, 4.3 * len(maps)), squeeze=False)
    for row, (name, y) in zip(axes, maps.items()):
        title = name
        if separability and name in separability:
            s = separability[name]
            title += f" (domain acc {s['linear_domain_accuracy']:.2f}, silhouette {s['silhouette']:.2f})"
        plot_embedding(y, labels, domains, class_names=class_names, axes=list(row), title=title,
                       point_size=point_size)
    fig.tight_layout()
    return fig
