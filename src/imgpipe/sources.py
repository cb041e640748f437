"""Finding the labelled images of a dataset: an ImageFolder tree or a CSV manifest."""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from imgpipe.errors import DataError
from imgpipe.images import IMAGE_EXTENSIONS

_logger = logging.getLogger(__name__)
CSV_COLUMNS = ("path", "label")


@dataclass(frozen=True, slots=True)
class Sample:
    """One labelled image file.

    Two strings and a folder shared by every sample of a dataset, not a Path each: a
    million samples take 150 MB less.
    """

    root: Path  # the dataset's folder (the CSV's, for a CSV source)
    relpath: str  # as the user wrote it, relative to root (POSIX)
    label: str

    @property
    def path(self) -> Path:
        return self.root / self.relpath


@dataclass(frozen=True)
class Skipped:
    """A file or manifest row left out, and why (reported by prepare)."""

    relpath: str
    reason: str
    broken: bool = False  # a file that should be usable but is not (prepare.on_error applies)


def list_samples(source: Path) -> tuple[list[Sample], list[Skipped]]:
    """List the labelled images under `source`, sorted by path.

    Args:
        source: a folder with one sub-folder per class, or a CSV file with `path,label`
            columns whose paths are relative to the CSV's folder.

    Returns:
        The samples, and the entries skipped with their reason.

    Raises:
        DataError: `source` does not exist or is neither a folder nor a CSV file.
    """
    if not source.exists():
        raise DataError(f"data.source: {str(source)!r} does not exist; point it at a folder "
                        "of class sub-folders or at a CSV file with path,label columns")
    if source.is_dir():
        return _list_image_folder(source)
    if source.suffix.lower() == ".csv":
        return _list_csv(source)
    raise DataError(f"data.source: {str(source)!r} is neither a folder nor a .csv file")


def _list_image_folder(root: Path) -> tuple[list[Sample], list[Skipped]]:
    samples: list[Sample] = []
    skipped: list[Skipped] = []
    labels: dict[str, str] = {}  # one string object per class, shared by its samples
    for relpath in _files_under(root):
        parts = relpath.split("/")
        if len(parts) < 2:
            skipped.append(Skipped(relpath, "not inside a class folder"))
        elif (any(part.startswith(".") for part in parts)
              or os.path.splitext(parts[-1])[1].lower() not in IMAGE_EXTENSIONS):
            skipped.append(Skipped(relpath, "not an image file (by its extension)"))
        else:
            samples.append(Sample(root, relpath, labels.setdefault(parts[0], parts[0])))
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if folder.name not in labels:
            skipped.append(Skipped(folder.name + "/", "class folder holds no images"))
    return samples, skipped


def _files_under(root: Path) -> list[str]:
    """Every file below `root` (symbolic links to folders not followed), as POSIX paths
    relative to it, in path order: part by part, as sorting Paths would, without a Path
    object per file."""
    found = []
    for folder, _, names in os.walk(root):
        base = Path(folder).relative_to(root).as_posix()
        found.extend(name if base == "." else f"{base}/{name}" for name in names)
    return sorted(found, key=lambda relpath: relpath.replace("/", "\0"))


def _list_csv(manifest: Path) -> tuple[list[Sample], list[Skipped]]:
    """The CSV's rows, read one at a time (a million rows never sit in memory as text)."""
    samples: dict[str, Sample] = {}
    skipped: list[Skipped] = []
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{manifest}: missing column(s) {', '.join(missing)}; the CSV "
                                f"needs a header with {','.join(CSV_COLUMNS)}")
            for line, row in enumerate(reader, start=2):
                _add_row(manifest.parent.resolve(), line, row, samples, skipped)
    except UnicodeDecodeError as error:
        raise DataError(f"{manifest} is not UTF-8 text ({error}); save it as UTF-8 CSV") from error
    return sorted(samples.values(), key=lambda s: s.relpath), skipped


def _add_row(root: Path, line: int, row: dict[str, str | None], samples: dict[str, Sample],
             skipped: list[Skipped]) -> None:
    """Keep one CSV row as a sample, or say in `skipped` why not."""
    relpath, label = (row["path"] or "").strip(), (row["label"] or "").strip()
    where = relpath or f"line {line}"
    try:
        path = (root / relpath).resolve()
        is_file = path.is_file()
    except (OSError, ValueError) as error:  # NUL bytes, names too long
        skipped.append(Skipped(where, f"line {line}: invalid path ({error})", broken=True))
        return
    if not relpath or not label:
        skipped.append(Skipped(where, f"line {line}: empty path or label", broken=True))
    elif not path.is_relative_to(root):
        skipped.append(Skipped(where, f"line {line}: path leaves the dataset folder {root}",
                               broken=True))
    elif not is_file:
        skipped.append(Skipped(where, f"line {line}: file not found", broken=True))
    elif path.as_posix() in samples:
        kept = samples[path.as_posix()]
        reason = "duplicate row" if kept.label == label else (
            f"listed again with another label ({kept.label!r} kept)")
        skipped.append(Skipped(where, f"line {line}: {reason}"))
    else:
        samples[path.as_posix()] = Sample(root, relpath, label)
