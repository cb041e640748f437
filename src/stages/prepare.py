"""Stage prepare: list, decode, de-duplicate, split and resize the dataset.

Reads `data.source` and `prepare.*`. Writes the prepared folder (images in shards, see
imgpipe.manifest and imgpipe.shards), the counts in the metrics file and every skipped
file, with its reason, in a report. With a cache folder, each resized image is also kept
there under its source's content hash, so a later run decodes only images it has not
seen (imgpipe.prepare_image says what the cache key is made of).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from imgpipe import stage
from imgpipe.cache import ItemStore
from imgpipe.errors import DataError
from imgpipe.index_writer import write_index
from imgpipe.io import atomic_path, write_json
from imgpipe.manifest import CLASSES_NAME, PREPROCESS_NAME
from imgpipe.params import load_section
from imgpipe.params_prepare import DataParams, PrepareParams
from imgpipe.prepare_image import PrepareSettings, open_store, prepare_one
from imgpipe.shards import write_shards
from imgpipe.sources import Sample, Skipped, list_samples
from imgpipe.splits import SPLITS, stratified_split

_logger = logging.getLogger(__name__)


def prepare(*, source: Path, out_dir: Path, metrics_path: Path, report_path: Path, seed: int,
            val_fraction: float, test_fraction: float, image_size: int, shard_size: int,
            classes: list[str] | None = None, on_error: str = "skip",
            cache_dir: Path | None = None) -> dict:
    """Turn the images under `source` into a split, resized, content-addressed dataset.

    Args:
        classes: labels to keep, in this order; None keeps every label, sorted.
        shard_size: most images per shard (see imgpipe.shards).
        on_error: "skip" lists unreadable files in the report; "stop" raises on the first.
        cache_dir: per-image cache (resized images by source content hash); None: a
            temporary one, deleted afterwards.

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
    with _store(cache_dir, settings) as store, atomic_path(out_dir) as staging:
        ids = _decode_all(samples, settings, store, skipped, on_error)
        rows = _drop_duplicates(samples, ids, skipped)
        del samples, ids  # plain lists and dicts from here on, no data frames: ~0.7 KB an image
        classes = _check_classes(rows, skipped, classes)
        placements = write_shards(staging, _encoded(store, _shard_order(rows)), shard_size)
        split = stratified_split([label for _, _, label in rows],
                                 [image_id for image_id, _, _ in rows],
                                 val_fraction, test_fraction, seed)
        write_index(staging, rows, split, placements)
        write_json(staging / CLASSES_NAME, classes)
        write_json(staging / PREPROCESS_NAME, {"image_size": image_size})
    metrics = _counts(rows, split, classes, skipped)
    _write_report(report_path, skipped)
    write_json(metrics_path, metrics)
    _logger.info("%d images in %d classes: %s; %d skipped (see %s)", len(rows), len(classes),
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


@contextmanager
def _store(cache_dir: Path | None, settings: PrepareSettings) -> Iterator[ItemStore]:
    """The per-image store under `cache_dir`, or a temporary one when there is none."""
    with tempfile.TemporaryDirectory(prefix="imgpipe-prepare-") as temporary:
        store = open_store(Path(temporary) if cache_dir is None else cache_dir, settings)
        try:
            yield store
        finally:
            store.close()


def _decode_all(samples: list[Sample], settings: PrepareSettings, store: ItemStore,
                skipped: list[Skipped], on_error: str) -> list[str | None]:
    """Decode, convert and resize each sample into `store`; skip what cannot be read.

    Returns:
        Each sample's image id, None where it was skipped.
    """
    ids: list[str | None] = []
    decoded = 0
    for sample in tqdm(samples, desc="prepare", unit="img", mininterval=2.0):
        problem = prepare_one(sample, settings, store)
        if isinstance(problem, Skipped):
            ids.append(None)
            skipped.append(problem)
            if on_error == "stop":
                _stop_on_broken([problem])
        else:
            image_id, was_decoded = problem
            ids.append(image_id)
            decoded += was_decoded
    kept = len(ids) - ids.count(None)
    _logger.info("decoded %d images, %d already in the store (%s)", decoded, kept - decoded,
                 store.folder)
    return ids


def _drop_duplicates(samples: list[Sample], ids: list[str | None],
                     skipped: list[Skipped]) -> list[tuple[str, str, str]]:
    """(image_id, source, label) per distinct image, in the order first seen; an image
    labelled with two classes is dropped."""
    first: dict[str, Sample] = {}
    copies: dict[str, list[Sample]] = defaultdict(list)  # only images seen more than once
    for image_id, sample in zip(ids, samples):
        if image_id is None:
            continue
        if image_id in first:
            copies[image_id].append(sample)
        else:
            first[image_id] = sample
    rows = []
    for image_id, sample in first.items():
        others = copies.get(image_id, [])
        labels = sorted({sample.label, *(other.label for other in others)})
        if len(labels) > 1:
            for copy in [sample, *others]:
                skipped.append(Skipped(copy.relpath, "the same image is labelled "
                                       f"{' and '.join(map(repr, labels))}: ambiguous"))
            continue
        for copy in others:
            skipped.append(Skipped(copy.relpath, f"duplicate of {sample.relpath}"))
        rows.append((image_id, sample.relpath, sample.label))
    return rows


def _shard_order(rows: list[tuple[str, str, str]]) -> list[str]:
    """Image ids by file name, then path: images added with later names (numbered or
    dated files, whatever class folder they are in) land together in the last shards,
    so `dvc push` after adding them uploads those shards only."""
    # Two stable sorts, by path then by name, order as one by (name, path) without a key
    # tuple per image; rsplit gives PurePosixPath(...).name for the relative paths
    # sources lists, without interning every name (a 7 MB table at 100,000 images).
    ordered = sorted(rows, key=lambda row: row[1])
    ordered.sort(key=lambda row: row[1].rsplit("/", 1)[-1])
    return [image_id for image_id, _, _ in ordered]


def _encoded(store: ItemStore, image_ids: list[str]) -> Iterator[tuple[str, bytes]]:
    """The prepared images' bytes from the store, in the order of `image_ids`."""
    for image_id in image_ids:
        data = store.get(image_id)
        if data is None:  # the cache folder was deleted while prepare ran
            raise DataError(f"prepared image {image_id} vanished from {store.folder} during "
                            "prepare: run `dvc repro prepare` again")
        yield image_id, data


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


def _counts(rows: list[tuple[str, str, str]], split: list[str], classes: list[str],
            skipped: list[Skipped]) -> dict:
    per_split, per_class = Counter(split), Counter(label for _, _, label in rows)
    return {
        "classes": len(classes),
        "images": {name: per_split[name] for name in SPLITS},
        "images_per_class": {name: per_class[name] for name in classes},
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
                image_size=params.image_size, shard_size=params.shard_size,
                classes=data.classes,
                on_error=params.on_error, cache_dir=args.cache_dir)

    stage.run("prepare", body)


if __name__ == "__main__":
    main()
