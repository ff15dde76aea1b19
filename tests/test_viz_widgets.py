"""Drawing, EDA statistics and the dataset browser widget."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from smearlab.viz import plots as viz  # noqa: E402

from smearlab.data import stats as eda
from smearlab.viz.widgets import dataset_browser  # noqa: E402

from helpers import toy_dataset  # noqa: E402


def test_draw_sample_draws_one_patch_per_visible_box():
    ds = toy_dataset(3, masks=True)
    s = ds[0]
    ax = viz.draw_sample(s, ds.class_names, plt.figure().gca())
    assert len(ax.patches) == len(s.boxes)
    ax = viz.draw_sample(s, ds.class_names, plt.figure().gca(), classes=[int(s.labels[0])])
    assert len(ax.patches) == int((s.labels == s.labels[0]).sum())
    plt.close("all")


def test_gallery_and_stat_plots():
    ds = toy_dataset(6)
    fig = viz.gallery(ds, n=5, cols=3)
    assert sum(len(a.patches) for a in fig.axes) == sum(len(ds[i].boxes) for i in range(5))
    per = eda.objects_per_image(ds)
    assert per.shape == (6, 3) and per.sum() == ds.num_objects
    sizes = eda.box_sizes(ds)
    assert sum(len(v) for v in sizes.values()) == ds.num_objects
    colours = eda.colour_stats(ds)
    assert set(colours) == {"A", "B"} and colours["A"].shape == (3, 6)
    assert 0 <= colours["A"].min() and colours["A"].max() <= 1
    fig, axes = plt.subplots(2, 2)
    viz.plot_class_distribution(ds.class_counts(), axes[0, 0])
    viz.plot_objects_per_image(per, ds.class_names, axes[0, 1])
    viz.plot_box_sizes(sizes, axes[1, 0])
    viz.plot_colour_stats(colours, axes[1, 1])
    plt.close("all")


def test_colour_distance_and_summary():
    a = np.array([[0.1, 0.2, 0.3, 0, 0, 0]])
    b = np.array([[0.1, 0.2, 0.7, 0, 0, 0]])
    assert abs(eda.colour_distance(a, b) - 0.4) < 1e-9
    s = eda.summary(toy_dataset(4))
    assert s["images"] == 4 and set(s["median_box_size"]) <= {"RBC", "WBC", "Platelets"}


def test_browser_redraws_on_slider_and_toggles():
    ds = toy_dataset(4)
    b = dataset_browser(ds)
    assert b.drawn == len(ds[0].boxes)
    first = b.image.value
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    b.slider.value = 2
    assert b.drawn == len(ds[2].boxes) and b.image.value != first
    for t in b.toggles:
        t.value = False
    assert b.drawn == 0
    b.toggles[int(ds[2].labels[0])].value = True
    assert b.drawn == int((ds[2].labels == ds[2].labels[0]).sum())
    plt.close("all")


def test_preprocess_explorer_applies_method_on_change():
    from smearlab.viz.widgets import PreprocessExplorer
    ds = toy_dataset(3)
    methods = {"identity": lambda im, k: im, "darken": lambda im, k: (im * (1 - k / 2)).astype(np.uint8)}
    ex = PreprocessExplorer([s.image for s in ds], methods, strength=(0, 1, 0.1, 0.5))
    assert np.array_equal(ex.result, ds[0].image)
    ex.method.value = "darken"
    assert ex.result.mean() < ds[0].image.mean()
    ex.strength.value = 1.0
    assert np.allclose(ex.result, (ds[0].image * 0.5).astype(np.uint8))
    ex.index.value = 2
    assert ex.result.shape == ds[2].image.shape and ex.image.value[:4] == b"\x89PNG"


def test_channel_histograms_one_line_per_group_and_channel():
    ds = toy_dataset(4)
    axes = viz.plot_channel_histograms({"A": [ds[0].image], "B": [ds[1].image, ds[2].image]})
    assert all(len(ax.patches) == 2 for ax in axes)
    plt.close("all")
