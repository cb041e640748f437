from __future__ import annotations

import copy

import pytest
import yaml
from repo_copy import committed_params, committed_text

from imgpipe.closure import import_closure
from imgpipe.errors import ParamsError
from imgpipe.params import (
    BackboneParams,
    DistributedParams,
    RunParams,
    build_section,
    flatten,
    load_section,
)
from imgpipe.params_check import load_params, parse_params
from imgpipe.params_evaluate import EvaluateParams, TrackingParams
from imgpipe.params_extract import ExtractParams
from imgpipe.params_finetune import AugmentParams, FinetuneParams
from imgpipe.params_head import TrainHeadParams
from imgpipe.params_prepare import DataParams, PrepareParams

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
    ("finetune_full.clip_grad_norm", -1.0, r"finetune_full.clip_grad_norm: -1.0 is out of"),
    ("data.source", "", "data.source: expected a non-empty string"),
    ("backbone.input_size", 8, r"backbone.input_size: 8 is out of range"),
    ("device", "gpu", "device: 'gpu' is not allowed; use one of auto, cpu, cuda"),
    ("distributed.nproc_per_node", 0, r"distributed.nproc_per_node: 0 is out of range"),
    ("distributed.node_rank", 1, r"distributed.node_rank: 1 is out of range; use a value in "
                                 r"\[0, 0\]"),
    ("distributed.nnodes", 2, r"distributed.nnodes: 2 needs distributed.rdzv_endpoint; set "
                              r"it to host:port of node 0"),
    ("distributed.rdzv_endpoint", "10.0.0.5", r"'10.0.0.5' is not host:port"),
    ("distributed.rdzv_endpoint", "10.0.0.5:http", r"'10.0.0.5:http' is not host:port"),
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
     r"finetune_full.batch_size: 16 images cannot be shared equally by 3 processes "
     r"\(distributed.nnodes: 1 x distributed.nproc_per_node: 3\); use a multiple"),
    ({"finetune_full.batch_size": 16, "distributed.nproc_per_node": 3,
      "distributed.nnodes": 2, "distributed.rdzv_endpoint": "127.0.0.1:29400"},
     r"cannot be shared equally by 6 processes"),
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


SECTIONS = {"data": DataParams, "backbone": BackboneParams, "prepare": PrepareParams,
            "extract": ExtractParams, "train_head": TrainHeadParams,
            "finetune_full": FinetuneParams, "augment": AugmentParams,
            "evaluate": EvaluateParams, "tracking": TrackingParams,
            "distributed": DistributedParams}
# The section modules each stage reads its values from; no stage imports another's.
STAGE_SECTIONS = {"prepare": "params_prepare", "extract": "params_extract",
                  "train_head": "params_head", "finetune_full": "params_finetune",
                  "evaluate": "params_evaluate"}


def test_a_stage_reads_the_same_values_as_the_whole_file_check() -> None:
    raw = with_value("finetune_full.lr", "3e-4")
    raw["select_by"] = "macro_f1"
    whole = parse_params(raw)
    for key, cls in SECTIONS.items():
        assert build_section(cls, key, raw) == getattr(whole, key), key
    run = build_section(RunParams, None, raw)
    assert (run.freeze, run.device, run.select_by, run.class_balance) == (
        whole.freeze, whole.device, "macro_f1", whole.class_balance)
    assert build_section(FinetuneParams, "finetune_full", raw).lr == 0.0003


def test_sections_left_out_take_their_defaults_in_both_readers() -> None:
    raw = copy.deepcopy(RAW)
    del raw["distributed"], raw["select_by"]
    assert build_section(DistributedParams, "distributed", raw) == DistributedParams()
    assert build_section(RunParams, None, raw).select_by == parse_params(raw).select_by


def test_load_section_validates_its_section_and_names_the_file(tmp_path) -> None:
    (tmp_path / "params.yaml").write_text("extract:\n  batch_size: 0\n")
    with pytest.raises(ParamsError, match="extract.batch_size: 0 is out of range"):
        load_section(ExtractParams, "extract", tmp_path / "params.yaml")
    with pytest.raises(ParamsError, match="missing.yaml not found"):
        load_section(ExtractParams, "extract", tmp_path / "missing.yaml")


@pytest.mark.parametrize("stage", list(STAGE_SECTIONS))
def test_a_stage_imports_its_own_sections_and_not_the_whole_file_check(stage: str) -> None:
    modules = {name.removeprefix("imgpipe/").removesuffix(".py")
               for name in import_closure(f"stages.{stage}")}
    assert STAGE_SECTIONS[stage] in modules
    assert "params_check" not in modules  # stage.run imports it when the stage runs
    assert not modules & (set(STAGE_SECTIONS.values()) - {STAGE_SECTIONS[stage]})


STAGE_ARGS = {"prepare": ["--out-dir", "p", "--metrics", "m.json", "--report", "r.csv"],
              "extract": ["--prepared-dir", "p", "--features-dir", "f"],
              "train_head": ["--features-dir", "f", "--head", "h.pt", "--metrics", "m.json",
                             "--sweep", "s.csv"],
              "finetune_full": ["--prepared-dir", "p", "--head", "h.pt", "--model", "m.pt",
                                "--metrics", "m.json", "--history", "h.csv"],
              "evaluate": None}  # its arguments come from imgpipe.metrics; checked by DVC tests


@pytest.mark.parametrize("stage", [s for s, args in STAGE_ARGS.items() if args])
def test_every_stage_refuses_a_bad_key_in_another_stages_section_before_work(
        tmp_path, stage: str) -> None:
    import subprocess
    import sys

    from conftest import REPO_ROOT

    raw = with_value("finetune_full.head_init", "xavier")  # contradicts freeze: all
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    result = subprocess.run([sys.executable, str(REPO_ROOT / "src" / "stages" / f"{stage}.py"),
                             *STAGE_ARGS[stage]], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"[{stage}] error: finetune_full.head_init: 'xavier' with freeze: all would leave an "
        "untrained head; use head_init: probe, or freeze: partial or none"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing written
