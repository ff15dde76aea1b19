"""Embeddings, t-SNE, the domain separability score, the embedding plot and the perplexity widget."""
import numpy as np
import pytest
import torch
from torch import nn

from smearlab.classification import embed
from smearlab.viz.plots import plot_embedding, plot_embeddings


def _clouds(rng, shift, n=100, d=10):
    a = rng.normal(size=(n, d))
    b = rng.normal(size=(n, d))
    b[:, 0] += shift
    return np.concatenate([a, b]), np.array(["A"] * n + ["B"] * n)


def test_separability_high_for_separated_clouds_and_near_chance_for_one_mixed_cloud(rng):
    x, d = _clouds(rng, shift=8.0)
    sep = embed.separability(x, d)
    assert sep["linear_domain_accuracy"] > 0.9 and sep["silhouette"] > 0.3
    assert sep["chance"] == 0.5 and sep["n"] == 200
    x, d = _clouds(rng, shift=0.0)
    mixed = embed.separability(x, d)
    assert mixed["linear_domain_accuracy"] < 0.65 and abs(mixed["silhouette"]) < 0.05


def test_separability_rejects_bad_input(rng):
    x = rng.normal(size=(10, 3))
    with pytest.raises(ValueError, match="two domains"):
        embed.separability(x, ["A"] * 10)
    with pytest.raises(ValueError, match="one value per point"):
        embed.separability(x, ["A", "B"])
    with pytest.raises(ValueError, match="at least 2 points"):
        embed.separability(x, ["A"] * 9 + ["B"])


def test_tsne_shape_and_determinism_with_seed(rng):
    x = rng.normal(size=(40, 6)).astype(np.float32)
    y1 = embed.tsne(x, perplexity=10, seed=3)
    y2 = embed.tsne(x, perplexity=10, seed=3)
    assert y1.shape == (40, 2) and y1.dtype == np.float32
    assert np.array_equal(y1, y2)
    with pytest.raises(ValueError, match="perplexity"):
        embed.tsne(x, perplexity=40)


def test_pixel_embedding_pca_shapes_and_letterboxing(rng):
    imgs = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    z = embed.pixel_embedding(imgs, n_components=5)
    assert z.shape == (12, 5)
    assert embed.pixel_embedding(imgs, n_components=50).shape == (12, 12)  # capped at N
    mixed = [imgs[0], rng.integers(0, 256, (20, 12, 3), dtype=np.uint8)]
    with pytest.raises(ValueError, match="size="):
        embed.pixel_embedding(mixed)
    assert embed.pixel_embedding(mixed, size=8).shape == (2, 2)


class _Embedder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.input_size = 16

    def embed(self, x):
        return self.conv(x).mean((2, 3))


def test_cnn_embedding_is_model_embed_of_the_crops(rng):
    torch.manual_seed(0)
    m = _Embedder()
    imgs = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    z = embed.cnn_embedding(m, imgs, device="cpu", batch_size=4)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
    assert z.shape == (6, 4)
    assert np.allclose(z, m.embed(x).detach().numpy(), atol=1e-5)
    # an image of another size is letterboxed to the model's input size
    assert embed.cnn_embedding(m, [rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)], device="cpu").shape == (1, 4)
    # crops cut at another size are refused, as predict_classes refuses them (they were resized silently)
    with pytest.raises(ValueError, match="24 px"):
        embed.cnn_embedding(m, torch.zeros((2, 3, 24, 24), dtype=torch.uint8), device="cpu")


def test_a_feature_classifiers_embedding_is_what_it_predicts_from():
    """The embedding resized the crops a feature classifier measures as they are (1.5 % apart)."""
    from smearlab.classification.crops import crops_from_dataset
    from smearlab.classification.model import build_classifier
    from smearlab.data.synthetic import make_wbc_crops
    crops = crops_from_dataset(make_wbc_crops(4, seed=0, stain="A", size=96), 64)
    m = build_classifier(crops.class_names, arch="features")
    with torch.no_grad():
        direct = m.embed(crops.images.float() / 255).numpy()
    assert np.abs(embed.cnn_embedding(m, crops, device="cpu") - direct).max() == 0


def test_plot_embedding_draws_one_group_per_class_and_domain(rng):
    import matplotlib
    matplotlib.use("Agg")
    y = rng.normal(size=(30, 2))
    fig = plot_embedding(y, np.arange(30) % 3, ["A", "B"] * 15, class_names=["x", "y", "z"])
    a, b = fig.axes
    assert len(a.collections) == 3 and len(b.collections) == 2
    assert [t.get_text() for t in a.get_legend().get_texts()] == ["x (10)", "y (10)", "z (10)"]
    with pytest.raises(ValueError, match="unknown colouring"):
        plot_embedding(y, np.zeros(30), None, by=["stain"])


def test_tsne_explorer_redraws_and_caches_headless(rng):
    from smearlab.viz.widgets import TSNEExplorer
    x, d = _clouds(rng, 5.0, n=20, d=4)
    w = TSNEExplorer({"raw": x, "scaled": 2 * x}, np.arange(40) % 2, d, ["even", "odd"], perplexity=10,
                     perplexity_range=(5, 100, 5))
    assert w.perplexity.max == 39 and w.computed == 1 and w.Y.shape == (40, 2)
    first = w.image.value
    w.perplexity.value = 5
    assert w.computed == 2 and w.image.value != first
    w.colour_by.value = "domain"
    assert w.computed == 2  # same map, new colours
    w.perplexity.value = 10
    assert w.computed == 2  # cached
    w.embedding.value = "scaled"
    assert w.computed == 3 and len(w.image.value) > 0
    # maps computed beforehand are used as they are
    pre = TSNEExplorer({"raw": x}, np.arange(40) % 2, d, perplexity=10, maps={"raw": np.zeros((40, 2))})
    assert pre.computed == 0 and np.array_equal(pre.Y, np.zeros((40, 2)))


def test_separability_table_and_embedding_grid(rng):
    import matplotlib
    matplotlib.use("Agg")
    x, d = _clouds(rng, 6.0, n=30, d=3)
    table = embed.separability_table({"apart": x, "mixed": rng.normal(size=(60, 3))}, d)
    assert table["apart"]["linear_domain_accuracy"] > table["mixed"]["linear_domain_accuracy"]
    fig = plot_embeddings({"apart": x[:, :2], "mixed": x[:, 1:]}, np.arange(60) % 3, d, separability=table)
    assert len(fig.axes) == 4 and "domain acc" in fig.axes[0].get_title()


def test_tsne_refuses_identical_points_and_separability_a_missing_domain(rng):
    with pytest.raises(ValueError, match="identical"):  # the optimiser crashed the process on this
        embed.tsne(np.ones((30, 4), np.float32), perplexity=5)
    x = rng.normal(size=(20, 3))
    with pytest.raises(ValueError, match="no value for 1 point"):
        embed.separability(x, ["a"] * 10 + ["b"] * 9 + [None])


def test_crop_tensor_and_cnn_embedding_refuse_non_square_tensors():
    t = torch.randint(0, 256, (4, 3, 20, 32), dtype=torch.uint8)
    for size in (None, 32, 16):  # passed through unchanged, or stretched to a square, before
        with pytest.raises(ValueError, match="square"):
            embed.crop_tensor(t, size)

    class E(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.input_size = 32

        def embed(self, x):
            return self.conv(x).mean((2, 3))

    with pytest.raises(ValueError, match="square"):  # its width matched the model's 32 px
        embed.cnn_embedding(E(), t, device="cpu")
    assert embed.crop_tensor(torch.zeros((2, 3, 20, 20), dtype=torch.uint8), 16).shape == (2, 3, 16, 16)
    ims = [np.zeros((20, 32, 3), np.uint8)] * 2  # non-square images are letterboxed
    assert embed.crop_tensor(ims, 16).shape == (2, 3, 16, 16)
