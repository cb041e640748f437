"""The `extract` section of params.yaml."""

from __future__ import annotations

import dataclasses

from imgpipe.params import check_range


@dataclasses.dataclass(frozen=True)
class ExtractParams:
    batch_size: int

    def __post_init__(self) -> None:
        check_range("extract.batch_size", self.batch_size, 1, 4096)
