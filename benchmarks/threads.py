"""One training step of the tiny detector, alone and beside one busy process, with torch's
thread defaults (what notebook kernels got before) and with the settings every process smearlab
starts now has (``OMP_WAIT_POLICY=PASSIVE``; also one thread, for comparison).

Each setting runs in a fresh process (the wait policy is read when PyTorch loads); the busy
process is a single-threaded Python loop. Step time: the median of 10 steps of batch 4 on CBC
Training images at 480 px (synthetic smears of the same size when the CBC folder is absent;
``images`` in the result says which), after 3 warm-up steps. Writes ``results/threads.json``.

    python benchmarks/threads.py --data-root ../shared/data
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: name -> environment changes of the measured process (None removes the variable)
SETTINGS = {
    "torch defaults (before)": {"OMP_WAIT_POLICY": None, "OMP_NUM_THREADS": None},
    "OMP_WAIT_POLICY=PASSIVE (after)": {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": None},
    "one thread": {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"},
}


def _worker(data_root: str, steps: int, warmup: int) -> None:
    import torch

    from smearlab.data import load
    from smearlab.data.torchdata import collate_detection, image_to_tensor
    from smearlab.detection import DetectorConfig, build_detector
    root = _cbc_training(data_root)
    if root.is_dir():
        ds = load(root)[:16]
    else:  # no shared data: synthetic smears of the same size (main says so and records it)
        from smearlab.data.synthetic import make_dataset
        ds = make_dataset(16, seed=0, width=640, height=480)
    torch.manual_seed(0)
    cfg = DetectorConfig(arch="fasterrcnn_tiny", class_names=ds.class_names, min_size=480, max_size=640)
    model = build_detector(cfg).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
    items = [(image_to_tensor(s.image), {"boxes": torch.as_tensor(s.boxes), "labels": torch.as_tensor(s.labels + 1)})
             for s in ds]
    times = []
    for i in range(warmup + steps):
        batch = [items[(4 * i + k) % len(items)] for k in range(4)]
        images, targets = collate_detection(batch)
        t0 = time.perf_counter()
        loss = sum(model(list(images), list(targets)).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    print(json.dumps({"step_s": statistics.median(times), "threads": torch.get_num_threads()}))


def _cbc_training(data_root: str) -> Path:
    return Path(data_root) / "cbc" / "Training"


def _measure(name: str, data_root: str, steps: int, warmup: int) -> dict:
    env = dict(os.environ)
    for k, v in SETTINGS[name].items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    out = subprocess.run([sys.executable, __file__, "--worker", "--data-root", data_root, "--steps", str(steps),
                          "--warmup", str(warmup)], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(args.data_root, args.steps, args.warmup)
        return 0
    sys.path.insert(0, str(HERE))
    from _common import save_result
    real = _cbc_training(args.data_root).is_dir()
    images = "CBC Training, 16 images" if real else "synthetic 640x480, 16 images"
    if not real:
        print(f"no CBC Training folder under {args.data_root}: measuring on synthetic smears of the same size "
              "(recorded as 'images')", file=sys.stderr)
    load_avg = os.getloadavg()
    rows: dict[str, dict] = {"alone": {}, "contended": {}}
    for name in SETTINGS:
        rows["alone"][name] = _measure(name, args.data_root, args.steps, args.warmup)
        print(f"alone      {name:34s} {rows['alone'][name]['step_s']:.3f} s/step", flush=True)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1)
        for name in SETTINGS:
            rows["contended"][name] = _measure(name, args.data_root, args.steps, args.warmup)
            print(f"contended  {name:34s} {rows['contended'][name]['step_s']:.3f} s/step", flush=True)
    finally:
        busy.kill()
        busy.wait()
    before, after = "torch defaults (before)", "OMP_WAIT_POLICY=PASSIVE (after)"
    result = {"step_s": {case: {k: round(v["step_s"], 4) for k, v in r.items()} for case, r in rows.items()},
              "threads": rows["alone"][before]["threads"], "cpu_count": os.cpu_count(),
              "contended_before_s": round(rows["contended"][before]["step_s"], 4),
              "contended_after_s": round(rows["contended"][after]["step_s"], 4),
              "speedup_contended": round(rows["contended"][before]["step_s"] / rows["contended"][after]["step_s"], 3),
              "load_average_1_5_15": [round(v, 2) for v in load_avg], "images": images}
    out = save_result("threads", result)
    print(f"contended step: {result['contended_before_s']:.3f} s before, {result['contended_after_s']:.3f} s after "
          f"({result['speedup_contended']:.2f}x); -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
