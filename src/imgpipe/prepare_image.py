"""One source image -> one prepared image, through the per-image cache: what prepare caches.

A cached prepared image is valid exactly when it would be made again the same: same
source bytes (the entry is named by their content id), same code, same values passed in.
So the cache key is `PrepareSettings` field by field, Pillow's version, and the digest
of every file in this module's import closure (see imgpipe.closure): decoding, the
resize, the JPEG encoding and the cache's own storage. An edit to any other module keeps
the key. Everything the computation uses must be imported here, never passed in.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import PIL
from PIL import Image

from imgpipe.cache import ItemCache, place
from imgpipe.closure import code_digests
from imgpipe.images import PREPARED_SUFFIX, content_id, save_prepared, square_resize, to_rgb
from imgpipe.sources import Sample, Skipped

CACHE_KIND = "prepared"


@dataclass(frozen=True)
class PrepareSettings:
    """Every value passed into the per-image computation; each field is part of the key."""

    image_size: int  # prepare.image_size, pixels: side of the prepared square


def open_cache(cache_dir: Path, settings: PrepareSettings) -> ItemCache:
    """The cache folder of prepared images made with `settings` by this code."""
    return ItemCache(cache_dir, CACHE_KIND, {**asdict(settings), "pillow": PIL.__version__,
                                             "code": code_digests(__name__)})


def prepare_one(sample: Sample, images_dir: Path, settings: PrepareSettings,
                cache: ItemCache | None) -> tuple[str, bool] | Skipped:
    """Write one prepared image: (its content id, whether it was decoded), or why not."""
    try:
        data = sample.path.read_bytes()
    except OSError as error:  # a broken link, no permission
        return Skipped(sample.relpath, f"cannot read the file: {error}", broken=True)
    if not data:
        return Skipped(sample.relpath, "empty file (0 bytes)", broken=True)
    image_id = content_id(data)
    target = images_dir / f"{image_id}{PREPARED_SUFFIX}"
    if target.exists():  # a duplicate of an image already written
        return image_id, False
    if cache is not None and cache.has(image_id, PREPARED_SUFFIX):
        place(cache.path(image_id, PREPARED_SUFFIX), target)
        return image_id, False
    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its pixel limit: refuse both alike.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                prepared = square_resize(to_rgb(image), settings.image_size)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        return Skipped(sample.relpath, f"too large to decode safely: {error}", broken=True)
    except (OSError, SyntaxError, ValueError) as error:
        return Skipped(sample.relpath, f"unreadable image: {error}", broken=True)
    if cache is None:
        save_prepared(prepared, target)
    else:
        place(cache.store(image_id, PREPARED_SUFFIX, lambda path: save_prepared(prepared, path)),
              target)
    return image_id, True
