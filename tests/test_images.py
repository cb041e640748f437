"""Any image mode a real folder may hold becomes upright 8-bit RGB."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imgpipe.images import content_id, square_resize, to_rgb


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "CMYK", "P", "LA", "I;16", "I", "1"])
def test_every_common_mode_becomes_rgb(mode: str) -> None:
    image = Image.new(mode, (8, 6))
    converted = to_rgb(image)
    assert converted.mode == "RGB" and converted.size == (8, 6)


def test_transparent_pixels_become_white() -> None:
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert to_rgb(image).getpixel((0, 0)) == (255, 255, 255)


def test_16_bit_grayscale_is_scaled_not_clipped() -> None:
    pixels = np.array([[0, 32768, 65535]], dtype=np.uint16)
    image = Image.fromarray(pixels)
    assert [to_rgb(image).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), "black")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": a 40x20 file shows as 20x40
    image.info["exif"] = exif.tobytes()
    image = Image.open(_saved_jpeg(image, exif))
    assert to_rgb(image).size == (20, 40)


def test_square_resize_of_an_extreme_strip_is_cheap_and_square() -> None:
    assert square_resize(Image.new("RGB", (3, 20000)), 224).size == (224, 224)


def test_square_resize_upscales_small_images() -> None:
    assert square_resize(Image.new("RGB", (8, 4)), 32).size == (32, 32)


def test_content_id_is_stable_and_short() -> None:
    assert content_id(b"abc") == content_id(b"abc") != content_id(b"abd")
    assert len(content_id(b"abc")) == 16


def _saved_jpeg(image: Image.Image, exif: Image.Exif):
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    buffer.seek(0)
    return buffer


def test_train_augmentations_are_random_and_eval_is_not() -> None:
    import torch

    from imgpipe.augment import train_transform
    from imgpipe.params_finetune import AugmentParams
    from imgpipe.transforms import eval_transform

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    augment = train_transform(32, [0.5] * 3, [0.5] * 3, AugmentParams(
        crop_scale_min=0.5, hflip=True, rotation=30.0, color_jitter=0.5, grayscale=1.0))
    torch.manual_seed(0)
    first, second = augment(image), augment(image)
    assert first.shape == (3, 32, 32) and not torch.equal(first, second)
    assert torch.equal(first[0], first[1]) and torch.equal(first[1], first[2])  # grayscale
    evaluate = eval_transform(32, [0.5] * 3, [0.5] * 3)
    assert torch.equal(evaluate(image), evaluate(image))
