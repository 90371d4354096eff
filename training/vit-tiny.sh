#!/usr/bin/env bash
# models/vit-tiny: ViT-Tiny/16 trained FROM SCRATCH (no ViT ImageNet weights are reachable offline) on the
# Kermany pediatric CXR training split at 112x112 (7x7 patches of 16 px), validated on the same stratified
# seeded 15 % split grouped by patient as models/default, and distilled from models/default: the teacher's
# calibrated probabilities on the training images are soft targets (weight 0.7); the teacher never saw the
# validation patients. Temperature-calibrated, Youden threshold, input gate fitted on the training part.
# About 20 min on 2 CPU cores. Train models/default first (TEACHER=path to use another teacher).
# Reproduce: training/vit-tiny.sh   (SHIP=1 to copy runs/vit-tiny into models/vit-tiny)
source "$(dirname "$0")/_common.sh"
"$DICOMNODE" train \
  --data "$DATA" --arch vit_tiny_patch16_224 --out runs/vit-tiny --name vit-tiny \
  --epochs 10 --batch-size 64 --img-size 112 --in-chans 3 --resize squash \
  --val-fraction 0.15 --seed 0 --init random --threshold-policy youden --augment \
  --lr 1e-3 --warmup-epochs 1 --weight-decay 0.05 --patience 10 --calibration temperature \
  --teacher "${TEACHER:-default}" --distill-weight 0.7 --no-gate \
  --population "Kermany 2018 pediatric chest radiographs: children aged 1-5 years, frontal (AP/PA) views" \
  --population-age 1-5 --population-views AP,PA \
  --recipe "training/vit-tiny.sh" \
  --description "ViT-Tiny/16 at 112 px trained from scratch (distilled from default) for pneumonia vs normal on pediatric chest X-rays (Kermany 2018). Research use only, not for diagnosis."
"$DICOMNODE" gate fit --model runs/vit-tiny --data "$DATA" --max-images 800 --components 8
if [ "${SHIP:-0}" = 1 ]; then ship vit-tiny; fi
