"""Property-based tests (hypothesis) for the two readers of user input."""

from __future__ import annotations

import copy
import csv
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from repo_copy import committed_params

from imgpipe.errors import ParamsError
from imgpipe.params_check import Params, parse_params
from imgpipe.sources import list_samples

RAW = committed_params()
SECTIONS = [key for key, value in RAW.items() if isinstance(value, dict)]
YAML_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3), max_leaves=6)


@settings(max_examples=300, deadline=None)
@given(section=st.sampled_from(SECTIONS), data=st.data(), value=YAML_VALUES)
def test_any_single_value_either_validates_or_names_its_key(section: str, data, value) -> None:
    raw = copy.deepcopy(RAW)
    key = data.draw(st.sampled_from(sorted(raw[section])))
    raw[section][key] = value
    try:
        assert isinstance(parse_params(raw), Params)
    except ParamsError as error:
        assert f"{section}.{key}" in str(error)


@settings(max_examples=200, deadline=None)
@given(section=st.sampled_from([None, *SECTIONS]),
       key=st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.", min_size=1, max_size=12))
def test_an_unknown_key_anywhere_is_refused(section: str | None, key: str) -> None:
    raw = copy.deepcopy(RAW)
    node = raw if section is None else raw[section]
    if key in node:
        return
    node[key] = 1
    try:
        parse_params(raw)
    except ParamsError as error:
        assert "unknown key" in str(error) and key in str(error)
    else:
        raise AssertionError(f"unknown key {key!r} in {section} was accepted")


PATHS = st.one_of(
    st.sampled_from(["img/a.jpg", "img/b.jpg", "img/missing.jpg", "../outside.jpg",
                     "/etc/passwd", "img/../img/a.jpg", "img/./b.jpg", "", " ", "img"]),
    st.text(max_size=12))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(st.tuples(PATHS, st.text(max_size=6)), max_size=12))
def test_csv_rows_are_kept_inside_the_root_or_reported(rows) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "data"
        (root / "img").mkdir(parents=True)
        for name in ("a.jpg", "b.jpg"):
            (root / "img" / name).write_bytes(b"x")
        (Path(folder) / "outside.jpg").write_bytes(b"x")
        with (root / "labels.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "label"])
            writer.writerows(rows)
        samples, skipped = list_samples(root / "labels.csv")
        assert all(s.path.is_relative_to(root.resolve()) and s.path.is_file() for s in samples)
        assert len({s.path for s in samples}) == len(samples)
        with (root / "labels.csv").open(newline="", encoding="utf-8-sig") as handle:
            read_back = list(csv.DictReader(handle))
        assert len(samples) + len(skipped) == len(read_back)
