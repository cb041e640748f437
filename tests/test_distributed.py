"""Devices, and extract and finetune_full on two torchrun workers (gloo, on the CPU)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from repo_copy import committed_params

from conftest import REPO_ROOT
from imgpipe.distributed import Ranks, resolve_device
from imgpipe.errors import ParamsError
from imgpipe.features import load_split
from imgpipe.model import load_model
from imgpipe.params_finetune import AugmentParams, FinetuneParams
from stages.extract import extract
from stages.finetune_full import FinetunePaths, Recipe, finetune_full
from unit_backbone import LITE0

# Two workers each take half of every batch: the same steps as one process, up to the
# order of floating-point sums (all-reduce of gradients, 1 thread per worker).
WEIGHT_TOLERANCE = 1e-6  # max |difference| of any weight after two epochs (2e-8 measured)
LOSS_TOLERANCE = 1e-4  # relative difference of each epoch's mean train and val loss
# SGD, not AdamW: Adam's first steps move a weight by about lr whatever its gradient's size,
# so a gradient that is ~0 up to rounding moves by +-lr in one run and -+lr in the other.
TUNE = dict(trainable_blocks=1, epochs=2, batch_size=8, lr=1e-2, head_lr_mult=1.0,
            optimizer="sgd")
NO_AUGMENT = dict(crop_scale_min=1.0)  # random crops would differ between the two runs


def write_params(project: Path, **overrides: dict | str) -> None:
    """project/params.yaml: the committed params with keys or whole sections overridden."""
    params = committed_params()
    for key, value in overrides.items():
        params[key] = {**params[key], **value} if isinstance(value, dict) else value
    project.mkdir(parents=True, exist_ok=True)
    (project / "params.yaml").write_text(yaml.safe_dump(params))


def stage_command(script: str, *args: str) -> list[str]:
    return [sys.executable, str(REPO_ROOT / "src" / "stages" / script), *args]


def run_stage(project: Path, script: str, nproc: int, *args: str,
              **overrides: dict | str) -> subprocess.CompletedProcess:
    """Run src/stages/<script> in `project` with params.yaml's keys or sections overridden."""
    write_params(project, **{**overrides, "distributed": {"nproc_per_node": nproc}})
    return subprocess.run(stage_command(script, *args), cwd=project, capture_output=True,
                          text=True, timeout=600)


def run_two_nodes(tmp_path: Path, script: str, *args: str, node1_threads: int = 1,
                  **overrides: dict | str) -> list[subprocess.CompletedProcess]:
    """Two launchers on 127.0.0.1 as nodes 0 and 1 (one process each), each in its own
    project folder as on its own machine; `{node}` in `args` becomes that folder."""
    with socket.socket() as probe:  # a free port for node 0's rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launchers = []
    for rank in (0, 1):
        # torchrun sets OMP_NUM_THREADS only above 1 process per node
        env = {**os.environ, "OMP_NUM_THREADS": str(node1_threads if rank else 1)}
        node = tmp_path / f"node{rank}"
        write_params(node, **overrides, distributed={
            "nproc_per_node": 1, "nnodes": 2, "node_rank": rank,
            "rdzv_endpoint": f"127.0.0.1:{port}"})
        launchers.append(subprocess.Popen(
            stage_command(script, *(arg.replace("{node}", str(node)) for arg in args)),
            cwd=node, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for launcher in launchers:
        out, err = launcher.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(launcher.args, launcher.returncode, out, err))
    return results


def test_cpu_and_auto_without_a_gpu_choose_the_cpu() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_names_the_fix() -> None:
    with pytest.raises(ParamsError, match="device: auto"):
        resolve_device("cuda")


def test_a_batch_the_workers_cannot_share_equally_is_refused(probed, tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="multiple of distributed.nnodes x nproc_per_node"):
        finetune_full(FinetunePaths(probed["prepared"], probed["head"], tmp_path / "model.pt",
                                    tmp_path / "m.json", tmp_path / "history.csv"),
                      Recipe("partial", LITE0,
                             FinetuneParams(batch_size=8)), ranks=Ranks(rank=0, world=3))


@pytest.mark.slow  # torchrun with two workers
@pytest.mark.parametrize("runtime", ["torch", "openvino"])
def test_two_workers_extract_the_same_features_as_one(probed, tmp_path: Path,
                                                      runtime: str) -> None:
    # Batches of 4: the 18 train images make 5 batches, 3 for rank 0 and 2 for rank 1.
    # torchrun gives each worker one thread; oneDNN's sums depend on the thread count
    # (by up to ~1e-5 here), so the one-process run gets one thread too.
    single = tmp_path / "single"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        extract(prepared_dir=probed["prepared"], features_dir=single,
                backbone_name=LITE0.name, pretrained=LITE0.pretrained, weights=None,
                input_size=LITE0.input_size, batch_size=4, runtime=runtime)
    finally:
        torch.set_num_threads(threads)
    result = run_stage(tmp_path / "project", "extract.py", 2, "--prepared-dir",
                       str(probed["prepared"]), "--features-dir", str(tmp_path / "two"),
                       extract={"batch_size": 4, "runtime": runtime},
                       backbone={"input_size": LITE0.input_size})
    assert result.returncode == 0, result.stderr
    for split in ("train", "val", "test"):
        one, two = load_split(single, split), load_split(tmp_path / "two", split)
        assert np.array_equal(one.image_ids, two.image_ids)
        assert np.array_equal(one.labels, two.labels)
        assert np.array_equal(one.features, two.features), (
            f"{split}: max |diff| {np.abs(one.features - two.features).max()}")
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in single.iterdir())


@pytest.mark.slow  # torchrun with two workers
def test_two_workers_fine_tune_like_one_process(probed, tmp_path: Path) -> None:
    single = tmp_path / "single"
    single.mkdir()
    finetune_full(FinetunePaths(probed["prepared"], probed["head"], single / "model.pt",
                                single / "m.json", single / "history.csv"),
                  Recipe("partial", LITE0,
                         FinetuneParams(**TUNE), AugmentParams(**NO_AUGMENT)))
    two = tmp_path / "two"
    result = run_stage(two, "finetune_full.py", 2, "--prepared-dir", str(probed["prepared"]),
                       "--head", str(probed["head"]), "--model", str(two / "model.pt"),
                       "--metrics", str(two / "m.json"), "--history", str(two / "history.csv"),
                       "--checkpoint-dir", str(two / "checkpoints"),
                       finetune_full=TUNE, augment=NO_AUGMENT, freeze="partial",
                       backbone={"input_size": LITE0.input_size})
    assert result.returncode == 0, result.stderr
    assert "on 2 processes" in result.stderr

    one_history, two_history = (pd.read_csv(d / "history.csv") for d in (single, two))
    assert list(two_history["epoch"]) == [0, 1, 2]
    assert list(one_history["val_accuracy"]) == list(two_history["val_accuracy"])
    for column in ("train_loss", "val_loss"):
        np.testing.assert_allclose(two_history[column][1:], one_history[column][1:],
                                   rtol=LOSS_TOLERANCE)
    one_state = load_model(single / "model.pt")[0].state_dict()
    two_state = load_model(two / "model.pt")[0].state_dict()
    differences = {key: (one_state[key] - two_state[key]).abs().max().item()
                   for key in one_state if one_state[key].is_floating_point()}
    assert max(differences.values()) < WEIGHT_TOLERANCE, max(differences.items(),
                                                              key=lambda kv: kv[1])
    assert pd.read_json(two / "m.json", typ="series")["best_epoch"] > 0  # trained weights
    assert not (two / "checkpoints").exists()  # rank 0 removed them once done


def assert_same_features(one: Path, other: Path) -> None:
    for split in ("train", "val", "test"):
        a, b = load_split(one, split), load_split(other, split)
        assert np.array_equal(a.image_ids, b.image_ids) and np.array_equal(a.labels, b.labels)
        assert np.array_equal(a.features, b.features), (
            f"{split}: max |diff| {np.abs(a.features - b.features).max()}")


@pytest.mark.slow  # two torchrun launchers
def test_two_nodes_extract_the_same_features_as_one_process(probed, tmp_path: Path) -> None:
    single = tmp_path / "single"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # each node's one worker runs on one thread
    try:
        extract(prepared_dir=probed["prepared"], features_dir=single,
                backbone_name=LITE0.name, pretrained=LITE0.pretrained, weights=None,
                input_size=LITE0.input_size, batch_size=4)
    finally:
        torch.set_num_threads(threads)
    args = ("--prepared-dir", str(probed["prepared"]), "--features-dir", "{node}/features",
            "--cache-dir", "{node}/cache")
    params = dict(extract={"batch_size": 4, "runtime": "torch"},
                  backbone={"input_size": LITE0.input_size})
    node0, node1 = run_two_nodes(tmp_path, "extract.py", *args, **params)
    assert node0.returncode == 0 and node1.returncode == 0, node0.stderr + node1.stderr
    assert "extract on 2 processes (1 here)" in node0.stderr
    assert_same_features(single, tmp_path / "node0" / "features")
    assert not (tmp_path / "node1" / "features").exists()  # node 0 alone writes

    # Again: node 0's cache now holds every image, node 1's is empty; node 0's decides.
    shutil.rmtree(tmp_path / "node0" / "features")
    node0, node1 = run_two_nodes(tmp_path, "extract.py", *args, **params)
    assert node0.returncode == 0 and node1.returncode == 0, node0.stderr + node1.stderr
    assert "30 of 30 images have cached features" in node0.stderr
    assert_same_features(single, tmp_path / "node0" / "features")


@pytest.mark.slow  # two torchrun launchers
def test_nodes_with_unlike_thread_counts_are_refused_on_both(probed, tmp_path: Path) -> None:
    nodes = run_two_nodes(tmp_path, "extract.py", "--prepared-dir", str(probed["prepared"]),
                          "--features-dir", "{node}/features", node1_threads=2,
                          extract={"batch_size": 4, "runtime": "torch"},
                          backbone={"input_size": LITE0.input_size})
    for node in nodes:
        assert node.returncode != 0
        assert "the images, runtime or thread count differs between the workers" in node.stderr
        assert "thread count (OMP_NUM_THREADS)" in node.stderr


@pytest.mark.slow  # two torchrun launchers
def test_two_nodes_fine_tune_like_one_process(probed, tmp_path: Path) -> None:
    single = tmp_path / "single"
    single.mkdir()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        finetune_full(FinetunePaths(probed["prepared"], probed["head"], single / "model.pt",
                                    single / "m.json", single / "history.csv"),
                      Recipe("partial", LITE0, FinetuneParams(**TUNE),
                             AugmentParams(**NO_AUGMENT)))
    finally:
        torch.set_num_threads(threads)
    outputs = ("--model", "{node}/model.pt", "--metrics", "{node}/m.json",
               "--history", "{node}/history.csv")
    nodes = run_two_nodes(tmp_path, "finetune_full.py", "--prepared-dir",
                          str(probed["prepared"]), "--head", str(probed["head"]), *outputs,
                          finetune_full=TUNE, augment=NO_AUGMENT, freeze="partial",
                          backbone={"input_size": LITE0.input_size})
    assert all(node.returncode == 0 for node in nodes), nodes[0].stderr + nodes[1].stderr
    node0 = tmp_path / "node0"
    assert (pd.read_csv(node0 / "history.csv")["val_accuracy"].tolist()
            == pd.read_csv(single / "history.csv")["val_accuracy"].tolist())
    one_state = load_model(single / "model.pt")[0].state_dict()
    two_state = load_model(node0 / "model.pt")[0].state_dict()
    worst = max((one_state[key] - two_state[key]).abs().max().item()
                for key in one_state if one_state[key].is_floating_point())
    assert worst < WEIGHT_TOLERANCE
    assert not (tmp_path / "node1" / "model.pt").exists()
