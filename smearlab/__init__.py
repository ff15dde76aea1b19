"""smearlab: a Jupyter-first research workbench for blood-smear and cell microscopy images."""
__version__ = "0.1.0"


def predict(model_folder, inputs=(), out="predictions", **options):
    """Apply a saved model (a detector, a detector + white-cell classifier cascade, or a U-Net) to
    new images and write per-image results, counts and exports: :func:`smearlab.batch.predict`
    (what ``smearlab predict`` runs)."""
    from .batch import predict as _predict

    return _predict(model_folder, inputs, out, **options)
