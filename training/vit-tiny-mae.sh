#!/usr/bin/env bash
# ViT-Tiny/16 at 112 px: masked-autoencoder pretraining on the training images (the validation split
# is left out, same seed and fraction as train), then supervised fine-tuning from that encoder.
# Self-supervised alternative to the from-scratch training/vit-tiny.sh; no labels are used by the MAE stage.
# Measured (2-core CPU): val AUC 0.9707 vs 0.9841 from scratch, so models/vit-tiny ships the from-scratch run.
# Reproduce: training/vit-tiny-mae.sh   (SHIP=1 to copy runs/vit-tiny-mae into models/vit-tiny)
source "$(dirname "$0")/_common.sh"
if "$DICOMNODE" pretrain --help >/dev/null 2>&1; then
  PRETRAIN=("$DICOMNODE" pretrain)
else  # until the main CLI registers `pretrain`
  PRETRAIN=("$REPO/.venv/bin/python" -W ignore::RuntimeWarning -m dicomnode.cli.training pretrain)
fi
"${PRETRAIN[@]}" \
  --data "$DATA" --arch vit_tiny_patch16_224 --out runs/vit-tiny-mae-pretrain \
  --img-size 112 --in-chans 3 --epochs 15 --batch-size 64 --mask-ratio 0.75 --lr 1.5e-3 \
  --seed 0 --val-fraction 0.15
"$DICOMNODE" train \
  --data "$DATA" --arch vit_tiny_patch16_224 --out runs/vit-tiny-mae --name vit-tiny \
  --epochs 12 --batch-size 64 --img-size 112 --in-chans 3 --resize squash \
  --val-fraction 0.15 --seed 0 --init runs/vit-tiny-mae-pretrain/encoder.safetensors \
  --threshold-policy youden --augment \
  --lr 5e-4 --warmup-epochs 1 --weight-decay 0.05 --patience 12 \
  --recipe "training/vit-tiny-mae.sh" \
  --description "ViT-Tiny/16 at 112 px, MAE-pretrained on the training images then fine-tuned for pneumonia vs normal on pediatric chest X-rays (Kermany 2018). Research use only, not for diagnosis."
if [ "${SHIP:-0}" = 1 ]; then
  mkdir -p runs/vit-tiny && cp -r runs/vit-tiny-mae/. runs/vit-tiny/ && ship vit-tiny
fi
