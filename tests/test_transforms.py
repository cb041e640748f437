"""imgpipe.transforms: the eval transform's arithmetic is torchvision's, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from imgpipe.transforms import ToNormalized

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.mark.parametrize("size", [(1, 1), (7, 300), (224, 224)])
def test_to_normalized_equals_to_tensor_then_normalize_bit_for_bit(
        size: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    expected = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])(image)
    actual = ToNormalized(MEAN, STD)(image)
    assert actual.is_contiguous() and actual.dtype == torch.float32
    assert actual.shape == expected.shape == (3, *size)
    assert actual.numpy().tobytes() == expected.numpy().tobytes()


def test_to_normalized_refuses_what_is_not_rgb() -> None:
    with pytest.raises(ValueError, match="expected an RGB image, got mode L"):
        ToNormalized(MEAN, STD)(Image.new("L", (4, 4)))
