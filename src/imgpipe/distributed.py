"""Devices, and running a stage on several processes with PyTorch's elastic launcher.

A stage whose `distributed.nproc_per_node` or `nnodes` is above 1 re-runs its own command
line under torchrun (`relaunch`), and each worker joins a process group: gloo on the CPU,
NCCL on CUDA. Without torchrun every helper here is the single-process identity, so the
same stage code serves both.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from imgpipe.errors import ParamsError, PipelineError

if TYPE_CHECKING:  # not imported at run time: params.py stays out of the feature cache key
    from imgpipe.params import DistributedParams

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the workers; rank 0 alone writes files."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


ALONE = Ranks()  # a single process, no torchrun

def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when available, else the CPU; `cuda` without a GPU is an error.

    Under torchrun each worker takes the GPU of its local rank.
    """
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ParamsError("device: 'cuda' but PyTorch sees no CUDA device here; use device: "
                          "auto (CUDA when present, else the CPU) or device: cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def relaunch(stage: str, params: DistributedParams, argv: Sequence[str] | None = None) -> bool:
    """Run this script under torchrun as `params` ask, unless one process does or already there.

    One machine: `--standalone` (a rendezvous of its own on the loopback interface).
    Several: the static rendezvous at `params.rdzv_endpoint`, hosted by node 0, which takes
    the node ranks as given, so node 0 holds global rank 0 and writes the outputs where
    `dvc repro` runs. (torchrun's c10d backend would order the nodes by host name and
    process id and ignore `--node-rank`.)

    Returns:
        False when the caller should do the work itself (one process, or inside
        torchrun); True when the workers ran it and succeeded.

    Raises:
        PipelineError: a worker failed (its own message is printed above torchrun's).
    """
    if params.world <= 1 or under_torchrun():
        return False
    if params.nnodes == 1:
        where = ["--standalone"]
    else:
        where = [f"--nnodes={params.nnodes}", f"--node-rank={params.node_rank}",
                 "--rdzv-backend=static", f"--rdzv-endpoint={params.rdzv_endpoint}"]
    command = [sys.executable, "-m", "torch.distributed.run", *where,
               f"--nproc-per-node={params.nproc_per_node}", *(argv or sys.argv)]
    _logger.info("%s on %d processes (%d here): %s", stage, params.world,
                 params.nproc_per_node, " ".join(command[1:]))
    status = subprocess.run(command, check=False).returncode
    if status != 0:
        raise PipelineError(f"{stage} failed in a torchrun worker (exit status {status}); "
                            "the worker's error is above, or set distributed.nproc_per_node: 1 "
                            "and nnodes: 1")
    return True


@contextmanager
def process_group(device: torch.device) -> Iterator[Ranks]:
    """Join the torchrun workers for the block (gloo on CPU, NCCL on CUDA), or stay alone."""
    if not under_torchrun():
        yield ALONE
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield Ranks(dist.get_rank(), dist.get_world_size())
    finally:
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def sum_across(values: Sequence[float]) -> list[float]:
    """Element-wise sum of `values` over all workers (the values themselves when alone)."""
    if not active():
        return list(values)
    total = torch.tensor(list(values), dtype=torch.float64)
    dist.all_reduce(total)  # gloo and NCCL both sum by default
    return total.tolist()


def gather(value: Any) -> list[Any]:
    """Every worker's `value`, in rank order ([value] when alone)."""
    if not active():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def same_everywhere(what: str, value: Any, fix: str) -> None:
    """Check that every worker holds an equal `value` (collective).

    Raises:
        PipelineError: on every worker when they differ (nodes with unlike inputs would
            otherwise hang in mismatched collectives or mix results silently).
    """
    values = gather(value)
    if differing := [rank for rank, other in enumerate(values) if other != values[0]]:
        raise PipelineError(f"{what} differs between the workers (rank 0: {values[0]!r}; "
                            f"ranks {differing} differ); {fix}")


def from_main(value: Any) -> Any:
    """Rank 0's `value` on every worker (`value` itself when alone)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()
