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
from tqdm import tqdm

from imgpipe.data import forward_all, softmax
from imgpipe.errors import PipelineError
from imgpipe.images import IMAGE_EXTENSIONS, square_resize, to_rgb
from imgpipe.model import load_model
from imgpipe.transforms import eval_transform

_logger = logging.getLogger(__name__)
ImageInput = str | Path | bytes | Image.Image  # an Image: already loaded by `load`


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
        self.model, record = load_model(model_path)
        self.classes, self.image_size = record.classes, record.image_size
        info = record.backbone
        self.transform = eval_transform(info.input_size, info.mean, info.std)

    def load(self, image: ImageInput) -> Image.Image:
        """A file path or encoded image bytes as the pipeline's prepared square."""
        if isinstance(image, Image.Image):
            return image
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


@dataclass(frozen=True)
class Unreadable:
    """An input left out of the predictions, and why."""

    reason: str  # e.g. "cannot read the image (cannot identify image file ...)"


def predict_files(predictor: Predictor, files: Sequence[Path], batch_size: int = 32,
                  on_error: str = "skip") -> list[Prediction | Unreadable]:
    """One result per file, in order; each image is decoded once.

    Args:
        on_error: "skip" gives an unreadable or missing file an `Unreadable` with the
            reason and goes on; "stop" raises on the first.

    Raises:
        PipelineError: a file cannot be read and `on_error` is "stop".
    """
    if on_error not in ("skip", "stop"):
        raise PipelineError(f"on_error: {on_error!r} is not skip or stop")
    results: list[Prediction | Unreadable] = []
    chunks = range(0, len(files), batch_size)
    for start in tqdm(chunks, desc="predict", unit="batch", mininterval=2.0,
                      disable=len(chunks) < 2):
        loaded = [_load_or_reason(predictor, path, on_error)
                  for path in files[start:start + batch_size]]
        images = [item for item in loaded if isinstance(item, Image.Image)]
        predictions = iter(predictor.predict(images, batch_size))
        results += [next(predictions) if isinstance(item, Image.Image) else item
                    for item in loaded]
    return results


def _load_or_reason(predictor: Predictor, path: Path, on_error: str,
                    ) -> Image.Image | Unreadable:
    try:
        if not Path(path).is_file():
            raise PipelineError(f"{path}: not found")
        return predictor.load(path)
    except PipelineError as error:
        if on_error == "stop":
            raise PipelineError(f"{error}; `--on-error skip` leaves such files out, "
                                "with the reason in the output") from error
        return Unreadable(str(error).removeprefix(f"{path}: "))


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
