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
                    crop_scale_min: float, hflip: bool) -> Transform:
    """Random resized crop (area fraction in [crop_scale_min, 1]) and optional flips."""
    steps: list[Callable] = [T.RandomResizedCrop(
        input_size, scale=(crop_scale_min, 1.0),
        interpolation=T.InterpolationMode.BICUBIC, antialias=True)]
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])
