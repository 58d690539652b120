"""The model packages import neither hypothesis nor pytest (architecture §1)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "kvmfuzz"
MODEL = ("sched", "host", "virt", "x86")


@pytest.mark.parametrize("path", sorted(p for pkg in MODEL for p in (ROOT / pkg).glob("*.py")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_model_module_imports_no_hypothesis_or_pytest(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            assert name.split(".")[0] not in ("hypothesis", "pytest"), f"{path} imports {name}"


def test_model_packages_exist() -> None:
    for pkg in MODEL:
        assert list((ROOT / pkg).glob("*.py")), pkg
