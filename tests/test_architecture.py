"""Guard-rails of the layout in docs/ARCHITECTURE.md: imports flow one way and never in a circle, the method
table is the only place that asks which method a model is and no method is named outside methods/, the sampler
registry is the only place that knows scheduler classes, and modules and functions stay short enough to read."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lower layers never import higher ones; within a layer, only a package's own modules import each other.
LAYERS = {
    "anodiff": 0, "anodiff.errors": 0, "anodiff.progress": 0,
    "anodiff.outputs": 1, "anodiff.formats": 1,
    "anodiff.config": 2, "anodiff.io": 2, "anodiff.distributed": 2, "anodiff.figures": 2,
    "anodiff.data": 3, "anodiff.weights": 3,
    "anodiff.models": 4, "anodiff.diffusion": 4, "anodiff.evaluation": 4, "anodiff.prepare": 4,
    "anodiff.training": 5, "anodiff.inference": 5, "anodiff.modelfolder": 5,
    "anodiff.methods": 6, "anodiff.runtime": 6,
    "anodiff.jobs": 7,
    "anodiff.cli": 8,
}
# Longer than MAX_FUNCTION_LINES, and why.
LONG_FUNCTIONS = {
    # A CLI command: its Typer signature declares each of its eleven options with the help text.
    "anodiff/cli/main.py:detect",
}
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60


def sources(root: Path = ROOT) -> list[Path]:
    return sorted((root / "anodiff").rglob("*.py"))


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> tuple[int, str]:
    """(layer, the LAYERS key it falls under) of a module of anodiff."""
    key = max((k for k in LAYERS if module == k or module.startswith(k + ".")), key=len)
    return LAYERS[key], key


@functools.cache
def module_names(root: Path = ROOT) -> frozenset[str]:
    return frozenset(module_name(p, root) for p in sources(root))


def imported(path: Path, root: Path = ROOT) -> set[str]:
    """The anodiff modules ``path`` imports, anywhere in it (a function's deferred import counts too)."""
    modules = module_names(root)
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("anodiff"):
            for alias in node.names:  # `from anodiff.data import cases` imports the module anodiff.data.cases
                full = f"{node.module}.{alias.name}"
                names.add(full if full in modules else node.module)
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("anodiff")}
    return names


def import_circles(root: Path = ROOT) -> list[list[str]]:
    """The strongly connected components of more than one module in the import graph (Tarjan)."""
    graph = {module_name(p, root): imported(p, root) - {module_name(p, root)} for p in sources(root)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in graph.get(module, ()):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while (top := stack.pop()) != module:
                component.append(top)
            if component:
                circles.append(sorted([module, *component]))

    for module in graph:
        if module not in index:
            visit(module)
    return circles


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


def test_no_module_imports_itself_in_a_circle():
    assert import_circles() == []


def test_the_circle_finder_finds_one(tmp_path):
    (tmp_path / "anodiff").mkdir()
    (tmp_path / "anodiff" / "a.py").write_text("from anodiff.b import x\n", encoding="utf-8")
    # deferred: still a circle
    (tmp_path / "anodiff" / "b.py").write_text("def f():\n    from anodiff import a\n", encoding="utf-8")
    (tmp_path / "anodiff" / "c.py").write_text("from anodiff.a import y\n", encoding="utf-8")
    assert import_circles(tmp_path) == [["anodiff.a", "anodiff.b"]]


# Method names outside methods/ that mean something else: the sampler named after DDPM's reverse chain, and the
# config's default model kind.
OTHER_MEANINGS = {"anodiff/diffusion/sampler.py", "anodiff/config/sections.py"}


def test_no_method_is_named_outside_the_methods():
    from anodiff.methods import METHODS

    offenders = []
    for path in sources():
        name = path.relative_to(ROOT).as_posix()
        if name.startswith("anodiff/methods/") or name in OTHER_MEANINGS:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in METHODS:
                offenders.append(f"{name}:{node.lineno} {node.value!r}")
    assert not offenders


def test_model_kind_is_compared_only_in_the_method_table():
    pattern = re.compile(r"""kind\s*(==|!=|\bin\b)|(==|!=)\s*["'](ddpm|ldm|segdiff)["']""")
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in sources() if p != ROOT / "anodiff/methods/__init__.py"
                 for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
                 if "model.kind" in line and pattern.search(line)]
    assert not offenders


def test_scheduler_classes_are_known_only_to_the_sampler_registry():
    pattern = re.compile(r"isinstance\([^)]*Scheduler")
    offenders = [str(p.relative_to(ROOT)) for p in sources() if pattern.search(p.read_text(encoding="utf-8"))]
    assert not offenders
    uses = [p.relative_to(ROOT).as_posix() for p in sources()
            if re.search(r"\bDD[IP]MScheduler\b", p.read_text(encoding="utf-8"))]
    assert uses == ["anodiff/diffusion/sampler.py"]


def test_modules_and_functions_are_short():
    long_modules, long_functions = [], []
    for path in sources():
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(str(path.relative_to(ROOT)))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{path.relative_to(ROOT).as_posix()}:{node.name}"
                if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES and name not in LONG_FUNCTIONS:
                    long_functions.append(f"{name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long_modules and not long_functions, (long_modules, long_functions)


def text_io_without_encoding(tree: ast.AST) -> list[int]:
    """Lines of ``path.read_text()``, ``.write_text()`` and text-mode ``.open()`` calls that name no encoding."""
    lines = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("read_text", "write_text", "open")):
            continue
        if node.func.attr == "open":
            if isinstance(node.func.value, ast.Name) and node.func.value.id in ("os", "gzip", "nib", "Image"):
                continue  # not text I/O
            mode = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else "r"
            if "b" in str(mode):
                continue
        positional = node.func.attr == "read_text" and node.args  # read_text("utf-8")
        if not positional and not any(k.arg == "encoding" for k in node.keywords):
            lines.append(node.lineno)
    return lines


def test_every_text_file_is_read_and_written_as_utf8():
    """Under an ASCII locale (a cluster's LANG=C without Python's UTF-8 mode) the locale's encoding would fail
    on the card's or a report's first non-ASCII character."""
    files = [p for folder in ("anodiff", "tests", "examples", "benchmarks")
             for p in sorted((ROOT / folder).rglob("*.py"))]
    offenders = {str(p.relative_to(ROOT)): found for p in files
                 if (found := text_io_without_encoding(ast.parse(p.read_text(encoding="utf-8"))))}
    assert not offenders
    assert text_io_without_encoding(ast.parse("Path('a').write_text('é')\nPath('a').open('rb')")) == [1]
