"""Predictions on raw images (paths or bytes) from a saved model file.

Raw images go through the same steps as in the pipeline: upright RGB, square resize to
the prepared size (stored in the model file), then the backbone's eval transform.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from imgpipe.data import forward_all, softmax
from imgpipe.errors import PipelineError
from imgpipe.images import IMAGE_EXTENSIONS, square_resize, to_rgb
from imgpipe.model import load_model
from imgpipe.transforms import eval_transform

_logger = logging.getLogger(__name__)
ImageInput = str | Path | bytes


@dataclass(frozen=True)
class Prediction:
    predicted: str
    probability: float
    probabilities: dict[str, float]  # every class

    def top(self, k: int) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])[:k]


class Predictor:
    """A trained model with the preprocessing it was trained with."""

    def __init__(self, model_path: Path) -> None:
        self.model, self.classes, info, payload = load_model(model_path)
        self.image_size = int(payload["preprocess"]["image_size"])
        self.transform = eval_transform(info.input_size, info.mean, info.std)

    def load(self, image: ImageInput) -> Image.Image:
        """A file path or encoded image bytes as the pipeline's prepared square."""
        source = io.BytesIO(image) if isinstance(image, bytes) else image
        try:
            with Image.open(source) as opened:
                return square_resize(to_rgb(opened), self.image_size)
        except (OSError, SyntaxError, ValueError) as error:
            name = "image bytes" if isinstance(image, bytes) else str(image)
            raise PipelineError(f"{name}: cannot read the image ({error})") from error

    def probabilities(self, images: Sequence[ImageInput], batch_size: int = 32) -> np.ndarray:
        """(N, C) class probabilities, in input order."""
        if not images:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return softmax(forward_all(self.model, images, self.transform, batch_size, "predict",
                                   load=self.load))

    def predict(self, images: Sequence[ImageInput], batch_size: int = 32) -> list[Prediction]:
        rows = self.probabilities(images, batch_size)
        return [Prediction(self.classes[int(row.argmax())], float(row.max()),
                           {name: float(p) for name, p in zip(self.classes, row)})
                for row in rows]


def expand_inputs(inputs: Iterable[Path]) -> list[Path]:
    """Files as given; folders searched recursively for image files, sorted."""
    files: list[Path] = []
    for path in inputs:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*")
                            if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
        else:
            files.append(path)
    return files
