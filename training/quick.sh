#!/usr/bin/env bash
# A small model in a few minutes on a laptop CPU: ResNet-18 on PneumoniaMNIST (28x28 -> 64x64, 1 channel).
# Reproduce: training/quick.sh   (writes runs/quick; evaluate with: dicomnode evaluate --model runs/quick --data ... --split val)
source "$(dirname "$0")/_common.sh"
NPZ="${NPZ:-../shared/data/medmnist/pneumoniamnist_trainval.npz}"
"$DICOMNODE" train \
  --data "$NPZ" --arch resnet18 --out runs/quick --name quick \
  --epochs 3 --batch-size 64 --img-size 64 --in-chans 1 --resize squash \
  --seed 0 --init random --threshold-policy youden --no-augment \
  --lr 2e-3 --warmup-epochs 0.5 --weight-decay 0.05 --patience 3 \
  --recipe "training/quick.sh"
