"""extract.runtime and extract.precision: the runtimes give the torch path's features,
the same bytes run after run, fall back or fail as documented, and are keyed apart."""

from __future__ import annotations

import logging
import sys
import tempfile
import typing
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imgpipe.exported
import imgpipe.runtimes
from imgpipe.backbones import build_backbone, inference_trunk
from imgpipe.errors import ParamsError
from imgpipe.exported import ExportKey
from imgpipe.featurize import FeatureSettings, cache_key, feature_rows
from imgpipe.params import load_section
from imgpipe.params_extract import ExtractParams, Precision, Runtime
from imgpipe.runtimes import load_runner

CPU = torch.device("cpu")
SIZE, BATCH = 64, 2  # pixels, images: tiny, the parity does not depend on either


def _trunk_and_key(name: str) -> tuple[torch.nn.Module, ExportKey]:
    pretrained = name == "efficientnet_lite0"  # embedded weights; the others random init
    backbone = build_backbone(name, pretrained=pretrained, input_size=SIZE)
    return inference_trunk(backbone).eval(), ExportKey(name, pretrained, None, BATCH, SIZE)


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18", "mobilenet_v3_small"])
def test_runtime_features_equal_the_torch_path_to_relative_1e_4(name: str,
                                                                  runtime: str) -> None:
    trunk, key = _trunk_and_key(name)
    images = torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = trunk(images).numpy()
        ran, runner = load_runner(runtime, "f32", trunk, key, None, CPU)
        got = runner(images).numpy()
    assert ran == runtime and got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_without_a_cache_folder_the_temporary_export_is_removed_once_compiled(
        runtime: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where mkdtemp exports
    trunk, key = _trunk_and_key("efficientnet_lite0")
    images = torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        _, runner = load_runner(runtime, "f32", trunk, key, None, CPU)
        assert list(tmp_path.iterdir()) == []
        assert torch.allclose(runner(images), trunk(images), rtol=1e-4, atol=1e-5)


@pytest.fixture
def image_files(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):  # 3 batches of 2, the last one padded
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(paths[-1])
    return paths


_SETTINGS = FeatureSettings("efficientnet_lite0", pretrained=True, weights=None,
                            input_size=SIZE, batch_size=BATCH, runtime="openvino")


def features_of(images: list, keys: list[str], cache_dir: Path | None = None) -> np.ndarray:
    """Every image's feature row, in order, as one (N, D) array."""
    with feature_rows(_SETTINGS, images, keys, cache_dir=cache_dir) as (_, rows):
        return np.concatenate(list(rows.chunks(range(len(keys)), len(keys))))


def test_two_runs_give_byte_identical_features_and_the_second_does_not_export(
        image_files: list[Path], tmp_path: Path, monkeypatch) -> None:
    keys = [f"{i:016x}" for i in range(len(image_files))]
    exports: list[Path] = []
    real_export = imgpipe.exported._export
    monkeypatch.setattr(imgpipe.exported, "_export",
                        lambda trunk, key, path: (exports.append(path),
                                                  real_export(trunk, key, path)))
    first = features_of(image_files, keys, cache_dir=tmp_path / "a")
    second = features_of(image_files, keys, cache_dir=tmp_path / "b")
    assert len(exports) == 2  # two cache folders: exported into each
    third = features_of(image_files, keys[::-1], cache_dir=tmp_path / "a")
    assert len(exports) == 2, "the exported model was not reused"
    assert first.tobytes() == second.tobytes() == third[::-1].tobytes()
    assert list((tmp_path / "a" / "exported").glob("*/model.onnx"))


def test_features_do_not_depend_on_batch_mates(image_files: list[Path]) -> None:
    keys = [f"{i:016x}" for i in range(len(image_files))]
    together = features_of(image_files, keys)
    alone = features_of(image_files[4:], keys[4:])  # padded with a blank
    assert together[4].tobytes() == alone[0].tobytes()


def test_auto_falls_back_to_torch_with_one_warning_that_says_why(
        monkeypatch, caplog) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("Unsupported ONNX op: FancyConv\nmore detail")

    monkeypatch.setattr(imgpipe.runtimes, "exported_onnx", broken)
    trunk, key = _trunk_and_key("resnet18")
    with caplog.at_level(logging.WARNING):
        ran, runner = load_runner("auto", "f32", trunk, key, None, CPU)
    assert ran == "torch" and runner is trunk
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "PyTorch eager" in message and "Unsupported ONNX op: FancyConv" in message
    assert "\n" not in message


def test_auto_takes_openvino_in_f32_and_is_keyed_as_openvino() -> None:
    trunk, key = _trunk_and_key("efficientnet_lite0")
    ran, _ = load_runner("auto", "f32", trunk, key, None, CPU)
    assert ran == imgpipe.runtimes.AUTO_ORDER[0] == "openvino"
    resolved = cache_key(replace(_SETTINGS, runtime=ran))
    assert resolved == cache_key(_SETTINGS)  # auto's features reuse explicit openvino's
    assert resolved != cache_key(replace(_SETTINGS, runtime="torch"))
    assert resolved != cache_key(replace(_SETTINGS, precision="bf16"))
    assert resolved["runtime"] == "openvino" and resolved["precision"] == "f32"
    assert resolved["runtime_version"] == imgpipe.runtimes.version("openvino")
    with pytest.raises(ValueError, match="not auto"):
        cache_key(replace(_SETTINGS, runtime="auto"))


def test_a_missing_explicit_runtime_is_an_error_naming_the_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    trunk, key = _trunk_and_key("resnet18")
    with pytest.raises(ParamsError, match=r"extract.runtime: onnxruntime .*pip install -e "
                                          r"\.\[onnxruntime\]"):
        load_runner("onnxruntime", "f32", trunk, key, None, CPU)


def test_an_explicit_runtime_that_cannot_export_is_an_error_not_a_fallback(
        monkeypatch) -> None:
    monkeypatch.setattr(imgpipe.runtimes, "exported_onnx",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no such op")))
    trunk, key = _trunk_and_key("resnet18")
    with pytest.raises(ParamsError, match="openvino cannot run here.*no such op.*auto"):
        load_runner("openvino", "f32", trunk, key, None, CPU)


def test_bf16_is_refused_on_torch_and_on_a_cpu_without_it(monkeypatch) -> None:
    trunk, key = _trunk_and_key("resnet18")
    with pytest.raises(ParamsError, match="bf16 runs on OpenVINO only.*runtime: torch"):
        load_runner("torch", "bf16", trunk, key, None, CPU)

    class Core:
        def get_property(self, device: str, name: str) -> list[str]:
            return ["FP32", "INT8"]  # an AVX2-only CPU

    monkeypatch.setattr(imgpipe.runtimes, "_openvino", lambda: type("ov", (), {"Core": Core}))
    with pytest.raises(ParamsError, match="no bfloat16 instructions.*precision: f32"):
        load_runner("openvino", "bf16", trunk, key, None, CPU)


def test_unknown_runtime_or_precision_in_params_yaml_names_the_choices(
        tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("extract:\n  batch_size: 8\n  runtime: tensorrt\n")
    with pytest.raises(ParamsError, match="extract.runtime: 'tensorrt' is not allowed.*"
                                          "auto, torch, openvino, onnxruntime"):
        load_section(ExtractParams, "extract", params)
    params.write_text("extract:\n  batch_size: 8\n  precision: fp16\n")
    with pytest.raises(ParamsError, match="extract.precision: 'fp16'.*f32, bf16"):
        load_section(ExtractParams, "extract", params)


def test_the_params_schema_lists_exactly_the_runtimes_and_precisions_built() -> None:
    assert typing.get_args(Runtime) == ("auto", *imgpipe.runtimes.RUNTIMES)
    assert typing.get_args(Precision) == imgpipe.runtimes.PRECISIONS
