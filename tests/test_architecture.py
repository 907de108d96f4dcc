"""Guard-rails of the layout in docs/ARCHITECTURE.md: imports flow one way, the method table is the only
place that asks which method a model is, the sampler registry the only place that knows scheduler classes,
and modules and functions stay short enough to read."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lower layers never import higher ones; within a layer, only a package's own modules import each other.
LAYERS = {
    "anodiff": 0, "anodiff.errors": 0, "anodiff.progress": 0,
    "anodiff.outputs": 1,
    "anodiff.config": 2, "anodiff.io": 2, "anodiff.distributed": 2, "anodiff.figures": 2,
    "anodiff.data": 3, "anodiff.weights": 3,
    "anodiff.models": 4, "anodiff.diffusion": 4, "anodiff.evaluation": 4, "anodiff.prepare": 4,
    "anodiff.training": 5, "anodiff.inference": 5, "anodiff.modelfolder": 5,
    "anodiff.methods": 6,
    "anodiff.recipes": 7,
    "anodiff.cli": 8,
}
# Longer than MAX_FUNCTION_LINES, and why.
LONG_FUNCTIONS = {
    # A CLI command: its Typer signature declares each of its eleven options with the help text.
    "cli/main.py:detect",
}
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


def sources() -> list[Path]:
    return sorted([*(ROOT / "anodiff").rglob("*.py"), *(ROOT / "cli").glob("*.py")])


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "cli":
        parts = ["anodiff", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> tuple[int, str]:
    """(layer, the LAYERS key it falls under) of a module of anodiff."""
    key = max((k for k in LAYERS if module == k or module.startswith(k + ".")), key=len)
    return LAYERS[key], key


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("anodiff"):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("anodiff")}
    return names


def test_every_module_has_a_layer():
    for path in sources():
        assert layer_of(module_name(path)), path


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_flow_one_way(path):
    own_layer, own_key = layer_of(module_name(path))
    for name in imported(path):
        layer, key = layer_of(name)
        if key == "anodiff" and name == "anodiff":  # the package root: its version only
            continue
        assert layer < own_layer or (layer == own_layer and key == own_key), (
            f"{module_name(path)} (layer {own_layer}) imports {name} (layer {layer}) against the flow")


def test_model_kind_is_compared_only_in_the_method_table():
    pattern = re.compile(r"""kind\s*(==|!=|\bin\b)|(==|!=)\s*["'](ddpm|ldm|segdiff)["']""")
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in sources() if p != ROOT / "anodiff/methods/__init__.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if "model.kind" in line and pattern.search(line)]
    assert not offenders


def test_scheduler_classes_are_known_only_to_the_sampler_registry():
    pattern = re.compile(r"isinstance\([^)]*Scheduler")
    offenders = [str(p.relative_to(ROOT)) for p in sources() if pattern.search(p.read_text())]
    assert not offenders
    uses = [p.relative_to(ROOT).as_posix() for p in sources() if re.search(r"\bDD[IP]MScheduler\b", p.read_text())]
    assert uses == ["anodiff/diffusion/sampler.py"]


def test_modules_and_functions_are_short():
    long_modules, long_functions = [], []
    for path in sources():
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(str(path.relative_to(ROOT)))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{path.relative_to(ROOT).as_posix()}:{node.name}"
                if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES and name not in LONG_FUNCTIONS:
                    long_functions.append(f"{name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long_modules and not long_functions, (long_modules, long_functions)
