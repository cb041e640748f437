"""Image -> tensor transforms: deterministic at eval, augmented for fine-tuning.

Mean, std and input size always come from the backbone, never from params.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torchvision import transforms as T

Transform = Callable[[Image.Image], torch.Tensor]


def eval_transform(input_size: int, mean: Sequence[float], std: Sequence[float]) -> Transform:
    """Resize (bicubic) and centre-crop to the backbone's input size, then normalise."""
    return T.Compose([
        T.Resize(input_size, interpolation=T.InterpolationMode.BICUBIC, antialias=True),
        T.CenterCrop(input_size),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def train_transform(input_size: int, mean: Sequence[float], std: Sequence[float], *,
                    crop_scale_min: float, hflip: bool, rotation: float = 0.0,
                    color_jitter: float = 0.0, grayscale: float = 0.0) -> Transform:
    """Random resized crop (area fraction in [crop_scale_min, 1]), then optional flips,
    rotation (degrees), colour jitter (strength) and grayscale (probability)."""
    steps: list[Callable] = [T.RandomResizedCrop(
        input_size, scale=(crop_scale_min, 1.0),
        interpolation=T.InterpolationMode.BICUBIC, antialias=True)]
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    if rotation > 0:
        steps.append(T.RandomRotation(rotation, interpolation=T.InterpolationMode.BILINEAR))
    if color_jitter > 0:
        steps.append(T.ColorJitter(brightness=color_jitter, contrast=color_jitter,
                                   saturation=color_jitter))
    if grayscale > 0:
        steps.append(T.RandomGrayscale(grayscale))
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])
