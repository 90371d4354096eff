#!/usr/bin/env bash
# ResNet-50 from scratch; slow on CPU (hours), meant for a GPU. Not shipped.
# Reproduce: training/resnet50.sh   (SHIP=1 to copy runs/resnet50 into models/resnet50)
source "$(dirname "$0")/_common.sh"
"$DICOMNODE" train \
  --data "$DATA" --arch resnet50 --out runs/resnet50 --name resnet50 \
  --epochs 15 --batch-size 32 --img-size 224 --in-chans 3 --resize squash \
  --val-fraction 0.15 --seed 0 --init "${INIT:-random}" --threshold-policy youden --augment \
  --lr 1e-3 --warmup-epochs 1 --weight-decay 0.05 --patience 4 \
  --recipe "training/resnet50.sh"
if [ "${SHIP:-0}" = 1 ]; then ship resnet50; fi
