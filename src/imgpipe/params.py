"""params.yaml against a typed schema: the shared part every stage reads.

Each section of params.yaml is a frozen dataclass; the field comments are the schema's
documentation, params.yaml's comments are the user's. An unknown key, a value of the
wrong type or outside its allowed set stops the stage with one line that names the key,
the value and the fix (the closest known key, or the allowed values).

The schema follows the stages, so that an edit re-runs only the stages that read what it
changes: this module holds the loader and the keys several stages read (the top-level
keys, `backbone`, `distributed`); each stage's own sections are in its own module
(`params_prepare`, `params_extract`, `params_head`, `params_finetune`,
`params_evaluate`). A stage loads its sections with `load_section`. The whole file,
checks across sections included, is validated by `imgpipe.params_check` before every
stage does any work (`imgpipe.stage.run`).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from imgpipe.errors import ParamsError

FreezeMode = Literal["all", "partial", "none"]
SelectBy = Literal["accuracy", "balanced_accuracy", "macro_f1"]  # scores.scores() keys
ClassBalance = Literal["none", "weights"]
Device = Literal["auto", "cpu", "cuda"]
PARAMS_FILE = Path("params.yaml")
_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false",
               str: "a non-empty string"}
_Section = TypeVar("_Section")


@dataclasses.dataclass(frozen=True)
class RunParams:
    """The top-level keys of params.yaml."""

    freeze: FreezeMode
    device: Device = "auto"  # where the networks run
    select_by: SelectBy = "accuracy"  # val score that picks the probe's C and the epoch
    class_balance: ClassBalance = "none"  # weights: loss weighted by inverse class frequency


@dataclasses.dataclass(frozen=True)
class BackboneParams:
    name: str  # efficientnet_lite0..2 or a torchvision classification model
    pretrained: bool  # False: random init
    weights: str | None = None  # optional local state-dict file
    input_size: int | None = None  # pixels fed to the network; None: the backbone's own

    def __post_init__(self) -> None:
        if self.input_size is not None:
            check_range("backbone.input_size", self.input_size, 32, 1024)


@dataclasses.dataclass(frozen=True)
class DistributedParams:
    nproc_per_node: int = 1  # torchrun workers per machine for extract and finetune_full
    nnodes: int = 1  # machines taking part; 1 with nproc_per_node 1: no torchrun
    node_rank: int = 0  # this machine's place; node 0 runs dvc repro and writes the outputs
    rdzv_endpoint: str | None = None  # host:port on node 0 that every node reaches

    def __post_init__(self) -> None:
        check_range("distributed.nproc_per_node", self.nproc_per_node, 1, 1024)
        check_range("distributed.nnodes", self.nnodes, 1, 1024)
        check_range("distributed.node_rank", self.node_rank, 0, self.nnodes - 1)
        if self.nnodes > 1 and self.rdzv_endpoint is None:
            raise ParamsError(f"distributed.nnodes: {self.nnodes} needs "
                              "distributed.rdzv_endpoint; set it to host:port of node 0, "
                              "reachable from every node (e.g. 10.0.0.5:29400)")
        if self.rdzv_endpoint is not None:
            host, _, port = self.rdzv_endpoint.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ParamsError(f"distributed.rdzv_endpoint: {self.rdzv_endpoint!r} is not "
                                  "host:port; use node 0's address and a free port, e.g. "
                                  "10.0.0.5:29400")

    @property
    def world(self) -> int:
        """Processes over all machines."""
        return self.nnodes * self.nproc_per_node


def read_params_file(path: Path | str = PARAMS_FILE) -> dict[str, Any]:
    """params.yaml as a mapping, unvalidated.

    Raises:
        ParamsError: the file is missing or is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path} not found: run the stage from the repository root")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of keys, got {raw!r}")
    return raw


def load_section(cls: type[_Section], key: str | None,
                 path: Path | str = PARAMS_FILE) -> _Section:
    """One section of params.yaml, validated: `key` names it; None reads the top-level
    keys that are `cls`'s fields (`RunParams`)."""
    return build_section(cls, key, read_params_file(path))


def build_section(cls: type[_Section], key: str | None, raw: dict[str, Any]) -> _Section:
    """`load_section` on an already-read mapping."""
    if key is None:
        names = {field.name for field in dataclasses.fields(cls)}
        return build_dataclass(cls, {k: v for k, v in raw.items() if k in names}, prefix="")
    return build_dataclass(cls, raw.get(key, {}), prefix=f"{key}.")


def flatten(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: the names DVC and MLflow show."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def known_key_error(key: str, known: list[str], prefix: str = "") -> ParamsError:
    """An unknown key, with the closest known one."""
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f"did you mean {prefix}{close[0]}?" if close else f"known keys: {', '.join(known)}"
    return ParamsError(f"{prefix}{key}: unknown key; {hint}")


def build_dataclass(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "params.yaml"
    if not isinstance(raw, dict):
        raise ParamsError(f"{where}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {field.name: field for field in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise known_key_error(key, list(fields), prefix)
    values = {}
    for name, field in fields.items():
        key = f"{prefix}{name}"
        if name not in raw:
            if (field.default is not dataclasses.MISSING
                    or field.default_factory is not dataclasses.MISSING):
                continue
            raise ParamsError(f"{key}: missing; add it to params.yaml (see the README)")
        values[name] = _coerce(key, raw[name], hints[name])
    return cls(**values)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value, prefix=f"{key}.")
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ParamsError(f"{key}: {value!r} is not allowed; use one of "
                              f"{', '.join(map(str, allowed))}")
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        inner = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{key}: expected a mapping, got {value!r}")
        key_type, value_type = typing.get_args(hint)
        return {_coerce(f"{key} key", k, key_type): _coerce(f"{key}.{k}", v, value_type)
                for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    return _scalar(key, value, hint)


def _scalar(key: str, value: Any, hint: type) -> Any:
    # YAML reads `1e-3` as a string and `true` as a bool: be exact about both.
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and not isinstance(value, bool):
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    if hint is str and isinstance(value, str) and value.strip():
        return value
    raise ParamsError(f"{key}: expected {_TYPE_NAMES[hint]}, got {value!r}")


def check_range(key: str, value: float, low: float, high: float, closed: bool = True) -> None:
    inside = low <= value <= high if closed else low < value < high
    if not inside:
        bounds = f"[{low:g}, {high:g}]" if closed else f"({low:g}, {high:g})"
        raise ParamsError(f"{key}: {value!r} is out of range; use a value in {bounds}")
