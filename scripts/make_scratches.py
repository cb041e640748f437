"""Build a harder offline dataset: graded surface defects on real photographs.

A stand-in for industrial inspection data (the kind of real collection this project is
judged on and nobody on the team has): grayscale, 300 px, four ordered and imbalanced
grades. The backgrounds are real photographs (scikit-learn's two sample photos, random
crops, rotations and exposures); the label is the severity of scratches drawn on them:

- `0_clean` (57%): no scratch;
- `1_minor` (11%): one short, faint scratch;
- `2_major` (4%): two or three longer scratches;
- `3_severe` (27%): many long, high-contrast scratches.

Every image also gets the same sensor model (blur, noise, low contrast), an input-level
shift away from ImageNet's photographs. Pooled ImageNet features see a textured photo and
barely notice a thin line on it, so the linear probe is weak here and fine-tuning has
something to gain. Deterministic for a seed:

    python scripts/make_scratches.py --out data/scratches            # 2,600 images
    python scripts/make_scratches.py --out data/faint --contrast 0.5  # the same, fainter

`--contrast` scales every grade's line contrast and changes nothing else (the same
backgrounds, scratch positions and noise for a seed): at 0.5 the linear probe's test
macro-F1 falls from 0.64 to 0.56 and it finds 7 of the 57 rare-grade test images
(README, "The faint variant").
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from sklearn.datasets import load_sample_images

_logger = logging.getLogger(__name__)
# Grade name, share of the images, (min, max) scratches, length range (share of the side),
# contrast range (grey levels the line differs from its background).
GRADES = (
    ("0_clean", 0.57, (0, 0), (0.0, 0.0), (0, 0)),
    ("1_minor", 0.11, (1, 1), (0.15, 0.3), (25, 45)),
    ("2_major", 0.04, (2, 3), (0.3, 0.5), (45, 70)),
    ("3_severe", 0.27, (5, 9), (0.4, 0.8), (60, 110)),
)


def _background(photos: list[np.ndarray], size: int, rng: np.random.Generator) -> Image.Image:
    """A random grayscale crop of a photo: random side, position, rotation and exposure."""
    photo = photos[rng.integers(len(photos))]
    height, width = photo.shape[:2]
    side = int(rng.integers(size // 2, min(height, width)))
    top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
    crop = Image.fromarray(photo[top:top + side, left:left + side]).convert("L")
    crop = crop.rotate(90 * int(rng.integers(4))).resize((size, size), Image.BICUBIC)
    pixels = np.asarray(crop, dtype=np.float32)
    gain, offset = rng.uniform(0.35, 0.6), rng.uniform(60, 120)  # a dull, flat exposure
    return Image.fromarray(np.clip((pixels - pixels.mean()) * gain + offset, 0, 255)
                           .astype(np.uint8))


def _scratch(image: Image.Image, grade: tuple, rng: np.random.Generator,
             contrast: float = 1.0) -> None:
    """Draw the grade's scratches in place: straight or slightly bent thin lines, their
    contrast range scaled by `contrast` (the random draws are the same for any value)."""
    _, _, (low, high), (short, long), (faint, strong) = grade
    size = image.width
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(low, high + 1))):
        length = rng.uniform(short, long) * size
        angle = rng.uniform(0, np.pi)
        x0, y0 = rng.uniform(0.1, 0.9, size=2) * size
        bend = rng.normal(0, 0.15)
        points = [(x0 + t * length * np.cos(angle + bend * t),
                   y0 + t * length * np.sin(angle + bend * t)) for t in np.linspace(0, 1, 12)]
        sign = 1 if rng.random() < 0.5 else -1  # bright or dark scratch
        step = sign * contrast * rng.uniform(faint, strong)
        shade = int(np.clip(np.mean(np.asarray(image)) + step, 0, 255))
        draw.line(points, fill=shade, width=int(rng.integers(1, 3)))


def _sensor(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The camera: slight blur and Gaussian noise, the same model for every grade."""
    blurred = image.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.4, 1.0)))
    noisy = np.asarray(blurred, dtype=np.float32) + rng.normal(0, 6, size=blurred.size[::-1])
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def make_scratches(out_dir: Path, count: int, size: int, seed: int,
                   contrast: float = 1.0) -> dict[str, int]:
    """Write `count` PNGs as `out_dir/<grade>/<index>.png`, every scratch's contrast
    scaled by `contrast` (1: the grades as listed in GRADES); returns images per grade."""
    if not (math.isfinite(contrast) and contrast > 0):
        raise ValueError(f"contrast={contrast}: use a positive factor (1 = the default "
                         "grades, 0.5 = half their line contrast)")
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists: remove it first, the script never merges")
    rng = np.random.default_rng(seed)
    photos = load_sample_images().images  # china.jpg and flower.jpg, 427 x 640 RGB
    shares = np.array([grade[1] for grade in GRADES])
    labels = rng.choice(len(GRADES), size=count, p=shares / shares.sum())
    written = {grade[0]: 0 for grade in GRADES}
    for index, label in enumerate(labels):
        image = _background(photos, size, rng)
        _scratch(image, GRADES[label], rng, contrast)
        image = _sensor(image, rng)
        class_dir = out_dir / GRADES[label][0]
        class_dir.mkdir(parents=True, exist_ok=True)
        image.save(class_dir / f"{index:05d}.png")
        written[GRADES[label][0]] += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to create")
    parser.add_argument("--count", type=int, default=2600, help="images (default 2,600)")
    parser.add_argument("--size", type=int, default=300, help="pixels (default 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--contrast", type=float, default=1.0,
                        help="scale of every grade's scratch contrast (default 1; 0.5: faint)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    written = make_scratches(args.out, args.count, args.size, args.seed, args.contrast)
    _logger.info("wrote %d images to %s: %s", sum(written.values()), args.out, written)


if __name__ == "__main__":
    main()
