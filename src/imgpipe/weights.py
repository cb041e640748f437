"""Loading state dicts safely (weights_only) and tolerantly (prefixes, classifier keys)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from imgpipe.errors import BackboneError

_logger = logging.getLogger(__name__)
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")  # common checkpoint layouts
_PREFIXES = ("module.", "_orig_mod.")  # left by DataParallel/DDP and torch.compile


def load_state_dict_file(path: Path, what: str) -> dict[str, torch.Tensor]:
    """Read a state dict with `weights_only=True`, unwrapping `{"state_dict": ...}` layouts.

    Args:
        path: the .pt/.pth file.
        what: the param or backbone it is for, named in errors.
    """
    if not path.is_file():
        raise BackboneError(f"{what}: weights file {str(path)!r} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling refused, truncated file, not a torch file
        raise BackboneError(f"{what}: cannot load {path} as a state dict with "
                            f"weights_only=True ({error}); save it with "
                            "torch.save(model.state_dict(), path)") from error
    for key in _WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise BackboneError(f"{what}: {path} does not hold a state dict of tensors")
    return state


def load_weights_into(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into `module`, tolerating what checkpoints commonly carry extra.

    Key prefixes from DataParallel/DDP/compile are stripped; keys the module does not have
    (the checkpoint's own classifier) are dropped and reported. Missing keys or a shape
    mismatch in the module's own parameters are errors: they would silently leave
    random weights in the backbone.
    """
    for prefix in _PREFIXES:
        if state and all(key.startswith(prefix) for key in state):
            state = {key[len(prefix):]: value for key, value in state.items()}
            _logger.info("stripped the %r prefix from the keys of %s", prefix, source)
    own = module.state_dict()
    missing = [key for key in own if key not in state]
    mismatched = [f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}"
                  for key in own if key in state and state[key].shape != own[key].shape]
    if missing or mismatched:
        raise BackboneError(
            f"backbone.weights: {source} does not fit the backbone: "
            + (f"{len(missing)} missing keys (first: {', '.join(missing[:3])}) " if missing
               else "") + (f"shape mismatch: {'; '.join(mismatched[:3])}" if mismatched else "")
            + "; check backbone.name matches the architecture the file was saved from")
    dropped = sorted(key for key in state if key not in own)
    if dropped:
        _logger.info("ignored %d keys of %s that the backbone does not use (its classifier): "
                     "%s", len(dropped), source, ", ".join(dropped[:6]))
    module.load_state_dict({key: state[key] for key in own})
