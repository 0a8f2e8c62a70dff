"""The package's shape, read from its source with ``ast``: imports run one way along the method's
flow (no cycles, nothing imports downstream of itself), a module's dependencies are at its top, and
no function is longer than a reader can hold in view, no module of the method's core is longer than
a reader can change in one sitting, and gScoreCAM's ``k`` is decided in one place."""

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
    ("coarse", "prompting", "sam_session", "working_size"),  # stage 3; large images at a working size
    # the zero-shot method (and SAM 3 from the text alone), folders of images, scoring against
    # ground truth; the pipeline of a lesson's world
    ("pipeline", "folder_runs", "evaluation", "text_baselines", "worlds"),
    ("segmenter", "weak", "reproduce"),  # stage 4
    # what users run; the prompt explorer: its images and builders, its state, its model, its view
    ("demo", "explorer_sources", "explorer_state", "explorer_model", "widgets", "exercises",
     "compare", "cli", "__main__"),
]

#: Function-local imports that are there on purpose: optional or heavy dependencies that only one
#: path needs (the dense CRF, the widgets' event layer, image-format decoders, matplotlib in a
#: torch-free module, the autograder's notebook runner, transformers for SAM 2 and SAM 3 only)
#: and torch in the torch-free helpers.
ALLOWED_LOCAL = {
    "pydensecrf", "ipyevents", "IPython", "tifffile", "pydicom", "nibabel", "matplotlib",
    "nbformat", "nbclient", "transformers",
}
#: Modules (or packages: each of their modules) whose local imports are the design: the command line
#: (the ``cli`` package) imports each command's modules when it runs (``--help`` stays torch-free);
#: the top-level ``__init__``'s lazy ``__getattr__`` keeps ``import medclipsam`` torch-free.
#: ``TORCH_FREE`` modules import torch only where they need it (the data layer, downloads and the
#: environment report use them without torch).
LOCAL_BY_DESIGN = {"cli", "__init__"}
TORCH_FREE = {"_utils", "environment"}

MAX_FUNCTION_LINES = 120
#: The method's core (issue 25): each of these modules (a package: each of its modules) stays short.
CORE = ("saliency", "coarse", "prompting", "sam_session", "pipeline", "losses", "segmenter", "weak")
MAX_CORE_MODULE_LINES = 500
#: The one home of gScoreCAM's k: PipelineConfig.k, its world defaults and default_k().
K_HOME = "config"


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
        if name in LOCAL_BY_DESIGN or name.split(".")[0] in LOCAL_BY_DESIGN:
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


def test_no_module_of_the_method_core_is_longer_than_a_sitting():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        n = len(path.read_text().splitlines())
        if name.split(".")[0] in CORE and n > MAX_CORE_MODULE_LINES:
            long.append(f"medclipsam/{name.replace('.', '/')}.py: {n} lines")
    assert not long, f"method-core modules over {MAX_CORE_MODULE_LINES} lines:\n" + "\n".join(long)


def test_the_explorer_model_needs_no_widgets():
    """The prompt explorer's model, and every package module it imports, imports no widget library
    at module level: ``medclipsam.widgets`` is its view, not its dependency."""
    modules = _modules()
    seen: set[str] = set()
    todo, found = ["explorer_model"], []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        tree = modules[name]
        inside = {id(n) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                  for n in ast.walk(fn)}
        for node in ast.walk(tree):
            if id(node) in inside:
                continue
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                tops = [(node.module or "").split(".")[0]]
            else:
                continue
            found += [f"medclipsam.{name} imports {t}" for t in tops if t in ("ipywidgets", "ipyevents")]
        for target in _module_level_imports(name, tree, set(modules)):
            todo += [m for m in (target, f"{target}.__init__") if m in modules]
    assert "widgets" not in seen and not found, "\n".join(found) or "explorer_model imports widgets"


def _is_number(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) in (int, float)


def _k_decisions(tree: ast.Module) -> list[tuple[int, str]]:
    """Places that decide gScoreCAM's k on their own: a number as the default of a parameter
    ``k``, as ``"k"`` in a dict or as ``k=`` in a call; a module-level constant named like a k;
    a branch on gScoreCAM's name."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            args = node.args
            pos = args.posonlyargs + args.args
            pairs = list(zip(pos[len(pos) - len(args.defaults):], args.defaults))
            pairs += list(zip(args.kwonlyargs, args.kw_defaults))
            found += [(node.lineno, f"default k={ast.unparse(d)}") for a, d in pairs
                      if a.arg == "k" and _is_number(d)]
        elif isinstance(node, ast.Dict):
            found += [(node.lineno, f'"k": {ast.unparse(v)}') for key, v in zip(node.keys, node.values)
                      if isinstance(key, ast.Constant) and key.value == "k" and _is_number(v)]
        elif isinstance(node, ast.Call):
            found += [(node.lineno, f"k={ast.unparse(kw.value)}") for kw in node.keywords
                      if kw.arg == "k" and _is_number(kw.value)]
        elif isinstance(node, ast.Compare):
            parts = [node.left, *node.comparators]
            if any(isinstance(p, ast.Constant) and p.value == "gscorecam" for p in parts):
                found.append((node.lineno, f"branch on the name: {ast.unparse(node)}"))
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            found += [(node.lineno, f"constant {t.id}") for t in targets
                      if isinstance(t, ast.Name) and (t.id.endswith("_K") or t.id == "K")]
    return found


def test_gscorecam_k_is_decided_in_one_place():
    """``PipelineConfig.k`` (None: :func:`medclipsam.config.default_k` of the pipeline's world) is
    the one home of k; everything else reads it. The autograder (``exercises``) is left out: its
    small k sizes the checks of a student's own functions, not the method's setting."""
    elsewhere = []
    for name, tree in _modules().items():
        if name == K_HOME or name.startswith("exercises"):
            continue
        elsewhere += [f"medclipsam/{name.replace('.', '/')}.py:{line}: {what}"
                      for line, what in _k_decisions(tree)]
    assert not elsewhere, "gScoreCAM's k decided outside config.py:\n" + "\n".join(elsewhere)
    home = _k_decisions(_modules()[K_HOME])
    assert home, "config.py should hold k's defaults (the test would pass vacuously otherwise)"
