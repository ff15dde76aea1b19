#!/usr/bin/env bash
# The GPU figures this project has never measured, in one run that fits in 10 minutes on one
# H100/H200-class GPU: the CBC gpu preset (Faster R-CNN v2, AMP, images kept on the GPU; goal
# mAP50 >= 0.975, mAP >= 0.65, training <= 5 minutes, >= 100 training and >= 200 inference
# images/s) at a 5-minute training budget, and the CUDA paths the CPU cannot test (AMP, data on
# the GPU, batched augmentation against the per-sample path). Run from the repository root on the
# device machine; the CBC data must lie in data_local/cbc (a git-ignored copy of ../shared/data/cbc).
# Writes benchmarks/results/detection_cbc_gpu.json and gpu_paths.json (and copies both to $OUT when
# set, so that the device tool brings them back).
set -euo pipefail
DATA=${DATA:-data_local/cbc}
export OMP_WAIT_POLICY=PASSIVE
nvidia-smi --query-gpu=name,memory.total --format=csv
python - <<'PY'
import json, time, torch
from smearlab.augment import default_augment
from smearlab.data.synthetic import make_dataset
from smearlab.data.torchdata import image_to_tensor
assert torch.cuda.is_available(), "no CUDA device"
ds = make_dataset(32, seed=0, width=640, height=480)
aug = default_augment(0)
imgs = torch.stack([image_to_tensor(s.image) for s in ds]).cuda()
targets = [{"boxes": torch.as_tensor(s.boxes).cuda(), "labels": torch.as_tensor(s.labels + 1).cuda()} for s in ds]
torch.cuda.synchronize(); t0 = time.perf_counter()
out, tg = aug.batch(list(imgs), targets)
torch.cuda.synchronize()
res = {"batched_augment_images_per_s": len(ds) / (time.perf_counter() - t0),
       "boxes_kept_in_image": all(bool(((t["boxes"][:, 2:] <= 640.01) & (t["boxes"][:, :2] >= -0.01)).all()) for t in tg)}
json.dump(res, open("benchmarks/results/gpu_paths.json", "w"), indent=2)
print(res)
PY
python benchmarks/detection_cbc.py --preset gpu --data "$DATA" --device cuda --budgets 5 --baseline-budget 3
cp benchmarks/results/detection_cbc.json benchmarks/results/detection_cbc_gpu.json
if [ -n "${OUT:-}" ]; then cp benchmarks/results/detection_cbc_gpu.json benchmarks/results/gpu_paths.json "$OUT"/; fi
