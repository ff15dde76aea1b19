#!/usr/bin/env bash
# Issue #15's GPU row: the learned instance segmenter on the DSB2018 subset's fixed split, trained
# from scratch on one GPU (float16 autocast, InstanceTrainConfig(amp=True)) for BUDGET minutes,
# its settings tuned on the 4 validation images, scored on the 10 test images beside the classical
# watershed (benchmarks/segmentation_dsb_augment.py, the CPU recipe's "boundary" variant). Fits in
# about 6 minutes of device time: the classical choice on the CPU (about a minute), BUDGET minutes
# of training, the eight-orientation prediction of 14 images.
# Run from the repository root on the device machine with the subset in data_local/dsb2018_subset
# (a git-ignored copy of ../shared/data/dsb2018_subset, 11 MB). Writes
# benchmarks/results/segmentation_dsb_gpu.json and copies it to $OUT when set.
set -euo pipefail
DATA=${DATA:-data_local/dsb2018_subset}
BUDGET=${BUDGET:-3}
export OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
copy_out() { if [ -n "${OUT:-}" ]; then cp benchmarks/results/segmentation_dsb_gpu.json "$OUT"/ 2>/dev/null || true; fi; }
trap copy_out EXIT
python3 benchmarks/segmentation_dsb_augment.py --data "$DATA" --device cuda --budget "$BUDGET" --jitters none \
    --name segmentation_dsb_gpu
