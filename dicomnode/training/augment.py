"""Training-time augmentation of gray images (before :func:`gray_to_input`).

Acts on the display-oriented gray image (H, W) float32 in [0, 1], so the augmented
image then goes through exactly the serving resize/normalisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of each augmentation.

    Attributes:
        clahe_p: probability of CLAHE (clip limit 2, 8x8 tiles).
        flip_p: probability of a horizontal flip.
        rotate_deg: maximum absolute rotation in degrees.
        crop_scale: (min, max) area fraction of the random resized crop.
        crop_ratio: (min, max) aspect ratio of the crop.
        brightness: maximum absolute brightness shift (gray units).
        contrast: maximum relative contrast change.
        gamma: maximum relative gamma change.
    """

    clahe_p: float = 0.25
    flip_p: float = 0.5
    rotate_deg: float = 10.0
    crop_scale: tuple[float, float] = (0.75, 1.0)
    crop_ratio: tuple[float, float] = (0.9, 1.1)
    brightness: float = 0.08
    contrast: float = 0.15
    gamma: float = 0.15


def augment_gray(
    gray: np.ndarray,
    rng: np.random.Generator,
    config: AugmentConfig = AugmentConfig(),
    *,
    max_side: int | None = None,
) -> np.ndarray:
    """Randomly augment one gray image.

    Args:
        gray: (H, W) float32 in [0, 1].
        rng: the random generator (seeded by the training loop).
        config: augmentation ranges.
        max_side: shrink (aspect kept, INTER_AREA) to at most this side first, to keep
            big DICOM images cheap; None keeps the size.

    Returns:
        (H', W') float32 in [0, 1] (H' = H unless shrunk by ``max_side``).
    """
    import cv2

    img: np.ndarray = np.ascontiguousarray(gray, dtype=np.float32)
    h, w = img.shape
    if max_side is not None and max(h, w) > max_side:
        scale = max_side / max(h, w)
        img = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        h, w = img.shape
    if rng.random() < config.clahe_p:
        clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
        img = clahe.apply(np.round(img * 255.0).astype(np.uint8)).astype(np.float32) / np.float32(255.0)

    # random resized crop + rotation + flip as one affine warp (output keeps H x W)
    area = rng.uniform(*config.crop_scale)
    ratio = math.exp(rng.uniform(math.log(config.crop_ratio[0]), math.log(config.crop_ratio[1])))
    crop_w = min(1.0, math.sqrt(area * ratio))
    crop_h = min(1.0, math.sqrt(area / ratio))
    cx = w * (0.5 + rng.uniform(-(1 - crop_w) / 2, (1 - crop_w) / 2))
    cy = h * (0.5 + rng.uniform(-(1 - crop_h) / 2, (1 - crop_h) / 2))
    angle = math.radians(rng.uniform(-config.rotate_deg, config.rotate_deg))
    flip = rng.random() < config.flip_p
    sx, sy = crop_w, crop_h  # output pixel -> source pixel scale
    cos, sin = math.cos(angle), math.sin(angle)
    # source = R * S * F * (out - out_center) + crop_center
    fx = -1.0 if flip else 1.0
    a = np.array([[cos * sx * fx, -sin * sy], [sin * sx * fx, cos * sy]], dtype=np.float64)
    out_c = np.array([w / 2.0, h / 2.0])
    t = np.array([cx, cy]) - a @ out_c
    matrix = np.hstack([a, t[:, None]])
    img = cv2.warpAffine(
        img,
        matrix,
        (w, h),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REFLECT_101,
    )

    # brightness / contrast / gamma
    gamma = math.exp(rng.uniform(-config.gamma, config.gamma))
    np.clip(img, 0.0, 1.0, out=img)
    if gamma != 1.0:
        np.power(img, np.float32(gamma), out=img)
    contrast = 1.0 + rng.uniform(-config.contrast, config.contrast)
    brightness = rng.uniform(-config.brightness, config.brightness)
    img = (img - np.float32(0.5)) * np.float32(contrast) + np.float32(0.5 + brightness)
    return np.clip(img, 0.0, 1.0, out=img)
