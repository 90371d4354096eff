#!/usr/bin/env bash
# ResNet-18 from scratch (no ImageNet weights offline; pass INIT=path to use a local file). Not shipped.
# Reproduce: training/resnet18.sh   (SHIP=1 to copy runs/resnet18 into models/resnet18)
source "$(dirname "$0")/_common.sh"
"$DICOMNODE" train \
  --data "$DATA" --arch resnet18 --out runs/resnet18 --name resnet18 \
  --epochs 15 --batch-size 32 --img-size 224 --in-chans 3 --resize squash \
  --val-fraction 0.15 --seed 0 --init "${INIT:-random}" --threshold-policy youden --augment \
  --lr 1e-3 --warmup-epochs 1 --weight-decay 0.05 --patience 4 \
  --recipe "training/resnet18.sh"
if [ "${SHIP:-0}" = 1 ]; then ship resnet18; fi
