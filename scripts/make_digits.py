"""Render scikit-learn's handwritten digits (1,797 real 8x8 scans) into an image folder.

The committed sample dataset (`make sample`) and the digits comparison in the README are
made by this script, so both are reproducible from a fresh clone with no download:

    python scripts/make_digits.py --out data/sample --classes 0 1 2 3 4 5 --per-class 40
    python scripts/make_digits.py --out data/digits            # all ten classes, every image
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

_logger = logging.getLogger(__name__)
CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def render_digits(out_dir: Path, classes: list[int], per_class: int | None, size: int) -> int:
    """Write the first `per_class` scans of each class as `out_dir/<name>/<index>.png`.

    Args:
        out_dir: ImageFolder root to create; must not exist yet.
        classes: digits to include (0-9).
        per_class: images per class, or None for all of them (about 180 each).
        size: side of the written square images in pixels (bicubic upscaling of 8x8).

    Returns:
        The number of images written.
    """
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists: remove it first, the script never merges")
    digits = load_digits()
    written = 0
    for digit in classes:
        indices = np.flatnonzero(digits.target == digit)[:per_class]
        class_dir = out_dir / CLASS_NAMES[digit]
        class_dir.mkdir(parents=True)
        for index in indices:
            # Scans hold ink in 0..16; draw dark ink on white paper.
            pixels = (255 - digits.images[index] * 255 / 16).round().astype(np.uint8)
            image = Image.fromarray(pixels).resize((size, size), Image.BICUBIC)
            image.save(class_dir / f"{index:04d}.png", optimize=True)
            written += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to create")
    parser.add_argument("--classes", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--per-class", type=int, default=None, help="default: all")
    parser.add_argument("--size", type=int, default=64, help="pixels (default 64)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    count = render_digits(args.out, args.classes, args.per_class, args.size)
    _logger.info("wrote %d images to %s", count, args.out)


if __name__ == "__main__":
    main()
