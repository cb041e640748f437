"""scripts/make_scratches.py: the graded-scratches stand-in and its faint variant."""

from __future__ import annotations

import hashlib
from pathlib import Path

import make_scratches
import numpy as np
import pytest
from PIL import Image


def _images(root: Path) -> dict[str, np.ndarray]:
    return {f"{path.parent.name}/{path.name}": np.asarray(Image.open(path))
            for path in sorted(root.rglob("*.png"))}


def test_contrast_changes_only_the_scratches(tmp_path: Path) -> None:
    """The same seed at half contrast: clean images are byte-identical, every scratched
    one differs, and only where a line was drawn (the backgrounds and noise stay)."""
    make_scratches.make_scratches(tmp_path / "full", count=40, size=48, seed=3)
    make_scratches.make_scratches(tmp_path / "faint", count=40, size=48, seed=3,
                                  contrast=0.5)
    full, faint = _images(tmp_path / "full"), _images(tmp_path / "faint")
    assert full.keys() == faint.keys()
    grades = {name.split("/")[0] for name in full}
    assert {"0_clean", "3_severe"} <= grades
    for name, pixels in full.items():
        differs = pixels != faint[name]
        if name.startswith("0_clean"):
            assert not differs.any(), name
        else:
            assert differs.any(), name
            assert differs.mean() < 0.5, name  # lines, not the whole image


@pytest.mark.parametrize("contrast", [1.0, 0.5])
def test_a_line_differs_from_its_background_by_the_scaled_range(contrast: float) -> None:
    """One severe line on a flat grey image sits contrast x (60..110) grey levels away
    from it, whatever the seed."""
    name, share, _, lengths, (low, high) = make_scratches.GRADES[3]
    one_line = (name, share, (1, 1), lengths, (low, high))
    offsets = []
    for seed in range(20):
        image = Image.new("L", (64, 64), 128)
        make_scratches._scratch(image, one_line, np.random.default_rng(seed), contrast)
        drawn = np.unique(np.abs(np.asarray(image, dtype=int) - 128))
        assert drawn.size == 2, seed  # the background and the line's one shade
        offsets.append(drawn[1])
    assert contrast * low - 1 <= min(offsets) and max(offsets) <= contrast * high + 1
    assert max(offsets) - min(offsets) > contrast * (high - low) / 2  # the range is used


@pytest.mark.parametrize("contrast", [0.0, -0.5, float("nan"), float("inf")])
def test_a_contrast_that_is_not_a_positive_factor_is_refused(tmp_path: Path,
                                                             contrast: float) -> None:
    with pytest.raises(ValueError, match=f"contrast={contrast}"):
        make_scratches.make_scratches(tmp_path / "out", count=4, size=32, seed=0,
                                      contrast=contrast)
    assert not (tmp_path / "out").exists()


# sha256 over (relative path, decoded pixels) of make_scratches(count=20, size=32, seed=0),
# recorded from the generator before `contrast` existed (commit 9047516's parent), whose
# images the README's graded-scratches tables were measured on.
BEFORE_CONTRAST = "b2869c0182b3ab6166badca8dda7da4cad9b7c39c179d2e11a7f112903aceb39"


def test_the_default_contrast_makes_the_same_images_as_before(tmp_path: Path) -> None:
    make_scratches.make_scratches(tmp_path / "out", count=20, size=32, seed=0)
    digest = hashlib.sha256()
    for name, pixels in _images(tmp_path / "out").items():
        digest.update(name.encode())
        digest.update(pixels.tobytes())
    assert digest.hexdigest() == BEFORE_CONTRAST
