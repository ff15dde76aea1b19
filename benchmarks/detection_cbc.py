"""Train on CBC Training (300 images), evaluate on Testing (60): ours against a plain baseline.

Usage::

    python benchmarks/detection_cbc.py --preset gpu      # the H100 recipe (AMP, data on GPU)
    python benchmarks/detection_cbc.py --preset cpu      # quick CPU figures when no GPU is lent

Both rows come from :func:`smearlab.experiments.detection.fit_and_evaluate` in one run. The
baseline follows torchvision's reference defaults (fp32, 800 px, batch 4, SGD lr 0.005, 10
epochs); the CPU preset shrinks both rows to a tiny model and 4 epochs so the figures finish on
2 cores in about half an hour.
No pretrained weights are used. Writes ``benchmarks/results/detection_cbc.json``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import save_result  # noqa: E402
from smearlab.augment import default_augment  # noqa: E402
from smearlab.detection import DetectorConfig, TrainConfig  # noqa: E402
from smearlab.experiments.profiles import GPU_RECIPE  # noqa: E402
from smearlab.data.splits import detection_splits  # noqa: E402
from smearlab.experiments.detection import fit_and_evaluate  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cbc"

#: (model config, training config) per preset and row.
PRESETS = {
    "gpu": {
        "smearlab": (dict(arch="fasterrcnn_v2", min_size=640, max_size=854),
                     dict(epochs=40, optimizer="sgd", **GPU_RECIPE)),
        "baseline": (dict(arch="fasterrcnn_v2", min_size=800, max_size=1333),
                     dict(epochs=10, batch_size=4, lr=0.005, optimizer="sgd", warmup_iters=1000,
                          lr_schedule="step", lr_steps=[8], amp=False, data_on_gpu=False, num_workers=4)),
    },
    "cpu": {
        "smearlab": (dict(arch="fasterrcnn_tiny", min_size=480, max_size=640),
                     dict(epochs=4, batch_size=4, lr=0.02, warmup_iters=30, lr_schedule="cosine")),
        "baseline": (dict(arch="fasterrcnn_tiny", min_size=800, max_size=1333),
                     dict(epochs=4, batch_size=4, lr=0.005, warmup_iters=30, lr_schedule="step",
                          lr_steps=[3], amp=False)),
    },
}
KEYS = ("mAP50", "mAP", "per_class", "train_s", "train_images_per_s", "infer_images_per_s", "device")


def run(name: str, preset: str, splits, device: str, seed: int, out: Path, augment: bool):
    model_kw, train_kw = PRESETS[preset][name]
    cfg = DetectorConfig(class_names=splits["train"].class_names, **model_kw)
    tcfg = TrainConfig(seed=seed, device=device, out_dir=out / name,
                       augment=default_augment(seed) if augment and name == "smearlab" else None, **train_kw)
    r = fit_and_evaluate(name, cfg, tcfg, splits["train"], splits["test"], splits["val"], progress=True)
    m = {k: r.metrics[k] for k in KEYS}
    m["per_class"] = {c: {"AP50": v["AP50"], "AP": v["AP"]} for c, v in m["per_class"].items()}
    m["arch"], m["epochs"], m["input_size"] = cfg.arch, r.metrics["epochs"], cfg.min_size
    m["count_accuracy"] = r.metrics["count_accuracy"]
    return m


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="gpu")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the CBC folder (Training/, Testing/)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-augment", action="store_true")
    ap.add_argument("--skip-baseline", action="store_true")
    args = ap.parse_args(argv)
    splits = detection_splits(str(args.data), seed=args.seed, val=0.1)
    with tempfile.TemporaryDirectory() as tmp:
        rows = {"smearlab": run("smearlab", args.preset, splits, args.device, args.seed, Path(tmp),
                                not args.no_augment)}
        if not args.skip_baseline:
            rows["baseline"] = run("baseline", args.preset, splits, args.device, args.seed, Path(tmp), False)
    result = dict(rows["smearlab"])
    result["baseline"] = rows.get("baseline")
    result["preset"] = args.preset
    result["images"] = {k: len(v) for k, v in splits.items()}
    result["cpu_threads"] = os.cpu_count()
    out = save_result("detection_cbc", result, argv)
    print(f"{'':22s} {'smearlab':>10s} {'baseline':>10s} {'ratio':>7s}")
    for k in ("mAP50", "mAP", "train_s", "train_images_per_s", "infer_images_per_s"):
        a = rows["smearlab"][k]
        b = rows["baseline"][k] if "baseline" in rows else None
        ratio = f"{a / b:7.2f}" if b else "      -"
        print(f"{k:22s} {a:10.3f} {b if b is not None else float('nan'):10.3f} {ratio}")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
