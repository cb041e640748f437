"""Reproduce the pipeline and compare it with the committed results (`make check-repro`).

Runs `dvc repro`, then compares the workspace with git's HEAD:

- output hashes in `dvc.lock` (DVC-cached outputs): those in `EXACT_OUTPUTS` must match
  bit for bit on any x86-64 machine with the locked environment (the head: whenever the
  features it was fitted on match); the others are reported and judged by the metrics
  they lead to;
- every metrics and plots file `dvc.yaml` declares (JSON and CSV, tracked in git): each
  number must agree within the tolerance of its key (`TOLERANCES`), every text value
  exactly.

Prints a table (output, committed, reproduced, diff, tolerance, verdict) of everything
that is not identical and exits 1 if anything is out of tolerance. `--restore` then puts
the committed `dvc.lock` and metrics files back when they differed within tolerance: the
committed results stay the reference, and float noise is never committed.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

_logger = logging.getLogger("check_repro")

# Output -> the outputs that must match for its bytes to have to match. prepare decodes
# and resizes in integer arithmetic: the same bytes on any CPU. train_head rounds its
# coefficients on a grid far coarser than the BLAS noise: the same bytes from the same
# features. The backbone's features (extract) and what training computes from them
# (finetune_full) can move in the last bits with the CPU's vector kernels (README,
# Reproducibility): judged by their metrics instead.
EXACT_OUTPUTS: dict[str, tuple[str, ...]] = {
    "data/prepared": (),
    "metrics/prepare_skipped.csv": (),
    "models/head.pt": ("data/features",),
}
# (key regex, absolute tolerance): the first match wins. Keys are `file:key.path` for JSON
# and `file:column[row]` for CSV.
TOLERANCES: tuple[tuple[str, float], ...] = (
    (r"loss", 2e-4),  # float noise measured < 1e-5, plus one step where written to 4 decimals
    (r"probability", 1e-3),  # evaluate writes 4 decimals; below 0.1 point means nothing
    (r".", 1e-6),  # accuracies, F1s, counts, C: the same predictions give the same numbers
)


@dataclass(frozen=True)
class Row:
    output: str
    committed: str
    reproduced: str
    diff: str
    tolerance: str
    ok: bool


def lock_hashes(lock_text: str) -> dict[str, str]:
    """Output path -> md5 of every DVC-cached output in a dvc.lock."""
    hashes = {}
    for stage in (yaml.safe_load(lock_text) or {}).get("stages", {}).values():
        for out in stage.get("outs", []):
            hashes[out["path"]] = out.get("md5", "")
    return hashes


def compare_hashes(committed: dict[str, str], reproduced: dict[str, str],
                   exact: dict[str, tuple[str, ...]], skip: set[str]) -> list[Row]:
    """A row per output whose hash differs (or is missing), failing where it must match."""
    def same(path: str) -> bool:
        return committed.get(path, "missing") == reproduced.get(path, "missing")

    rows = []
    for path in sorted(set(committed) | set(reproduced)):
        if path in skip or same(path):
            continue
        must_match = path in exact and all(same(given) for given in exact[path])
        tolerance = ("by its metrics" if not must_match else "bit for bit" if not exact[path]
                     else f"bit for bit ({', '.join(exact[path])} matched)")
        rows.append(Row(path, committed.get(path, "missing")[:12],
                        reproduced.get(path, "missing")[:12], "other bytes", tolerance,
                        not must_match))
    return rows


def tolerance_for(key: str, tolerances: tuple[tuple[str, float], ...] = TOLERANCES) -> float:
    return next(tol for pattern, tol in tolerances if re.search(pattern, key))


def flatten(value: object, prefix: str) -> dict[str, object]:
    """Nested JSON as `prefix:key.sub` -> leaf value."""
    if isinstance(value, dict):
        flat: dict[str, object] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}.{key}" if ":" in prefix else f"{prefix}:{key}"))
        return flat
    return {prefix: value}


def table_values(path: str, text: str) -> dict[str, object]:
    """A metrics file's values by key: JSON leaves, or CSV cells as `path:column[row]`."""
    if path.endswith(".json"):
        return flatten(json.loads(text), path)
    frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    return {f"{path}:{column}[{index}]": value for column in frame.columns
            for index, value in enumerate(frame[column])}


def compare_values(committed: dict[str, object], reproduced: dict[str, object]) -> list[Row]:
    """A row per key that differs: numbers within their tolerance pass, text must match."""
    rows = []
    for key in [*committed, *(key for key in reproduced if key not in committed)]:
        old, new = committed.get(key, "missing"), reproduced.get(key, "missing")
        if old == new:
            continue
        old_number, new_number = _number(old), _number(new)
        if old_number is None or new_number is None:
            rows.append(Row(key, str(old), str(new), "differs", "exact", False))
            continue
        tolerance, diff = tolerance_for(key), new_number - old_number
        ok = old_number == new_number or (math.isfinite(diff) and abs(diff) <= tolerance)
        rows.append(Row(key, str(old), str(new), f"{diff:+.2e}", f"{tolerance:g}", ok))
    return rows


def _number(value: object) -> float | None:
    if isinstance(value, bool) or value in ("", None):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def format_table(rows: list[Row]) -> str:
    header = ("output", "committed", "reproduced", "diff", "tolerance", "verdict")
    cells = [header] + [(r.output, r.committed, r.reproduced, r.diff, r.tolerance,
                         "ok" if r.ok else "FAIL") for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in cells)


def metrics_files(dvc_yaml: dict, suffixes: tuple[str, ...] = (".json", ".csv")) -> list[str]:
    """Every metrics and plots file that dvc.yaml's stages declare, with these suffixes."""
    files = []
    for stage in dvc_yaml["stages"].values():
        for entry in [*stage.get("metrics", []), *stage.get("plots", [])]:
            path = next(iter(entry)) if isinstance(entry, dict) else entry
            if path.endswith(suffixes):
                files.append(path)
    return files


def _git_show(path: str) -> str:
    result = subprocess.run(["git", "show", f"HEAD:{path}"], capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else ""


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def check(repo: Path) -> tuple[list[Row], list[str]]:
    """Compare the workspace with HEAD; returns the differing rows and the changed files."""
    dvc_yaml = yaml.safe_load((repo / "dvc.yaml").read_text(encoding="utf-8"))
    files = metrics_files(dvc_yaml)
    rows = compare_hashes(lock_hashes(_git_show("dvc.lock")),
                          lock_hashes((repo / "dvc.lock").read_text(encoding="utf-8")),
                          EXACT_OUTPUTS, skip=set(files))
    changed = ["dvc.lock"] if _git_show("dvc.lock") != _read(repo / "dvc.lock") else []
    for path in files:
        old, new = _git_show(path), _read(repo / path)
        if old != new:
            changed.append(path)
            rows += compare_values(table_values(path, old) if old else {},
                                   table_values(path, new) if new else {})
    return rows, changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-repro", action="store_true", help="compare only")
    parser.add_argument("--restore", action="store_true",
                        help="after a pass, put back the committed dvc.lock and metrics files")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    repo = Path.cwd()
    if not args.no_repro:
        status = subprocess.run([sys.executable, "-m", "dvc", "repro"]).returncode
        if status != 0:
            sys.exit(f"check-repro: dvc repro failed (exit status {status}); its output above "
                     "names the stage and the error")
    rows, changed = check(repo)
    if rows:
        _logger.info("%s", format_table(rows))
    failed = [row for row in rows if not row.ok]
    if failed:
        sys.exit(f"check-repro: {len(failed)} of the differences above are out of tolerance "
                 "(FAIL): the pipeline does not reproduce the committed results")
    if changed:
        _logger.info("check-repro: %s differ within tolerance; commit nothing",
                     ", ".join(changed))
    else:
        _logger.info("check-repro: every output and metric is identical to HEAD")
    if args.restore:
        restore(repo)


def restore(repo: Path) -> None:
    """Put back dvc.lock and every declared metrics and plots file (PNGs too) git sees changed."""
    dvc_yaml = yaml.safe_load((repo / "dvc.yaml").read_text(encoding="utf-8"))
    tracked = ["dvc.lock", *metrics_files(dvc_yaml, suffixes=("",))]
    modified = subprocess.run(["git", "diff", "--name-only", "HEAD", "--", *tracked],
                              capture_output=True, text=True, check=True, cwd=repo).stdout.split()
    if modified:
        subprocess.run(["git", "checkout", "HEAD", "--", *modified], check=True, cwd=repo)
        _logger.info("restored the committed %s", ", ".join(modified))

if __name__ == "__main__":
    main()
