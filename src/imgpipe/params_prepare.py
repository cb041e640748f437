"""The `data` and `prepare` sections of params.yaml: what prepare reads."""

from __future__ import annotations

import dataclasses
from typing import Literal

from imgpipe.errors import ParamsError
from imgpipe.params import check_range


@dataclasses.dataclass(frozen=True)
class DataParams:
    source: str  # dataset root: ImageFolder tree or CSV manifest
    classes: list[str] | None = None  # keep only these labels, in this order

    def __post_init__(self) -> None:
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise ParamsError(f"data.classes: {self.classes!r} repeats a name; list each once")


@dataclasses.dataclass(frozen=True)
class PrepareParams:
    seed: int
    val_fraction: float
    test_fraction: float
    image_size: int  # pixels, side of the stored square images
    shard_size: int  # most images per shard file (imgpipe.shards)
    on_error: Literal["skip", "stop"]  # unreadable images and broken manifest rows

    def __post_init__(self) -> None:
        check_range("prepare.val_fraction", self.val_fraction, 0.0, 1.0, closed=False)
        check_range("prepare.test_fraction", self.test_fraction, 0.0, 1.0, closed=False)
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ParamsError(
                f"prepare.val_fraction + prepare.test_fraction = "
                f"{self.val_fraction + self.test_fraction:g} leaves no training images: "
                "keep their sum below 1 (0.3 is usual)")
        check_range("prepare.image_size", self.image_size, 32, 1024)
        check_range("prepare.shard_size", self.shard_size, 2, 1_000_000)
