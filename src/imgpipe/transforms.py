"""Image -> tensor at eval: the deterministic transform of extract, evaluate and predict.

Mean, std and input size always come from the backbone, never from params. The
augmented transform of fine-tuning lives in imgpipe.augment, so that editing it
re-runs finetune_full alone and leaves extract's per-image cache valid.
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
