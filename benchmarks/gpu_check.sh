#!/usr/bin/env bash
# The project's GPU figures (benchmarks/RESULTS.md; first measured 2026-12-04), in one run that
# fits in 10 minutes on one H100/H200-class GPU. First the CUDA paths the CPU cannot test
# (benchmarks/gpu_paths.py: batched augmentation on the GPU and its parity with the CPU, a short
# training with AMP and the images kept on the GPU, AMP prediction), about a minute, so that a
# broken path fails before the long run; then the CBC gpu preset (Faster R-CNN v2 from scratch,
# AMP, images on the GPU; goal mAP50 >= 0.975, mAP >= 0.65, training <= 5 minutes, >= 100
# training and >= 200 inference images/s) at a 5-minute training budget; then that model scored
# plain and with flips fused (benchmarks/detection_cbc_tta.py, the fusion settings chosen on the
# CPU model's validation split), about a minute.
# Run from the repository root on the device machine; the CBC data must lie in data_local/cbc (a
# git-ignored copy of ../shared/data/cbc). Writes benchmarks/results/gpu_paths.json,
# detection_cbc_gpu.json, detection_cbc_gpu_tta.json and gpu_profile.txt (a profile of a few training steps, last and allowed
# to fail), and copies them to $OUT when set (the device tool brings $OUT back).
set -euo pipefail
DATA=${DATA:-data_local/cbc}
BUDGET=${BUDGET:-5}
# CHECKPOINT_EVERY=5: last.pt every fifth epoch instead of every epoch (the profile's suspect for
# the gap between 133 images/s in the steps and 48.7 over the run; not yet measured)
CHECKPOINT_EVERY=${CHECKPOINT_EVERY:-1}
export OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
copy_out() { if [ -n "${OUT:-}" ]; then for f in gpu_paths.json detection_cbc_gpu.json detection_cbc_gpu_tta.json gpu_profile.txt; do cp "benchmarks/results/$f" "$OUT"/ 2>/dev/null || true; done; fi; }
trap copy_out EXIT
python3 benchmarks/gpu_paths.py --device cuda
python3 benchmarks/detection_cbc.py --preset gpu --data "$DATA" --device cuda --budgets "$BUDGET" --skip-baseline \
    --checkpoint-every "$CHECKPOINT_EVERY" --keep gpu_models
python3 benchmarks/detection_cbc_tta.py --model "gpu_models/smearlab-${BUDGET}min" --data "$DATA" --device cuda \
    --ious 0.6 --skips 0.05 --name detection_cbc_gpu_tta
# last, and allowed to fail: where a training step of the gpu preset spends its time (about 40 s)
timeout "${PROFILE_S:-90}" python3 benchmarks/gpu_paths.py --device cuda --profile benchmarks/results/gpu_profile.txt || true
