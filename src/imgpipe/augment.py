"""Image -> tensor with random augmentation: the training transform of finetune_full only.

Kept apart from imgpipe.transforms (eval, which extract caches by): an edit here re-runs
finetune_full and evaluate, never extract. Mean, std and input size come from the backbone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torchvision import transforms as T

from imgpipe.params_finetune import AugmentParams
from imgpipe.transforms import Transform


def train_transform(input_size: int, mean: Sequence[float], std: Sequence[float],
                    augment: AugmentParams) -> Transform:
    """Random resized crop (area fraction in [augment.crop_scale_min, 1]), then optional
    flips, rotation (degrees), colour jitter (strength) and grayscale (probability)."""
    steps: list[Callable] = [T.RandomResizedCrop(
        input_size, scale=(augment.crop_scale_min, 1.0),
        interpolation=T.InterpolationMode.BICUBIC, antialias=True)]
    if augment.hflip:
        steps.append(T.RandomHorizontalFlip())
    if augment.rotation > 0:
        steps.append(T.RandomRotation(augment.rotation,
                                      interpolation=T.InterpolationMode.BILINEAR))
    if augment.color_jitter > 0:
        steps.append(T.ColorJitter(brightness=augment.color_jitter,
                                   contrast=augment.color_jitter,
                                   saturation=augment.color_jitter))
    if augment.grayscale > 0:
        steps.append(T.RandomGrayscale(augment.grayscale))
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])
