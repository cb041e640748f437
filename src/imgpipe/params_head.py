"""The `train_head` section of params.yaml: the linear probe's sweep."""

from __future__ import annotations

import dataclasses

from imgpipe.errors import ParamsError
from imgpipe.params import check_range


@dataclasses.dataclass(frozen=True)
class TrainHeadParams:
    c_grid: list[float]  # inverse L2 strengths to sweep
    max_iter: int

    def __post_init__(self) -> None:
        if not self.c_grid or any(c <= 0 for c in self.c_grid):
            raise ParamsError(f"train_head.c_grid: {self.c_grid!r} must be a non-empty list "
                              "of positive numbers, e.g. [0.01, 0.1, 1, 10]")
        check_range("train_head.max_iter", self.max_iter, 1, 100_000)
