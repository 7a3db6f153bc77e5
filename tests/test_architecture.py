"""The package's layering (ARCHITECTURE.md): imports point one way, and nothing forms a cycle.

Every import statement of every module counts, those inside functions included: a lazy import is
still a dependency."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "florence2"

# lowest first; a module may import its own layer and the layers before it, never a later one
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("florence2.errors", "florence2.progress", "florence2.sources")),
    ("config", ("florence2.config", "florence2.layouts", "florence2.coords")),
    ("model", ("florence2.model",)),
    ("weights", ("florence2.weights", "florence2.quantization", "florence2.onnx_model")),
    ("generation", ("florence2.generation",)),
    (
        "inputs and outputs",
        (
            "florence2.tokenizer",
            "florence2.image",
            "florence2.tasks",
            "florence2.parsing",
            "florence2.scoring",
            "florence2.visualize",
            "florence2.convert",
        ),
    ),
    ("processor", ("florence2.processor",)),
    ("pipeline", ("florence2.pipeline",)),
    ("data", ("florence2.data",)),
    ("label", ("florence2.label",)),
    ("evaluation", ("florence2.eval",)),
    ("applications", ("florence2.train", "florence2.serve", "florence2.export", "florence2.refine")),
    ("command line", ("florence2.cli",)),
    ("package", ("florence2",)),
]

# dependencies the layer order alone would allow but the design rules out
FORBIDDEN = {
    # generation drives any model through florence2.generation.Seq2SeqDecoder
    "florence2.generation": ("florence2.model", "florence2.weights", "florence2.quantization"),
}

# optional dependencies that ``import florence2`` (and listing the tasks) must never import
EXTRAS = (
    "torch",
    "fastapi",
    "uvicorn",
    "prometheus_client",
    "pycocotools",
    "pycocoevalcap",
    "transformers",
    "ray",
    "onnxruntime",
    "av",
    "pyarrow",
    "tqdm",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports, anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            if target.split(".")[0] != "florence2":
                continue
            while target not in modules and "." in target:
                target = target.rpartition(".")[0]
            if target != name and target in modules:
                found.add(target)
    # ``from florence2.x import y`` also lists ``florence2.x``'s parents: keep the most specific
    return {t for t in found if not any(o != t and o.startswith(t + ".") for o in found) or t == "florence2"}


def graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imported(name, path, modules) - {"florence2"} for name, path in modules.items()}


def layer_of(name: str) -> int:
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if name == prefix or name.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    if best is None:
        raise AssertionError(f"{name} is in no layer: add it to LAYERS here and to ARCHITECTURE.md")
    return best[0]


def test_every_module_has_a_layer():
    for name in all_modules():
        layer_of(name)


def test_imports_point_down_the_layers():
    upward = []
    for name, targets in graph().items():
        for target in targets:
            if layer_of(target) > layer_of(name):
                upward.append(f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})")
            if any(target == f or target.startswith(f + ".") for f in FORBIDDEN.get(name, ())):
                upward.append(f"{name} imports {target}, which the design rules out")
    assert not upward, "\n".join(sorted(upward))


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycles():
    cycle = find_cycle(graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_checks_catch_an_upward_import_and_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert layer_of("florence2.model.davit") < layer_of("florence2.weights") < layer_of("florence2.pipeline")
    assert layer_of("florence2.serve.app") > layer_of("florence2.pipeline")


@pytest.mark.parametrize(
    "code",
    [
        "import florence2",
        "from florence2.cli import main; import io, contextlib\n"
        "with contextlib.redirect_stdout(io.StringIO()): main(['tasks'])",
    ],
)
def test_importing_the_package_and_listing_tasks_load_no_extras(code):
    check = f"{code}\nimport sys\nprint(','.join(m for m in {EXTRAS!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""
