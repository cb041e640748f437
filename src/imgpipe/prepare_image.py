"""One source image -> one prepared image in the per-image store: what prepare caches.

A cached prepared image is valid exactly when it would be made again the same: same
source bytes (the entry is keyed by their content id), same code, same values passed in.
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

from imgpipe.cache import ItemStore
from imgpipe.closure import code_digests
from imgpipe.images import content_id, encode_prepared, square_resize, to_rgb
from imgpipe.sources import Sample, Skipped

CACHE_KIND = "prepared"


@dataclass(frozen=True)
class PrepareSettings:
    """Every value passed into the per-image computation; each field is part of the key."""

    image_size: int  # prepare.image_size, pixels: side of the prepared square


def open_store(cache_dir: Path, settings: PrepareSettings) -> ItemStore:
    """The store of prepared images made with `settings` by this code."""
    return ItemStore(cache_dir, CACHE_KIND, {**asdict(settings), "pillow": PIL.__version__,
                                             "code": code_digests(__name__)})


def prepare_one(sample: Sample, settings: PrepareSettings,
                store: ItemStore) -> tuple[str, bool] | Skipped:
    """Make sure `store` holds the sample's prepared image (encoded JPEG bytes, under the
    source's content id): (that id, whether it was decoded now), or why it cannot."""
    try:
        data = sample.path.read_bytes()
    except OSError as error:  # a broken link, no permission
        return Skipped(sample.relpath, f"cannot read the file: {error}", broken=True)
    if not data:
        return Skipped(sample.relpath, "empty file (0 bytes)", broken=True)
    image_id = content_id(data)
    if not store.missing([image_id]):  # made by an earlier run, or a duplicate in this one
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
    except Image.UnidentifiedImageError:  # its message holds a memory address: no report bytes
        return Skipped(sample.relpath, "unreadable image: not a format Pillow recognises",
                       broken=True)
    except (OSError, SyntaxError, ValueError) as error:
        return Skipped(sample.relpath, f"unreadable image: {error}", broken=True)
    store.put([(image_id, encode_prepared(prepared))])
    return image_id, True
