from __future__ import annotations

import copy

import pytest
from repo_copy import committed_params, committed_text

from imgpipe.errors import ParamsError
from imgpipe.params import flatten, load_params, parse_params

RAW = committed_params()


def with_value(dotted: str, value: object) -> dict:
    raw = copy.deepcopy(RAW)
    *parents, last = dotted.split(".")
    node = raw
    for key in parents:
        node = node[key]
    node[last] = value
    return raw


def test_repository_params_file_is_valid(tmp_path) -> None:
    (tmp_path / "params.yaml").write_text(committed_text("params.yaml"))
    params = load_params(tmp_path / "params.yaml")
    assert params.freeze in ("all", "partial", "none")
    assert params.backbone.name == "efficientnet_lite0"
    assert params.backbone.pretrained is True


def test_unknown_key_names_the_closest_known_key() -> None:
    raw = copy.deepcopy(RAW)
    raw["train_head"]["max_iters"] = 10
    with pytest.raises(ParamsError, match=r"train_head.max_iters: unknown key; did you mean "
                                          r"train_head.max_iter\?"):
        parse_params(raw)


def test_unknown_top_level_key_is_refused() -> None:
    raw = copy.deepcopy(RAW)
    raw["frezee"] = "partial"
    with pytest.raises(ParamsError, match="frezee: unknown key; did you mean freeze"):
        parse_params(raw)


def test_bad_freeze_lists_the_allowed_values() -> None:
    with pytest.raises(ParamsError, match="freeze: 'some' is not allowed; use one of all, "
                                          "partial, none"):
        parse_params(with_value("freeze", "some"))


def test_missing_data_source_names_the_key() -> None:
    raw = copy.deepcopy(RAW)
    del raw["data"]["source"]
    with pytest.raises(ParamsError, match="data.source: missing"):
        parse_params(raw)


@pytest.mark.parametrize(("dotted", "value", "message"), [
    ("prepare.seed", "zero", "prepare.seed: expected an integer, got 'zero'"),
    ("prepare.seed", True, "prepare.seed: expected an integer, got True"),
    ("backbone.pretrained", "yes", "backbone.pretrained: expected true or false"),
    ("prepare.val_fraction", 1.5, r"prepare.val_fraction: 1.5 is out of range"),
    ("prepare.test_fraction", 0.9, "leaves no training images"),
    ("train_head.c_grid", [1.0, -1.0], "train_head.c_grid"),
    ("train_head.c_grid", 1.0, "train_head.c_grid: expected a list"),
    ("finetune_full.lr", 0, r"finetune_full.lr: 0.0 is out of range"),
    ("data.source", "", "data.source: expected a non-empty string"),
    ("backbone.input_size", 8, r"backbone.input_size: 8 is out of range"),
    ("device", "gpu", "device: 'gpu' is not allowed; use one of auto, cpu, cuda"),
    ("distributed.nproc_per_node", 0, r"distributed.nproc_per_node: 0 is out of range"),
])
def test_wrong_types_and_ranges_name_key_and_value(dotted: str, value: object,
                                                   message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        parse_params(with_value(dotted, value))


def test_yaml_scientific_notation_string_is_read_as_float() -> None:
    # PyYAML reads `1e-3` (no dot) as a string; it is still a valid learning rate.
    assert parse_params(with_value("finetune_full.lr", "1e-3")).finetune_full.lr == 0.001


def test_weights_may_be_null_or_a_path() -> None:
    assert parse_params(with_value("backbone.weights", None)).backbone.weights is None
    assert parse_params(with_value("backbone.weights", "w.pt")).backbone.weights == "w.pt"


def test_flatten_gives_dotted_names() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": None}}, "e": "x"}) == {
        "a.b": 1, "a.c.d": None, "e": "x"}


def _with(raw: dict, changes: dict[str, object]) -> dict:
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = raw
        for key in parents:
            node = node[key]
        node[last] = value
    return raw


@pytest.mark.parametrize(("changes", "message"), [
    ({"finetune_full.batch_size": 16, "distributed.nproc_per_node": 3},
     r"finetune_full.batch_size: 16 images cannot be shared equally by "
     r"distributed.nproc_per_node: 3 .* use a multiple"),
    ({"freeze": "all", "finetune_full.head_init": "xavier"},
     r"finetune_full.head_init: 'xavier' with freeze: all .* use head_init: probe"),
    ({"finetune_full.negative_class": "zero", "finetune_full.imagenet_rows": {}},
     r"finetune_full.negative_class: 'zero' needs imagenet_rows"),
    ({"finetune_full.imagenet_rows": {"zero": 1}, "backbone.pretrained": False},
     r"finetune_full.imagenet_rows needs .* backbone.pretrained: False"),
    ({"finetune_full.imagenet_rows": {"nine": 1}, "data.classes": ["zero", "one"]},
     r"'nine' is not in data.classes \['zero', 'one'\]"),
])
def test_cross_section_conflicts_are_refused_before_any_stage_runs(
        changes: dict, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        parse_params(_with(copy.deepcopy(RAW), changes))


def test_cross_section_settings_that_fit_together_are_accepted() -> None:
    params = parse_params(_with(copy.deepcopy(RAW), {
        "finetune_full.batch_size": 16, "distributed.nproc_per_node": 4, "freeze": "none",
        "finetune_full.head_init": "xavier", "data.classes": ["zero", "one"],
        "finetune_full.imagenet_rows": {"zero": 1}, "finetune_full.negative_class": "one"}))
    assert params.finetune_full.negative_class == "one"
