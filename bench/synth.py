"""Synthetic but realistic-ish image datasets: an ImageFolder of varied-size JPEGs and PNGs.

Image `index` always has the same pixels and bytes (seeded by (seed, index)), and its class
is `index % NUM_CLASSES`, so the first N indices make a balanced N-image dataset and a
smaller dataset is a subset of a larger one (hard-linked, no second copy on disk).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

_logger = logging.getLogger(__name__)
NUM_CLASSES = 10
MIN_SIDE, MAX_SIDE = 160, 400  # pixels: decode and resize cost like real photos, not thumbnails
SMALL_SIDES = (32, 64)  # pixels, `bench/run.py --small`: 100,000 images fit this machine
PNG_SHARE = 0.1  # the rest are JPEGs
_SHAPES = ("ellipse", "rectangle", "polygon", "lines", "arcs")
_DONE = ".complete"  # suffix of the marker file: the folder was written to the end


def class_name(label: int) -> str:
    return f"class_{label:02d}"


def image_path(root: Path, index: int, seed: int) -> Path:
    """Where image `index` lives under a dataset root (PNG or JPEG, drawn from the seed)."""
    is_png = np.random.default_rng((seed, index, 2)).random() < PNG_SHARE
    return root / class_name(index % NUM_CLASSES) / f"img_{index:06d}{'.png' if is_png else '.jpg'}"


def _marker(root: Path) -> Path:
    """Beside the dataset, not in it: prepare would list a stray file as skipped."""
    return root.with_name(root.name + _DONE)


def render(index: int, seed: int, sides: tuple[int, int] = (MIN_SIDE, MAX_SIDE)) -> Image.Image:
    """One image: a class-tinted gradient with noise, and class-typed shapes on it."""
    rng = np.random.default_rng((seed, index))
    label = index % NUM_CLASSES
    width, height = (int(v) for v in rng.integers(sides[0], sides[1] + 1, size=2))
    hue = np.array([np.sin(label), np.sin(label + 2.1), np.sin(label + 4.2)]) * 70 + 128
    start, end = hue + rng.normal(0, 30, 3), hue[::-1] + rng.normal(0, 30, 3)
    ramp = np.linspace(0.0, 1.0, width)[None, :, None]  # (1, W, 1)
    pixels = start * (1 - ramp) + end * ramp + rng.normal(0, 12, (height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    shape = _SHAPES[label % len(_SHAPES)]
    for _ in range(int(rng.integers(3, 9))):
        _draw_shape(draw, shape, rng, width, height, label)
    if label >= len(_SHAPES):  # half the classes are blurred: texture differs, not only shape
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.0))))
    return image


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, rng: np.random.Generator,
                width: int, height: int, label: int) -> None:
    x0, y0 = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
    x1 = int(rng.integers(x0 + 10, min(width, x0 + width // 2) + 11))
    y1 = int(rng.integers(y0 + 10, min(height, y0 + height // 2) + 11))
    colour = tuple(int(v) for v in rng.integers(0, 256, 3))
    if shape == "ellipse":
        draw.ellipse((x0, y0, x1, y1), fill=colour)
    elif shape == "rectangle":
        draw.rectangle((x0, y0, x1, y1), fill=colour, outline=(label * 25, 0, 0))
    elif shape == "polygon":
        xs, ys = rng.integers(x0, x1, 5), rng.integers(y0, y1, 5)
        points = [(int(x), int(y)) for x, y in zip(xs, ys)]
        draw.polygon(points, fill=colour)
    elif shape == "lines":
        draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(2, 9)))
    else:
        draw.arc((x0, y0, x1, y1), 0, int(rng.integers(90, 360)), fill=colour, width=4)


def write_image(root: Path, index: int, seed: int,
                sides: tuple[int, int] = (MIN_SIDE, MAX_SIDE)) -> Path:
    """Render image `index` into the ImageFolder tree at `root`; its path."""
    rng = np.random.default_rng((seed, index, 1))
    path = image_path(root, index, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = render(index, seed, sides)
    if path.suffix == ".png":
        image.save(path, format="PNG", compress_level=6)
    else:
        image.save(path, format="JPEG", quality=int(rng.integers(75, 96)))
    return path


def make_dataset(root: Path, indices: range, seed: int, link_from: Path | None = None,
                 sides: tuple[int, int] = (MIN_SIDE, MAX_SIDE)) -> Path:
    """An ImageFolder of the images `indices`; reused when already complete.

    Images present under `link_from` (a dataset of the same seed) are hard-linked from
    there instead of rendered again.
    """
    marker = _marker(root)
    stamp = f"seed={seed} indices={indices.start}:{indices.stop} sides={sides}\n"
    if marker.is_file() and marker.read_text() == stamp:
        return root
    if root.exists():
        shutil.rmtree(root)
    _logger.info("generating %d images in %s", len(indices), root)
    for index in indices:
        source = image_path(link_from, index, seed) if link_from is not None else None
        if source is not None and source.is_file():
            _link(source, image_path(root, index, seed))
        else:
            write_image(root, index, seed, sides)
    marker.write_text(stamp)
    return root


def _link(source: Path, target: Path) -> None:
    """A hard link to `source` (no second copy on disk), or a copy where links fail."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def add_images(source: Path, root: Path, new: range, seed: int,
               sides: tuple[int, int] = (MIN_SIDE, MAX_SIDE)) -> Path:
    """A copy of the dataset `source` (hard links) plus the images `new`."""
    marker = _marker(root)
    stamp = f"from={source} seed={seed} new={new.start}:{new.stop} sides={sides}\n"
    if marker.is_file() and marker.read_text() == stamp:
        return root
    if root.exists():
        shutil.rmtree(root)
    for path in sorted(source.rglob("*")):
        if path.is_file():
            _link(path, root / path.relative_to(source))
    for index in new:
        write_image(root, index, seed, sides)
    marker.write_text(stamp)
    return root
