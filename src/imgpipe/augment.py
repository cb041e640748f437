"""Image -> tensor with random augmentation: the training transform of finetune_full only.

Kept apart from imgpipe.transforms (eval, which extract caches by): an edit here re-runs
finetune_full and evaluate, never extract. Mean, std and input size come from the backbone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torchvision import transforms as T

from imgpipe.transforms import Transform


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
