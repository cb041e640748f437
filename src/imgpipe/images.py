"""Decoding any image a user may have into an RGB square of a fixed size."""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
_JPEG_QUALITY = 95  # prepared images: small on disk, no visible loss at 224 px
_PAPER = (255, 255, 255)  # transparent pixels are composited on white


def content_id(data: bytes) -> str:
    """Content address of an image file: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(data).hexdigest()[:16]


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright 8-bit RGB, whatever the mode (L, P, RGBA, CMYK, 16-bit) or EXIF orientation."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale the full range down to 8 bits instead of clipping.
        pixels = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
        image = Image.fromarray((pixels * (255.0 / peak)).round().astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, _PAPER)
        background.paste(image, mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")


def square_resize(image: Image.Image, size: int) -> Image.Image:
    """Centre square of the image, resized to `size` (bicubic, antialiased).

    The crop is taken in the original's coordinates before resizing, so an extreme
    aspect ratio (a 1 x 10000 strip) never allocates a huge intermediate image.
    """
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.resize((size, size), Image.BICUBIC, box=(left, top, left + side, top + side),
                        reducing_gap=3.0)


def encode_prepared(image: Image.Image) -> bytes:
    """A prepared image's bytes (JPEG, 4:4:4, fixed quality: deterministic)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=_JPEG_QUALITY, subsampling=0)
    return buffer.getvalue()
