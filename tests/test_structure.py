"""The package's shape, read from its source with ``ast``: imports run one way along the method's
flow (no cycles, nothing imports downstream of itself), a module's dependencies are at its top, and
no function is longer than a reader can hold in view."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "medclipsam"

#: The method's flow (README, "Project layout"), upstream first. A module may import its own layer and the layers above.
LAYERS: list[tuple[str, ...]] = [
    ("vocab", "config", "_utils", "download", "environment", "per_image"),  # words, settings, helpers
    ("data", "metrics"),  # image rule, I/O, data sets, phantom world, converters; the measures
    ("models",),  # weights, CLIP and SAM loading, toy models
    ("losses", "retrieval", "training", "viz", "teaching"),  # tools used by the stages below
    ("finetune", "loss_comparison"),  # stage 1
    ("saliency",),  # stage 2
    ("prompting", "sam_session"),  # stage 3
    # the zero-shot method (and SAM 3 from the text alone); the pipeline of a lesson's world
    ("pipeline", "text_baselines", "worlds"),
    ("weak", "reproduce"),  # stage 4
    ("demo", "widgets", "exercises", "compare", "cli", "__main__"),  # what users run
]

#: Function-local imports that are there on purpose: optional or heavy dependencies that only one
#: path needs (the dense CRF, the widgets' event layer, image-format decoders, matplotlib in a
#: torch-free module, the autograder's notebook runner, transformers for SAM 2 and SAM 3 only)
#: and torch in the torch-free helpers.
ALLOWED_LOCAL = {
    "pydensecrf", "ipyevents", "IPython", "tifffile", "pydicom", "nibabel", "matplotlib",
    "nbformat", "nbclient", "transformers",
}
#: Modules whose local imports are the design: the command line imports each command's modules when
#: it runs (``--help`` stays torch-free); the top-level ``__init__``'s lazy ``__getattr__`` keeps
#: ``import medclipsam`` torch-free. ``TORCH_FREE`` modules import torch only where they need it
#: (the data layer, downloads and the environment report use them without torch).
LOCAL_BY_DESIGN = {"cli", "__init__"}
TORCH_FREE = {"_utils", "environment"}

MAX_FUNCTION_LINES = 120


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        out[name] = ast.parse(path.read_text(), filename=str(path))
    return out


def _layer(module: str) -> int:
    first = module.split(".")[0]
    for rank, names in enumerate(LAYERS):
        if first in names:
            return rank
    raise AssertionError(f"medclipsam.{module} is in no layer of tests/test_structure.py")


def _targets(module: str, node: ast.ImportFrom, known: set[str]) -> list[str]:
    """The package modules an ``ImportFrom`` reaches (names without 'medclipsam.'): the module it
    names, or the submodules it imports from a package (``from . import reference``)."""
    if node.level == 0:
        base = (node.module or "").removeprefix("medclipsam").lstrip(".")
    else:
        package = module.split(".")[:-1]  # a.b.c -> a.b; a.b.__init__ -> a.b
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, *((node.module or "").split(".") if node.module else [])])
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}" if base else alias.name
        out.append(sub if sub in known or f"{sub}.__init__" in known else base)
    return [t for t in out if t]


def _module_level_imports(module: str, tree: ast.Module, known: set[str]) -> list[str]:
    """Package modules imported at module level (``if TYPE_CHECKING`` blocks included)."""
    found = []
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    inside = {id(n) for fn in functions for n in ast.walk(fn)}
    for node in ast.walk(tree):
        if id(node) in inside:
            continue
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("medclipsam")):
            found += _targets(module, node, known)
        elif isinstance(node, ast.Import):
            found += [a.name.removeprefix("medclipsam.") for a in node.names if a.name.startswith("medclipsam.")]
    return found


def _in_functions(tree: ast.Module):
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    yield fn, node


def test_imports_run_one_way_along_the_flow():
    modules = _modules()
    wrong = []
    for name, tree in modules.items():
        if name == "__init__":
            continue
        for target in _module_level_imports(name, tree, set(modules)):
            if target and _layer(target) > _layer(name):
                wrong.append(f"medclipsam.{name} imports medclipsam.{target} (downstream of it)")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, tree in modules.items():
        targets = set()
        for t in _module_level_imports(name, tree, set(modules)):
            # a package import means its __init__
            targets.add(t if t in modules else f"{t}.__init__" if f"{t}.__init__" in modules else t)
        graph[name] = {t for t in targets if t in modules and t != name}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        path.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                cycle = path[path.index(m):] + [m]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if m not in state:
                visit(m)
        path.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)


def test_dependencies_are_imported_at_the_top_of_modules():
    hidden = []
    for name, tree in _modules().items():
        if name in LOCAL_BY_DESIGN:
            continue
        for fn, node in _in_functions(tree):
            if isinstance(node, ast.ImportFrom):
                top = "." if node.level else (node.module or "").split(".")[0]
            else:
                top = node.names[0].name.split(".")[0]
            if top in ALLOWED_LOCAL or (top == "torch" and name in TORCH_FREE):
                continue
            hidden.append(f"medclipsam/{name.replace('.', '/')}.py:{node.lineno} in {fn.name}(): "
                          f"{ast.unparse(node)}")
    assert not hidden, "imports hidden inside functions:\n" + "\n".join(hidden)


def test_no_function_is_longer_than_a_reader_can_follow():
    long = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"medclipsam/{name.replace('.', '/')}.py:{node.lineno} "
                                f"{node.name}(): {n} lines")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)
