"""Copy a grayscale image folder with another way of turning one channel into three.

The pipeline replicates a single-channel image into R, G and B (`imgpipe.images`), which
for lite0 (the same mean and std on every channel) is exactly what summing the first
convolution's weights over its input channels does (timm's `in_chans=1`). This script
writes the alternatives the README's grayscale comparison measures against it, so each
runs through the unchanged pipeline (not a pipeline stage):

    python scripts/gray_variants.py --source data/scratches --out /tmp/scratches-eq \
        --variant equalize

Variants: `autocontrast` (per-image stretch, 1% of pixels clipped at each end),
`equalize` (per-image histogram equalisation), `stack` (R, G, B = the image,
its autocontrast and its equalisation).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageOps

_logger = logging.getLogger(__name__)


def _autocontrast(gray: Image.Image) -> Image.Image:
    return ImageOps.autocontrast(gray, cutoff=1)


VARIANTS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "autocontrast": _autocontrast,
    "equalize": ImageOps.equalize,
    "stack": lambda gray: Image.merge("RGB", (gray, _autocontrast(gray),
                                              ImageOps.equalize(gray))),
}


def write_variant(source: Path, out_dir: Path, variant: str) -> int:
    """Write every image under `source` (one sub-folder per class) as PNG; returns count."""
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists: remove it first, the script never merges")
    convert, count = VARIANTS[variant], 0
    for path in sorted(source.rglob("*.png")):
        target = out_dir / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            convert(image.convert("L")).save(target)
        count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="grayscale image folder")
    parser.add_argument("--out", type=Path, required=True, help="folder to create")
    parser.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    count = write_variant(args.source, args.out, args.variant)
    _logger.info("wrote %d %s images to %s", count, args.variant, args.out)


if __name__ == "__main__":
    main()
