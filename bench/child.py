"""Run one stage function in a fresh process, for its wall time and its peak memory.

The parent (`run_stage`) writes the call as JSON and starts `python bench/child.py CALL
RESULT`. The child times the stage function only (interpreter start and imports are
excluded, alike for every call) and reports its peak resident set size as VmHWM from
/proc/self/status. Not ru_maxrss (getrusage, os.wait4): Linux carries the parent's
peak across fork and exec into it, so a child of a parent holding 1.5 GB of models
would report at least 1.5 GB whatever it did; VmHWM belongs to the new address space.
"""

from __future__ import annotations

import importlib
import json
import logging
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
STAGES = ("prepare", "extract", "train_head")
_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageRun:
    """One stage call in its own process."""

    stage: str
    seconds: float  # wall time of the stage function, imports excluded
    peak_rss_mb: float  # peak resident set size of the whole process, MiB


class StageFailed(RuntimeError):
    pass


def run_stage(stage: str, kwargs: dict, log_dir: Path, threads: int) -> StageRun:
    """Call `stages.<stage>.<stage>(**kwargs)` in a fresh Python process.

    Path values travel as strings and are turned back into `Path`s when the key ends
    in `_dir`, `_path` or is `source`.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    call, result = log_dir / f"{stage}.call.json", log_dir / f"{stage}.result.json"
    call.write_text(json.dumps({"stage": stage, "threads": threads,
                                "kwargs": {k: _plain(v) for k, v in kwargs.items()}}))
    result.unlink(missing_ok=True)
    log_path = log_dir / f"{stage}.log"
    with log_path.open("w") as log:
        process = subprocess.run([sys.executable, str(Path(__file__)), str(call), str(result)],
                                 stdout=log, stderr=subprocess.STDOUT, cwd=log_dir)
    if process.returncode != 0 or not result.is_file():
        raise StageFailed(f"{stage} failed (exit {process.returncode}); see {log_path}")
    outcome = json.loads(result.read_text())
    return StageRun(stage, outcome["seconds"], outcome["peak_rss_mb"])


def _peak_rss_mib() -> float:
    """This process's peak resident set size since its exec, MiB."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux units: KiB


def _plain(value: object) -> object:
    return str(value) if isinstance(value, Path) else value


def _as_path(key: str, value: object) -> object:
    if isinstance(value, str) and (key.endswith(("_dir", "_path")) or key == "source"):
        return Path(value)
    return value


def _main(call_path: Path, result_path: Path) -> None:
    sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "src")]
    call = json.loads(call_path.read_text())
    if call["stage"] not in STAGES:
        raise SystemExit(f"unknown stage {call['stage']!r}; one of {', '.join(STAGES)}")
    logging.basicConfig(level=logging.INFO, format=f"[{call['stage']}] %(message)s")
    function = getattr(importlib.import_module(f"stages.{call['stage']}"), call["stage"])
    if "torch" in sys.modules:  # prepare does not import torch: its memory stays its own
        sys.modules["torch"].set_num_threads(call["threads"])
    kwargs = {key: _as_path(key, value) for key, value in call["kwargs"].items()}
    start = time.perf_counter()
    function(**kwargs)
    seconds = time.perf_counter() - start
    result_path.write_text(json.dumps({"seconds": seconds, "peak_rss_mb": _peak_rss_mib()}))


if __name__ == "__main__":
    _main(Path(sys.argv[1]), Path(sys.argv[2]))
