#!/usr/bin/env bash
# DenseNet-121 from scratch; slow on CPU, meant for a GPU. Not shipped.
# Reproduce: training/densenet121.sh   (SHIP=1 to copy runs/densenet121 into models/densenet121)
source "$(dirname "$0")/_common.sh"
"$DICOMNODE" train \
  --data "$DATA" --arch densenet121 --out runs/densenet121 --name densenet121 \
  --epochs 15 --batch-size 32 --img-size 224 --in-chans 3 --resize squash \
  --val-fraction 0.15 --seed 0 --init "${INIT:-random}" --threshold-policy youden --augment \
  --lr 1e-3 --warmup-epochs 1 --weight-decay 0.05 --patience 4 \
  --recipe "training/densenet121.sh"
if [ "${SHIP:-0}" = 1 ]; then ship densenet121; fi
