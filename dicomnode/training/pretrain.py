"""Self-supervised masked-autoencoder (MAE) pretraining of a timm ViT on unlabelled images.

No ViT ImageNet weights are reachable offline, so a ViT can be pretrained on the training
images themselves (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners"):
75 % of the patches are hidden, the encoder sees the rest, a small decoder reconstructs the
hidden patches' (per-patch normalised) pixels. The encoder's weights are written with timm
key names to ``encoder.safetensors``; ``dicomnode train --init OUT/encoder.safetensors``
then fine-tunes them (same architecture and ``--img-size``).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dicomnode.errors import ModelError
from dicomnode.training.augment import AugmentConfig
from dicomnode.training.datasets import DataFormat, load_dataset, split_indices

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

ENCODER_FILENAME = "encoder.safetensors"


@dataclass
class PretrainConfig:
    """Settings of one MAE pretraining run.

    Attributes:
        data: images (any training layout; labels are ignored).
        arch: a timm ViT name, e.g. ``vit_tiny_patch16_224``.
        out: output folder (``encoder.safetensors``, ``pretrain_history.json``).
        img_size: input side in pixels (must be a multiple of the patch size).
        in_chans: 1 or 3.
        epochs: passes over the images.
        batch_size: images per step.
        mask_ratio: fraction of patches hidden from the encoder.
        lr: peak AdamW learning rate (cosine with one warmup epoch).
        weight_decay: AdamW weight decay.
        decoder_dim: decoder width.
        decoder_depth: decoder transformer blocks.
        seed: RNG seed; also the seed of the validation split left out.
        val_fraction: the stratified validation part that ``train`` will carve with the same
            seed is left out of pretraining (0 uses every image), so validation figures of
            the fine-tuned model stay on images the encoder never saw.
        max_minutes: stop between epochs when the next one would overrun this budget.
        threads: torch CPU threads (0: default).
    """

    data: Path
    arch: str
    out: Path
    fmt: DataFormat = DataFormat.AUTO
    img_size: int = 112
    in_chans: int = 3
    epochs: int = 20
    batch_size: int = 64
    mask_ratio: float = 0.75
    lr: float = 1.5e-3
    weight_decay: float = 0.05
    decoder_dim: int = 128
    decoder_depth: int = 2
    seed: int = 0
    val_fraction: float = 0.15
    max_minutes: float | None = None
    threads: int = 0


def _build(config: PretrainConfig) -> tuple[Any, Any]:
    import timm
    import torch
    from timm.models.vision_transformer import Block

    encoder: Any
    try:
        encoder = timm.create_model(
            config.arch, pretrained=False, num_classes=0, in_chans=config.in_chans, img_size=config.img_size
        )
    except Exception as exc:  # timm raises several types for unknown/ill-fitting models
        raise ModelError(f"cannot build {config.arch} for MAE pretraining: {exc}") from exc
    if (
        not hasattr(encoder, "patch_embed")
        or getattr(encoder, "pos_embed", None) is None
        or getattr(encoder, "no_embed_class", True)
        or getattr(encoder, "reg_token", None) is not None
        or getattr(encoder, "cls_token", None) is None
    ):
        raise ModelError(
            f"{config.arch} is not a ViT with a class token and absolute position embeddings "
            "(e.g. vit_tiny_patch16_224)"
        )
    patch = int(encoder.patch_embed.patch_size[0])
    n_patches = int(encoder.patch_embed.num_patches)
    dim = int(encoder.embed_dim)

    class Decoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Linear(dim, config.decoder_dim)
            self.mask_token = torch.nn.Parameter(torch.zeros(1, 1, config.decoder_dim))
            self.pos = torch.nn.Parameter(torch.zeros(1, n_patches + 1, config.decoder_dim))
            self.blocks = torch.nn.Sequential(
                *[Block(config.decoder_dim, num_heads=4, mlp_ratio=4.0) for _ in range(config.decoder_depth)]
            )
            self.norm = torch.nn.LayerNorm(config.decoder_dim)
            self.head = torch.nn.Linear(config.decoder_dim, patch * patch * config.in_chans)
            torch.nn.init.trunc_normal_(self.pos, std=0.02)
            torch.nn.init.normal_(self.mask_token, std=0.02)

        def forward(self, latent: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
            x = self.embed(latent)
            b, kept, c = x.shape
            masks = self.mask_token.expand(b, n_patches + 1 - kept, c)
            tokens = torch.cat([x[:, 1:], masks], dim=1)
            tokens = torch.gather(tokens, 1, restore[:, :, None].expand(-1, -1, c))
            x = torch.cat([x[:, :1], tokens], dim=1) + self.pos
            x = self.norm(self.blocks(x))
            return self.head(x[:, 1:])  # type: ignore[no-any-return]

    return encoder, Decoder()


def _patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, patch*patch*C)."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def mae_loss(
    encoder: Any, decoder: Any, images: torch.Tensor, mask_ratio: float, generator: torch.Generator
) -> torch.Tensor:
    """MAE reconstruction loss (MSE on hidden patches, per-patch normalised targets)."""
    import torch

    patch = int(encoder.patch_embed.patch_size[0])
    tokens = encoder.patch_embed(images)
    if tokens.ndim == 4:  # NHWC output (dynamic_img_size models)
        tokens = tokens.flatten(1, 2)
    tokens = tokens + encoder.pos_embed[:, 1:]
    b, n, d = tokens.shape
    keep = max(1, round(n * (1 - mask_ratio)))
    noise = torch.rand(b, n, generator=generator)
    shuffle = torch.argsort(noise, dim=1)
    restore = torch.argsort(shuffle, dim=1)
    kept = torch.gather(tokens, 1, shuffle[:, :keep, None].expand(-1, -1, d))
    cls = (encoder.cls_token + encoder.pos_embed[:, :1]).expand(b, -1, -1)
    x = encoder.norm(encoder.blocks(torch.cat([cls, kept], dim=1)))
    pred = decoder(x, restore)
    target = _patchify(images, patch)
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    target = (target - mean) / torch.sqrt(var + 1e-6)
    mask = torch.ones(b, n)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, restore)
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    loss: torch.Tensor = (per_patch * mask).sum() / mask.sum()
    return loss


def pretrain(config: PretrainConfig) -> Path:
    """Run MAE pretraining and write ``encoder.safetensors``; returns its path.

    Raises:
        DataError: unreadable data.
        ModelError: the architecture is not a ViT, or the loss diverged.
    """
    import torch
    from safetensors.torch import save_file

    from dicomnode.inference.manifest import Preprocessing
    from dicomnode.training.loop import IMAGENET_MEAN, IMAGENET_STD, _bar, batch_inputs

    started = time.monotonic()
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    config.out.mkdir(parents=True, exist_ok=True)
    data, own_val = load_dataset(config.data, config.fmt)
    if own_val is None and config.val_fraction > 0:
        train_idx, _ = split_indices(data.targets, config.val_fraction, config.seed, data.groups)
        data = data.subset(train_idx)
    logger.info("MAE pretraining %s on %d images", config.arch, len(data))
    data.cache_images = True
    mean = IMAGENET_MEAN if config.in_chans == 3 else (0.5,)
    std = IMAGENET_STD if config.in_chans == 3 else (0.25,)
    pre = Preprocessing(
        input_size=config.img_size,
        in_chans=config.in_chans,  # type: ignore[arg-type]
        mean=mean,
        std=std,
    )
    encoder, decoder = _build(config)
    params = list(encoder.parameters()) + list(decoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.95))
    steps = max(1, len(data) // config.batch_size)
    total, warmup = steps * config.epochs, steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    generator = torch.Generator().manual_seed(config.seed)
    aug = AugmentConfig(clahe_p=0.0, rotate_deg=5.0, crop_scale=(0.6, 1.0))
    history: list[dict[str, float]] = []
    epoch_times: list[float] = []
    for epoch in range(1, config.epochs + 1):
        t0 = time.monotonic()
        rng = np.random.default_rng([config.seed, epoch])
        order = rng.permutation(len(data))
        encoder.train()
        decoder.train()
        losses = []
        bar = _bar(total=steps, desc=f"mae {epoch}/{config.epochs}", unit="batch")
        for step in range(steps):
            idx = order[step * config.batch_size : (step + 1) * config.batch_size]
            x = torch.from_numpy(batch_inputs(data, idx, pre, rng, aug))
            loss = mae_loss(encoder, decoder, x, config.mask_ratio, generator)
            if not torch.isfinite(loss):
                raise ModelError(f"MAE pretraining diverged at epoch {epoch}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.item()))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
            bar.update(1)
        bar.close()
        seconds = time.monotonic() - t0
        epoch_times.append(seconds)
        history.append({"epoch": float(epoch), "loss": float(np.mean(losses)), "seconds": seconds})
        print(f"mae epoch {epoch}/{config.epochs}  loss {np.mean(losses):.4f}  {seconds:.0f}s", file=sys.stderr, flush=True)
        state = {k: v.detach().contiguous() for k, v in encoder.state_dict().items()}
        save_file(state, str(config.out / ENCODER_FILENAME))
        (config.out / "pretrain_history.json").write_text(json.dumps(history, indent=2) + "\n", encoding="utf-8")
        if config.max_minutes is not None:
            elapsed = (time.monotonic() - started) / 60.0
            if elapsed + max(epoch_times) / 60.0 > config.max_minutes:
                logger.info("MAE pretraining stops after epoch %d: time budget", epoch)
                break
    payload = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    (config.out / "pretrain_config.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return config.out / ENCODER_FILENAME
