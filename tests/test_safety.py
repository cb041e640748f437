"""Loading files never executes code from them."""

from __future__ import annotations

import ast

from conftest import REPO_ROOT


def _torch_load_calls():
    for path in sorted((REPO_ROOT / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "load" and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "torch"):
                yield path.relative_to(REPO_ROOT), node


def test_every_torch_load_passes_weights_only_true() -> None:
    calls = list(_torch_load_calls())
    assert len(calls) >= 4  # weights, head, model, checkpoint: the scan sees them
    for path, call in calls:
        keywords = {k.arg: k.value for k in call.keywords}
        assert "weights_only" in keywords, f"{path}:{call.lineno} torch.load without it"
        assert isinstance(keywords["weights_only"], ast.Constant)
        assert keywords["weights_only"].value is True, f"{path}:{call.lineno}"


def test_numpy_archives_are_read_without_pickle() -> None:
    for path in sorted((REPO_ROOT / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "load" and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "np"):
                keywords = {k.arg: k.value for k in node.keywords}
                assert getattr(keywords.get("allow_pickle"), "value", None) is False, (
                    f"{path}:{node.lineno}")
