"""One vocabulary: the sandbox speaks the app's status values, the app's code names statuses only through
`TaskStatus`, and the house's imports point down (the page and the command line reach the service and the
shared vocabulary only)."""

from __future__ import annotations

import ast
from pathlib import Path

from kling_demo.models import WIRE_STATUSES, TaskStatus
from kling_demo.sandbox import tasks as sandbox_tasks

PACKAGE = Path(__file__).resolve().parents[2] / "kling_demo"
STATUS_VALUES = {status.value for status in TaskStatus}
VOCABULARY = {"config", "models", "errors", "words", "logs", "runtime", "__init__"}
LAYERS = ["web", "cli", "service", "jobs", "wavespeed", "store"]  # each may import only what stands after it …
BELOW = {"__main__": {"cli"}, "web": {"service"}, "cli": {"service"}, "service": {"jobs", "wavespeed", "store", "sandbox"},
         "jobs": {"wavespeed", "store"}, "wavespeed": set(), "store": set()}  # … as this table says


def test_the_sandbox_speaks_the_status_values_of_the_wire():
    assert set(sandbox_tasks.STATUSES) <= {status.value for status in WIRE_STATUSES}
    assert set(sandbox_tasks.FINAL_STATUSES) == {status.value for status in WIRE_STATUSES
                                                 if status.is_final and status is not TaskStatus.DELETED}


def test_no_module_names_a_status_by_its_text():
    """Statuses are compared and written as `TaskStatus` members, parsed once where they enter (the wire, the
    journal); a bare "completed" in code would be a second vocabulary."""
    bare = []
    for path in PACKAGE.rglob("*.py"):
        if "sandbox" in path.parts or path.name == "models.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                      and node.body and isinstance(node.body[0], ast.Expr)
                      and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in STATUS_VALUES
                    and id(node) not in docstrings and not _names_something_else(path, node.value)):
                bare.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.value!r}")
    assert not bare, "status text outside models.py and the sandbox: " + ", ".join(bare)


def _names_something_else(path: Path, value: str) -> bool:
    """The few words that are also other things' names: a history tile's look, an unknown address."""
    return (path.name == "views.py" and value in ("failed", "unknown")) or (
        path.name in ("identity.py", "images.py") and value == "unknown")


def test_imports_point_down_and_front_ends_reach_the_service_only():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "sandbox":
            continue
        layer = relative.parts[0] if len(relative.parts) > 1 else relative.stem
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            target = _target(relative, node)
            if target is None:
                continue
            if layer in VOCABULARY:
                if target not in VOCABULARY and target != "sandbox":
                    wrong.append(f"{relative} imports {target}: the vocabulary imports only itself")
            elif target not in VOCABULARY and target != layer and target not in BELOW.get(layer, set()):
                wrong.append(f"{relative} imports {target}")
    assert not wrong, "imports that do not point down: " + "; ".join(wrong)


def _target(relative: Path, node: ast.ImportFrom) -> str | None:
    """The layer (or vocabulary module) an import names, or None for one outside kling_demo."""
    if node.level == 0:
        parts = (node.module or "").split(".")
        if parts[0] != "kling_demo":
            return None
        parts = parts[1:] or [alias.name for alias in node.names][:1]
    else:
        package = list(relative.parts[:-1])[: len(relative.parts) - node.level]
        parts = package + (node.module.split(".") if node.module else [alias.name for alias in node.names][:1])
    name = parts[0] if parts else None
    return "__init__" if name == "__version__" else name  # the package's own face
