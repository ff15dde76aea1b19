"""Train on CBC Training (300 images, a validation split carved out of it), evaluate on Testing
(60) with pycocotools: the CPU recipe as a learning curve over time budgets, beside a
torchvision-defaults baseline.

Usage::

    python benchmarks/detection_cbc.py --preset cpu                       # budgets 5, 15, 30 min
    python benchmarks/detection_cbc.py --preset cpu --budgets 5 --skip-baseline
    python benchmarks/detection_cbc.py --preset gpu                       # the GPU recipe (AMP, data on GPU)
    python benchmarks/detection_cbc.py --preset cpu --keep models/cbc     # keep each row's model folder

Every row comes from :func:`smearlab.experiments.detection.fit_and_evaluate`, trained from
scratch (no pretrained weights) for a wall-clock budget (``TrainConfig.time_budget_s``: the
epochs and the learning-rate schedule fitted to the budget). The CPU recipe: the tiny Faster
R-CNN at 480 px, batch 4, SGD 0.02 with a cosine schedule, the default augmentation, anchors
fitted to the training boxes, a moving average of the weights (decay 0.998: the trained model is
the average; each row adds ``val_mAP`` and ``raw``, the validation and Testing scores of the same
run's raw weights from its ``last.pt``, a paired comparison). The baseline follows torchvision's reference defaults for the same
model (800 px, SGD 0.005 with a step schedule, no augmentation, the arch's own anchors) at the
15-minute budget. Each row records mAP50, mAP, AP50 and AP per class, counting accuracy, epochs
done, train and inference images per second. Writes ``benchmarks/results/detection_cbc.json``:
``curve`` (one row per budget), ``baseline``, ``peer`` (null, with the reason: the YOLOv8 peer
runs in ``benchmarks/detection_cbc_peer.py``), ``device`` and the top-level ``mAP50`` / ``mAP`` of
the largest budget's row. The gpu preset writes ``detection_cbc_gpu.json`` (same keys) instead.
"""
from __future__ import annotations

import argparse
import copy
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import run_benchmark, save_result  # noqa: E402

from smearlab.data.splits import detection_splits  # noqa: E402
from smearlab.detection import DetectorConfig, TrainConfig, predict  # noqa: E402
from smearlab.detection.train import default_evaluate  # noqa: E402
from smearlab.experiments.detection import fit_and_evaluate  # noqa: E402
from smearlab.experiments.profiles import CPU_DETECTION_RECIPE, GPU_RECIPE  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cbc"

#: (model config, training config, anchors) per preset and row kind.
PRESETS = {
    "gpu": {
        "smearlab": (dict(arch="fasterrcnn_v2", min_size=640, max_size=854),
                     dict(epochs=40, optimizer="sgd", val_every=5, **GPU_RECIPE), "fit"),
        "baseline": (dict(arch="fasterrcnn_v2", min_size=800, max_size=1333),
                     dict(epochs=10, batch_size=4, lr=0.005, optimizer="sgd", warmup_iters=1000,
                          lr_schedule="step", amp=False, data_on_gpu=False, num_workers=4), "default"),
    },
    "cpu": {
        "smearlab": (dict(arch="fasterrcnn_tiny", min_size=480, max_size=640),
                     dict(epochs=16, **CPU_DETECTION_RECIPE),
                     "fit"),
        "baseline": (dict(arch="fasterrcnn_tiny", min_size=800, max_size=1333),
                     dict(epochs=16, batch_size=4, lr=0.005, warmup_iters=30, lr_schedule="step", amp=False),
                     "default"),
    },
}
#: images per prediction batch (the inference speed of a row is measured at this batch size)
PREDICT_BATCH = {"gpu": 16, "cpu": 8}
KEYS = ("mAP50", "mAP", "count_accuracy", "epochs", "train_s", "train_images_per_s", "infer_images_per_s")
PEER = None
PEER_REASON = ("in its own script: benchmarks/detection_cbc_peer.py trains YOLOv8n beside this recipe in one run "
               "(pip install ultralytics, a benchmark-only extra) and writes detection_cbc_peer.json")


def run(kind: str, preset: str, splits, device: str, seed: int, out: Path, budget_min: float | None,
        checkpoint_every: int = 1) -> dict:
    """One row: train ``kind`` of ``preset`` for ``budget_min`` minutes and score it on Testing
    (``last.pt`` written every ``checkpoint_every`` epochs)."""
    model_kw, train_kw, anchors = PRESETS[preset][kind]
    train_kw = {**train_kw, "checkpoint_every": checkpoint_every}
    cfg = DetectorConfig(class_names=splits["train"].class_names, **model_kw)
    tcfg = TrainConfig(seed=seed, device=device, out_dir=out / f"{kind}-{budget_min}",
                       time_budget_s=None if budget_min is None else budget_min * 60, **train_kw)
    r = fit_and_evaluate(kind, cfg, tcfg, splits["train"], splits["test"], splits["val"], progress=True,
                         anchors=anchors, batch_size=PREDICT_BATCH[preset])
    m = {k: r.metrics[k] for k in KEYS}
    m["budget_s"] = None if budget_min is None else budget_min * 60
    m["per_class"] = {c: {"AP50": v["AP50"], "AP": v["AP"]} for c, v in r.metrics["per_class"].items()}
    m["arch"], m["input_size"], m["anchors"] = r.config.arch, r.config.min_size, r.metrics["anchors"]
    m["device"] = r.metrics["device"]
    if tcfg.ema_decay is not None:  # the average is the model; last.pt keeps the run's raw weights
        val = score(r.model, splits["val"], device)
        m["val_mAP"], m["val_mAP50"] = val["mAP"], val["mAP50"]
        raw = raw_weights(r.model, Path(tcfg.out_dir) / "last.pt")
        val, test = score(raw, splits["val"], device), score(raw, splits["test"], device)
        m["raw"] = {"val_mAP": val["mAP"], "val_mAP50": val["mAP50"], **test}
    if m["device"].startswith("cuda"):  # the first pass above includes kernel selection for new batch shapes
        m["infer_images_per_s_warm"] = warm_inference_rate(r.model, splits["test"], PREDICT_BATCH[preset])
    return m


def score(model, ds, device) -> dict:
    """COCO box scores of ``model`` on ``ds`` (raw, ranked predictions)."""
    m = default_evaluate(ds, predict(model, ds, batch_size=8, device=device, progress=False))
    return {"mAP50": m["mAP50"], "mAP": m["mAP"],
            "per_class": {c: {"AP50": v["AP50"], "AP": v["AP"]} for c, v in m["per_class"].items()}}


def raw_weights(model, last_pt: Path):
    """A copy of ``model`` (trained with a weight average, ``TrainConfig.ema_decay``) holding the
    raw weights its run kept in ``last_pt``, in eval mode: the other half of a paired comparison
    (the same run, the same steps)."""
    import torch

    raw = copy.deepcopy(model)
    raw.load_state_dict(torch.load(last_pt, map_location="cpu", weights_only=True)["model"])
    return raw.eval()


def train_recipe(splits, name: str, model_over: dict | None = None, train_over: dict | None = None, *,
                 device: str, seed: int, out: Path):
    """Train the CPU recipe (with ``model_over`` / ``train_over`` replacing its DetectorConfig and
    TrainConfig fields) on ``splits["train"]`` and score it on Testing: a
    :class:`~smearlab.experiments.detection.DetectionRun`, its model folder in ``out / name / "final"``."""
    model_kw, train_kw, anchors = PRESETS["cpu"]["smearlab"]
    cfg = DetectorConfig(class_names=splits["train"].class_names, **{**model_kw, **(model_over or {})})
    tcfg = TrainConfig(seed=seed, device=device, out_dir=out / name, **{**train_kw, **(train_over or {})})
    return fit_and_evaluate(name, cfg, tcfg, splits["train"], splits["test"], splits["val"], progress=True,
                            anchors=anchors)


def compare_candidates(splits, candidates, *, device: str, seed: int, out: Path) -> list[dict]:
    """Train each candidate variant of the CPU recipe from scratch, one after the other, and score
    it on the validation split and on Testing: the rows of a side-by-side comparison (the choice
    belongs to ``val_mAP``; Testing is reported, not used to choose).

    Parameters
    ----------
    splits : ``detection_splits`` of CBC (train, val, test).
    candidates : ``(label, model_overrides, training_overrides)`` triples: ``label`` is a dict that
        opens the row; the overrides replace the CPU recipe's DetectorConfig and TrainConfig fields.
    device, seed : where and with which seed every candidate trains.
    out : a scratch folder for the runs.
    """
    rows = []
    for label, model_over, train_over in candidates:
        name = "_".join(f"{k}_{v}" for k, v in label.items())
        r = train_recipe(splits, name, model_over, train_over, device=device, seed=seed, out=out)
        val = score(r.model, splits["val"], device)
        rows.append({**label, "val_mAP": val["mAP"], "val_mAP50": val["mAP50"], "mAP": r.metrics["mAP"],
                     "mAP50": r.metrics["mAP50"], "epochs": r.metrics["epochs"],
                     "count_accuracy": r.metrics["count_accuracy"],
                     "per_class": {c: {"AP50": v["AP50"], "AP": v["AP"]} for c, v in r.metrics["per_class"].items()},
                     "train_s": r.metrics["train_s"], "train_images_per_s": r.metrics["train_images_per_s"]})
        print(f"{name}: {rows[-1]['epochs']} epochs, {rows[-1]['train_s']:.0f} s; val mAP {val['mAP']:.4f}; "
              f"test mAP50 {rows[-1]['mAP50']:.3f}, mAP {rows[-1]['mAP']:.3f}", flush=True)
    first = rows[0]
    for r in rows:
        r["ratio_to_first"] = {k: r[k] / first[k] for k in ("val_mAP", "mAP", "mAP50") if first[k]}
    return rows


def warm_inference_rate(model, data, batch_size: int) -> float:
    """Images per second of a second prediction pass over ``data`` (a GPU's kernels already chosen)."""
    import torch

    dev = next(model.parameters()).device
    torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    predict(model, data, batch_size=batch_size, progress=False)
    torch.cuda.synchronize(dev)
    return round(len(data) / (time.perf_counter() - t0), 1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the CBC folder (Training/, Testing/)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budgets", type=float, nargs="+", default=[5, 15, 30], help="minutes of training per row")
    ap.add_argument("--baseline-budget", type=float, default=15, help="minutes of the baseline row")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--keep", type=Path, help="copy each smearlab row's final model folder into this folder "
                    "(smearlab-<budget>min), e.g. for detection_cbc_tta.py --model")
    ap.add_argument("--checkpoint-every", type=int, default=1,
                    help="write last.pt every this many epochs in the smearlab rows (a fast GPU's epochs take seconds)")
    args = ap.parse_args(argv)
    splits = detection_splits(str(args.data), seed=args.seed, val=0.1)
    load_avg = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        curve = []
        for budget in args.budgets:
            curve.append(run("smearlab", args.preset, splits, args.device, args.seed, Path(tmp), budget,
                             args.checkpoint_every))
            raw = curve[-1].get("raw")
            print(f"{budget:5.1f} min: mAP50 {curve[-1]['mAP50']:.3f}, mAP {curve[-1]['mAP']:.3f}, "
                  f"{curve[-1]['epochs']} epochs" + (f" (raw weights of the same run: mAP50 {raw['mAP50']:.3f}, "
                                                     f"mAP {raw['mAP']:.3f}; val mAP {raw['val_mAP']:.4f} "
                                                     f"against {curve[-1]['val_mAP']:.4f})" if raw else ""), flush=True)
            if args.keep:
                shutil.copytree(Path(tmp) / f"smearlab-{budget}" / "final", args.keep / f"smearlab-{budget:g}min",
                                dirs_exist_ok=True)
        baseline = None if args.skip_baseline else run("baseline", args.preset, splits, args.device, args.seed,
                                                        Path(tmp), args.baseline_budget)
    top = max(curve, key=lambda r: r["budget_s"] or 0)
    same = next((r for r in curve if baseline and r["budget_s"] == baseline["budget_s"]), None)
    result = {"curve": curve, "baseline": baseline, "checkpoint_every": args.checkpoint_every,
              "peer": PEER, "peer_reason": PEER_REASON,
              "device": top.get("device", args.device), "mAP50": top["mAP50"], "mAP": top["mAP"],
              "preset": args.preset, "images": {k: len(v) for k, v in splits.items()},
              "ratio_to_baseline": ({k: same[k] / baseline[k] for k in ("mAP50", "mAP") if baseline[k]}
                                    if same and baseline else None),
              "cpu_threads": os.cpu_count(), "load_average_1_5_15": [round(v, 2) for v in load_avg]}
    # the CPU curve is the detection_cbc.json; another preset writes its own file beside it
    name = "detection_cbc" if args.preset == "cpu" else f"detection_cbc_{args.preset}"
    out = save_result(name, result, argv, script="detection_cbc")
    print(f"{'budget':>8s} {'mAP50':>7s} {'mAP':>7s} {'epochs':>6s} {'count acc':>9s} {'img/s train':>11s}")
    for r in curve + ([dict(baseline, budget_s=baseline["budget_s"])] if baseline else []):
        print(f"{r['budget_s'] / 60:7.0f}m {r['mAP50']:7.3f} {r['mAP']:7.3f} {r['epochs']:6d} "
              f"{r['count_accuracy']:9.3f} {r['train_images_per_s']:11.2f}")
    print(f"-> {out}")


if __name__ == "__main__":
    run_benchmark(main)
