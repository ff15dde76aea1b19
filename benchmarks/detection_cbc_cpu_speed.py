"""CPU training speed of the detection recipe: memory layout and bfloat16, side by side on CBC.

Three ways to run the same CPU recipe (tiny Faster R-CNN, 480 px, batch 4, SGD 0.02 cosine):
the plain (NCHW) layout in float32, the channels-last layout in float32 (``TrainConfig``'s CPU
default, ``channels_last=None``), and channels-last with bfloat16 autocast (``cpu_bf16=True``,
fast only on CPUs with AMX / AVX-512 BF16). First the seconds per training step of each, measured
alone on one fixed batch; then each trained from scratch for the same minutes (``--budget``), so
a faster variant gets more epochs, and scored on the validation split (the choice) and on
Testing (reported). Writes ``benchmarks/results/detection_cbc_cpu_speed.json`` (``_seed<N>``
for another seed): ``step_s`` per variant, and one row per variant (``val_mAP``, ``mAP``,
``mAP50``, ``epochs``, ``train_images_per_s``, AP per class) with ratios to the first variant
(a variant whose training fails is a row with its ``error``).

Usage::

    python benchmarks/detection_cbc_cpu_speed.py --budget 10
    python benchmarks/detection_cbc_cpu_speed.py --steps-only
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import run_benchmark, save_result  # noqa: E402
from detection_cbc import DEFAULT_DATA, PRESETS, compare_candidates  # noqa: E402

from smearlab.data.splits import detection_splits  # noqa: E402

VARIANTS = {
    "plain_fp32": {"channels_last": False, "cpu_bf16": False},
    "channels_last_fp32": {"channels_last": True, "cpu_bf16": False},
    "channels_last_bf16": {"channels_last": True, "cpu_bf16": True},
}


def step_seconds(train_set, variant: dict, steps: int = 15, warm: int = 3) -> float:
    """Mean seconds of one training step (forward, backward, SGD) of the recipe's model on the first
    four training images, in ``variant``'s layout and precision."""
    import torch

    from smearlab.detection.models import DetectorConfig, build_detector
    from smearlab.detection.train import _float32_head_outputs
    from smearlab.data.torchdata import DetectionDataset, collate_detection

    model_kw, _, _ = PRESETS["cpu"]["smearlab"]
    torch.manual_seed(0)
    model = build_detector(DetectorConfig(class_names=train_set.class_names, **model_kw))
    model.train()
    if variant["channels_last"]:
        model.to(memory_format=torch.channels_last)
    if variant["cpu_bf16"]:  # as training does: the heads hand on float32
        _float32_head_outputs(model)
    images, targets = collate_detection([DetectionDataset(train_set)[i] for i in range(4)])
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant["cpu_bf16"]):
            loss = sum(model(list(images), targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(warm):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the CBC folder (Training/, Testing/)")
    ap.add_argument("--budget", type=float, default=10, help="minutes of training per variant")
    ap.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--steps-only", action="store_true", help="measure the step times, train nothing")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    splits = detection_splits(str(args.data), seed=args.seed, val=0.1)
    load_avg = os.getloadavg()
    step_s = {}
    for name in args.variants:
        step_s[name] = round(step_seconds(splits["train"], VARIANTS[name]), 4)
        print(f"{name}: {step_s[name]:.3f} s per step (batch 4)", flush=True)
    rows = []
    for n in [] if args.steps_only else args.variants:  # a variant that fails is a row with its error
        candidate = ({"variant": n}, {}, {"time_budget_s": args.budget * 60, **VARIANTS[n]})
        try:
            with tempfile.TemporaryDirectory() as tmp:
                rows += compare_candidates(splits, [candidate], device="cpu", seed=args.seed, out=Path(tmp))
        except FloatingPointError as e:
            print(f"{n}: {e}", flush=True)
            rows.append({"variant": n, "error": str(e)})
    scored = [r for r in rows if "error" not in r]
    for r in scored:
        r["ratio_to_first"] = {k: r[k] / scored[0][k] for k in ("val_mAP", "mAP", "mAP50", "train_images_per_s")}
    first = args.variants[0]
    result = {"step_s": step_s, "step_speedup": {n: round(step_s[first] / s, 3) for n, s in step_s.items()},
              "rows": rows, "budget_s": None if args.steps_only else args.budget * 60, "seed": args.seed,
              "images": {k: len(v) for k, v in splits.items()}, "cpu_threads": os.cpu_count(),
              "load_average_1_5_15": [round(v, 2) for v in load_avg],
              "load_average_end": [round(v, 2) for v in os.getloadavg()]}
    name = "detection_cbc_cpu_speed" + ("_steps" if args.steps_only else "")
    out = save_result(name + (f"_seed{args.seed}" if args.seed else ""), result, argv, script="detection_cbc_cpu_speed")
    print(f"-> {out}")


if __name__ == "__main__":
    run_benchmark(main)
