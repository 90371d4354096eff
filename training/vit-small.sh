#!/usr/bin/env bash
# ViT-Small/16 from scratch; meant for a GPU. Not shipped.
# Reproduce: training/vit-small.sh   (SHIP=1 to copy runs/vit-small into models/vit-small)
source "$(dirname "$0")/_common.sh"
"$DICOMNODE" train \
  --data "$DATA" --arch vit_small_patch16_224 --out runs/vit-small --name vit-small \
  --epochs 30 --batch-size 32 --img-size 224 --in-chans 3 --resize squash \
  --val-fraction 0.15 --seed 0 --init "${INIT:-random}" --threshold-policy youden --augment \
  --lr 5e-4 --warmup-epochs 1 --weight-decay 0.05 --patience 4 \
  --recipe "training/vit-small.sh"
if [ "${SHIP:-0}" = 1 ]; then ship vit-small; fi
