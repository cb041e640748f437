"""Stage prepare: list, decode, de-duplicate, split and resize the dataset.

Reads `data.source` and `prepare.*`. Writes the prepared folder (see imgpipe.manifest),
the counts in the metrics file and every skipped file, with its reason, in a report.
With a cache folder, each resized image is also kept there under its source's content
hash, so a later run decodes only images it has not seen (imgpipe.prepare_image says
what the cache key is made of).
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from imgpipe import stage
from imgpipe.cache import ItemCache, file_digest
from imgpipe.errors import DataError
from imgpipe.images import PREPARED_SUFFIX
from imgpipe.io import atomic_path, write_json
from imgpipe.manifest import (
    CLASSES_NAME,
    IMAGES_DIR,
    MANIFEST_COLUMNS,
    MANIFEST_NAME,
    PREPROCESS_NAME,
)
from imgpipe.params import load_section
from imgpipe.params_prepare import DataParams, PrepareParams
from imgpipe.prepare_image import PrepareSettings, open_cache, prepare_one
from imgpipe.sources import Sample, Skipped, list_samples
from imgpipe.splits import SPLITS, stratified_split

_logger = logging.getLogger(__name__)


def prepare(*, source: Path, out_dir: Path, metrics_path: Path, report_path: Path, seed: int,
            val_fraction: float, test_fraction: float, image_size: int,
            classes: list[str] | None = None, on_error: str = "skip",
            cache_dir: Path | None = None) -> dict:
    """Turn the images under `source` into a split, resized, content-addressed dataset.

    Args:
        classes: labels to keep, in this order; None keeps every label, sorted.
        on_error: "skip" lists unreadable files in the report; "stop" raises on the first.
        cache_dir: per-image cache (resized images by source content hash); None: none.

    Returns:
        The metrics written to `metrics_path` (counts per split and class, skipped files).
    """
    samples, skipped = list_samples(source)
    _logger.info("found %d image files under %s", len(samples), source)
    if classes is not None:
        samples = _keep_classes(samples, classes, skipped)
    if on_error == "stop":
        _stop_on_broken(skipped)
    settings = PrepareSettings(image_size)
    cache = None if cache_dir is None else open_cache(cache_dir, settings)
    with atomic_path(out_dir) as staging:
        (staging / IMAGES_DIR).mkdir(parents=True)
        kept = _decode_all(samples, staging / IMAGES_DIR, settings, skipped, on_error, cache)
        rows = _drop_duplicates(kept, staging / IMAGES_DIR, skipped)
        classes = _check_classes(rows, skipped, classes)
        table = pd.DataFrame(rows, columns=["image_id", "source", "label"])
        table["file"] = [f"{IMAGES_DIR}/{i}{PREPARED_SUFFIX}" for i in table["image_id"]]
        table["label_index"] = [classes.index(label) for label in table["label"]]
        table["split"] = stratified_split(list(table["label"]), list(table["image_id"]),
                                          val_fraction, test_fraction, seed)
        table["sha256"] = [file_digest(staging / name) for name in table["file"]]
        table = table.sort_values(["split", "label_index", "image_id"], ignore_index=True)
        table[list(MANIFEST_COLUMNS)].to_csv(staging / MANIFEST_NAME, index=False)
        write_json(staging / CLASSES_NAME, classes)
        write_json(staging / PREPROCESS_NAME, {"image_size": image_size})
    metrics = _counts(table, classes, skipped)
    _write_report(report_path, skipped)
    write_json(metrics_path, metrics)
    _logger.info("%d images in %d classes: %s; %d skipped (see %s)", len(table), len(classes),
                 ", ".join(f"{s} {metrics['images'][s]}" for s in SPLITS), len(skipped),
                 report_path)
    return metrics


def _keep_classes(samples: list[Sample], classes: list[str],
                  skipped: list[Skipped]) -> list[Sample]:
    for sample in samples:
        if sample.label not in classes:
            skipped.append(Skipped(sample.relpath, f"unknown label {sample.label!r} "
                                   "(not in data.classes)"))
    return [sample for sample in samples if sample.label in classes]


def _stop_on_broken(skipped: list[Skipped]) -> None:
    broken = [s for s in skipped if s.broken]
    if broken:
        raise DataError(f"{broken[0].relpath}: {broken[0].reason} ({len(broken)} such "
                        "problem(s)); fix the data, or set prepare.on_error: skip")


def _decode_all(samples: list[Sample], images_dir: Path, settings: PrepareSettings,
                skipped: list[Skipped], on_error: str,
                cache: ItemCache | None) -> list[tuple[str, Sample]]:
    """Decode, convert and resize each sample into `images_dir`; skip what cannot be read."""
    kept, decoded = [], 0
    for sample in tqdm(samples, desc="prepare", unit="img", mininterval=2.0):
        problem = prepare_one(sample, images_dir, settings, cache)
        if isinstance(problem, Skipped):
            skipped.append(problem)
            if on_error == "stop":
                _stop_on_broken([problem])
        else:
            image_id, was_decoded = problem
            kept.append((image_id, sample))
            decoded += was_decoded
    if cache is not None:
        _logger.info("decoded %d images, %d from the cache (%s)", decoded, len(kept) - decoded,
                     cache.folder)
    return kept


def _drop_duplicates(kept: list[tuple[str, Sample]], images_dir: Path,
                     skipped: list[Skipped]) -> list[tuple[str, str, str]]:
    """One row per distinct image; an image labelled with two classes is dropped."""
    by_id: dict[str, list[Sample]] = defaultdict(list)
    for image_id, sample in kept:
        by_id[image_id].append(sample)
    rows = []
    for image_id, copies in by_id.items():
        labels = sorted({s.label for s in copies})
        if len(labels) > 1:
            for sample in copies:
                skipped.append(Skipped(sample.relpath, "the same image is labelled "
                                       f"{' and '.join(map(repr, labels))}: ambiguous"))
            (images_dir / f"{image_id}{PREPARED_SUFFIX}").unlink()
            continue
        for sample in copies[1:]:
            skipped.append(Skipped(sample.relpath, f"duplicate of {copies[0].relpath}"))
        rows.append((image_id, copies[0].relpath, copies[0].label))
    return rows


def _check_classes(rows: list[tuple[str, str, str]], skipped: list[Skipped],
                   wanted: list[str] | None) -> list[str]:
    counts = Counter(label for _, _, label in rows)
    empty = [name for name in wanted or [] if name not in counts]
    if empty:
        raise DataError(f"data.classes lists {', '.join(map(repr, empty))} but no readable "
                        "image has that label; fix the name or remove it from data.classes")
    if len(counts) < 2:
        found = ", ".join(f"{label!r} ({n} images)" for label, n in counts.items()) or "none"
        raise DataError(f"found {len(counts)} class(es) with readable images: {found}; "
                        f"a classifier needs at least two ({len(skipped)} files skipped)")
    return list(wanted) if wanted else sorted(counts)


def _counts(table: pd.DataFrame, classes: list[str], skipped: list[Skipped]) -> dict:
    return {
        "classes": len(classes),
        "images": {split: int((table["split"] == split).sum()) for split in SPLITS},
        "images_per_class": {c: int((table["label"] == c).sum()) for c in classes},
        "skipped": len(skipped),
    }


def _write_report(report_path: Path, skipped: list[Skipped]) -> None:
    report = pd.DataFrame([(s.relpath, s.reason) for s in skipped], columns=["path", "reason"])
    with atomic_path(report_path) as temporary:
        report.sort_values("path").to_csv(temporary, index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="per-image cache of resized images, reused across runs")
    args = parser.parse_args()

    def body() -> None:
        data, params = load_section(DataParams, "data"), load_section(PrepareParams, "prepare")
        prepare(source=Path(data.source), out_dir=args.out_dir,
                metrics_path=args.metrics, report_path=args.report, seed=params.seed,
                val_fraction=params.val_fraction, test_fraction=params.test_fraction,
                image_size=params.image_size, classes=data.classes,
                on_error=params.on_error, cache_dir=args.cache_dir)

    stage.run("prepare", body)


if __name__ == "__main__":
    main()
