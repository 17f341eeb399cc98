"""Where Gradio reads the environment while it is imported, found in its installed source, and how a fork redoes it.

Gradio 6.31 keeps about twenty settings in module globals computed at import (`INITIAL_PORT_VALUE =
int(os.getenv("GRADIO_SERVER_PORT", "7860"))`, the `OAUTH_*` values, its temp dir, …), so a process forked
after `import gradio` (tests/warm_start.py) would keep its parent's values. `scan()` parses every module of
the installed `gradio` and `gradio_client` and, among the statements that run at import, finds each one that
reads the environment or uses a name bound by one (also through `from … import`), and turns it into a step:

- `Rerun`: an assignment (or such a `from … import`): the fork runs it again in the module's namespace;
- `Default`: a function default: the fork evaluates it again and puts it in the function;
- `Pinned`: anything else (an `if` on such a name, a class body, a decorator): a fork cannot redo it, so when
  one of its variables differs from the warm interpreter's the process must start cold instead.

Only reads written in the module's own import-time code are visible here; tests/processes/test_warm_start.py records
every read made while Gradio is imported and fails on one that no step covers.
"""

from __future__ import annotations

import ast
import graphlib
import importlib.util
import os
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

PACKAGES = ("gradio", "gradio_client")
GETTERS = {"getenv", "getenvb"}  # os.getenv("X", …)
MAPPINGS = {"environ", "environb"}  # os.environ.get("X"), os.environ["X"], "X" in os.environ


class ColdStartNeeded(Exception):
    """A fork cannot be made to match a cold start: a pinned variable differs from the warm interpreter's."""


class UnsupportedRead(Exception):
    """An import-time read a fork cannot redo safely, e.g. `dict(os.environ)` (which variables?)."""


@dataclass(frozen=True)
class Step:
    """Lines `first`–`last` of `module` that depend, at import, on the environment `variables`."""

    module: str
    first: int
    last: int
    variables: tuple[str, ...]

    def apply(self, module: ModuleType, inherited: Mapping[str, str]) -> None:
        raise NotImplementedError

    def _compile(self, module: ModuleType, source: str, mode: str):
        """`source` compiled as if it stood at line `first` of the module's file, so tracebacks point there."""
        return compile("\n" * (self.first - 1) + source, module.__file__ or self.module, mode)


@dataclass(frozen=True)
class Rerun(Step):
    """An assignment (or `from … import`) run again in the module's namespace."""

    source: str
    names: tuple[str, ...]

    def apply(self, module: ModuleType, inherited: Mapping[str, str]) -> None:
        exec(self._compile(module, self.source, "exec"), vars(module))


@dataclass(frozen=True)
class Default(Step):
    """The default of `parameter` of `function` (a qualified name), evaluated again in the module's namespace."""

    function: str
    parameter: str
    source: str

    def apply(self, module: ModuleType, inherited: Mapping[str, str]) -> None:
        value = eval(self._compile(module, self.source, "eval"), vars(module))
        _set_default(_resolve(module, self.function), self.parameter, value)


@dataclass(frozen=True)
class Pinned(Step):
    """Import-time code a fork cannot redo (e.g. `if not PROFILING_ENABLED: def trace_phase…`)."""

    def apply(self, module: ModuleType, inherited: Mapping[str, str]) -> None:
        for variable in self.variables:
            if os.environ.get(variable) != inherited.get(variable):
                raise ColdStartNeeded(f"{self.module} (line {self.first}) depends on {variable} at import in a "
                                      f"way a fork cannot redo, and {variable} differs from the warm interpreter's")


def reread(steps: list[Step], inherited: Mapping[str, str]) -> None:
    """In a fork whose `os.environ` is its own (`inherited` being the warm interpreter's): redo every step of a
    module it has imported (a module imported later reads the environment itself), or raise ColdStartNeeded."""
    for step in steps:
        module = sys.modules.get(step.module)
        if module is not None:
            step.apply(module, inherited)


def scan(packages: tuple[str, ...] = PACKAGES, search_path: list[str] | None = None) -> list[Step]:
    """Every import-time dependency on the environment in `packages`, as steps in an order a fork can run them:
    each module after the modules it copies settings from, each module's steps in source order."""
    sources = dict(_module_sources(packages, search_path))
    trees: dict[str, ast.Module | None] = {}
    settings: dict[str, dict[str, tuple[str, ...]]] = {}  # module → name bound at import → its variables
    while True:  # until no module learns a new setting name from another (a copy of a copy)
        # Only a module that mentions the environment or a known setting can matter: parse just those.
        names = {name for bound in settings.values() for name in bound} | GETTERS | MAPPINGS
        mentions = re.compile(r"\b(?:" + "|".join(map(re.escape, sorted(names))) + r")\b")
        trees.update({module: _parse(path, text) for module, (path, text) in sources.items()
                      if module not in trees and mentions.search(text)})
        found = {module: _scan_module(module, tree, settings) for module, tree in trees.items() if tree}
        bound = {module: scanned.settings for module, scanned in found.items() if scanned.settings}
        if bound == settings:
            break
        settings = bound
    order = graphlib.TopologicalSorter({module: scanned.sources for module, scanned in found.items()})
    return [step for module in order.static_order() if module in found for step in found[module].steps]


def _module_sources(packages: tuple[str, ...], search_path: list[str] | None) -> Iterator[tuple[str, tuple[Path, str]]]:
    """(dotted name, (file, source)) of each module of the installed `packages`, without importing them."""
    for package in packages:
        spec = importlib.util.find_spec(package) if search_path is None else _find(package, search_path)
        for root in (spec.submodule_search_locations or []) if spec else []:
            for path in sorted(Path(root).rglob("*.py")):
                parts = path.relative_to(root).with_suffix("").parts
                dotted = ".".join((package, *(parts[:-1] if parts[-1] == "__init__" else parts)))
                yield dotted, (path, path.read_text(encoding="utf-8", errors="replace"))


def _parse(path: Path, text: str) -> ast.Module | None:
    """The syntax tree, or None for a file that does not parse (a template): it cannot be imported either."""
    try:
        return ast.parse(text, str(path))
    except (SyntaxError, ValueError):
        return None


def _find(package: str, search_path: list[str]):
    from importlib.machinery import PathFinder

    return PathFinder.find_spec(package, search_path)


@dataclass
class _Scanned:
    steps: list[Step]
    settings: dict[str, tuple[str, ...]]  # names this module binds at import from the environment
    sources: set[str]  # modules it copies such names from


def _scan_module(module: str, tree: ast.Module, settings: dict[str, dict[str, tuple[str, ...]]]) -> _Scanned:
    """One module's top-level statements, in order, against what every module is known to bind."""
    scanned = _Scanned([], {}, set())
    for statement in tree.body:
        lines = (module, statement.lineno, statement.end_lineno or statement.lineno)
        copies = _copies(module, statement, settings) if isinstance(statement, ast.ImportFrom) else []
        if copies:
            source = _absolute(module, statement)  # type: ignore[arg-type]
            scanned.sources.add(source)
            scanned.settings.update({alias: settings[source][name] for name, alias in copies})
            imports = ", ".join(name if name == alias else f"{name} as {alias}" for name, alias in copies)
            scanned.steps.append(Rerun(*lines, _union(settings[source][name] for name, _ in copies),
                                       f"from {source} import {imports}", tuple(alias for _, alias in copies)))
            continue
        reads = _Reads(scanned.settings, settings, module)
        reads.visit(statement)
        targets = _plain_targets(statement)
        if targets and (reads.variables or scanned.settings.keys() & set(targets)):
            # Run again also when it rebinds a setting to a constant, or the fork would keep the re-read value.
            scanned.steps.append(Rerun(*lines, reads.variables, ast.unparse(statement), targets))
            for target in targets:
                scanned.settings.pop(target, None)
                if reads.variables:
                    scanned.settings[target] = reads.variables
            continue
        rebound = scanned.settings.keys() & _defined_names(statement)
        if rebound:
            raise UnsupportedRead(f"{module} line {statement.lineno} rebinds {', '.join(sorted(rebound))}, bound "
                                  f"from the environment earlier, in a way a fork cannot redo")
        scanned.steps.extend(reads.defaults)
        if reads.variables:
            scanned.steps.append(Pinned(*lines, reads.variables))
    return scanned


def _copies(module: str, statement: ast.ImportFrom, settings) -> list[tuple[str, str]]:
    """(name, alias) pairs of `from source import …` that copy a setting of `source`."""
    known = settings.get(_absolute(module, statement), {})
    pairs = []
    for alias in statement.names:
        if alias.name == "*":
            pairs += [(name, name) for name in known if not name.startswith("_")]
        elif alias.name in known:
            pairs.append((alias.name, alias.asname or alias.name))
    return pairs


def _absolute(module: str, statement: ast.ImportFrom) -> str:
    if not statement.level:
        return statement.module or ""
    package = module.rsplit(".", statement.level)[0]
    return f"{package}.{statement.module}" if statement.module else package


def _plain_targets(statement: ast.stmt) -> tuple[str, ...] | None:
    """The names an `X = …` / `X: T = …` / `X = Y = …` statement binds; None for any other statement."""
    if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name) and statement.value:
        return (statement.target.id,)
    if isinstance(statement, ast.Assign) and all(isinstance(t, ast.Name) for t in statement.targets):
        return tuple(t.id for t in statement.targets)  # type: ignore[attr-defined]
    return None


def _defined_names(statement: ast.stmt) -> set[str]:
    """Names a `def`, `class` or `import` statement binds."""
    if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return {statement.name}
    if isinstance(statement, ast.Import | ast.ImportFrom):
        return {(alias.asname or alias.name).split(".")[0] for alias in statement.names}
    return set()


def _union(groups) -> tuple[str, ...]:
    return tuple(sorted({variable for group in groups for variable in group}))


class _Reads(ast.NodeVisitor):
    """What one top-level statement reads at import: environment variables, and settings bound earlier in this
    module (`local`) or in another module (`everywhere`, for `from x import Y` nested in the statement)."""

    def __init__(self, local: dict[str, tuple[str, ...]], everywhere, module: str) -> None:
        self.local, self.everywhere, self.module = local, everywhere, module
        self.found: set[str] = set()
        self.defaults: list[Default] = []
        self._qualname: list[str] = []
        self._settings_anywhere = {name: variables for bound in everywhere.values() for name, variables in bound.items()}

    @property
    def variables(self) -> tuple[str, ...]:
        return tuple(sorted(self.found))

    # --- definitions: only decorators, defaults, bases and class bodies run at import ----------------------------
    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for decorator in node.decorator_list:
            self.visit(decorator)
        positional = [*node.args.posonlyargs, *node.args.args]
        pairs = list(zip(positional[len(positional) - len(node.args.defaults):], node.args.defaults))
        pairs += [(arg, default) for arg, default in zip(node.args.kwonlyargs, node.args.kw_defaults) if default]
        for arg, default in pairs:
            self._default(node.name, arg.arg, default)

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_Lambda(self, node: ast.Lambda) -> None:
        for default in [*node.args.defaults, *(d for d in node.args.kw_defaults if d)]:
            self.visit(default)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for part in (*node.decorator_list, *node.bases, *node.keywords):
            self.visit(part)
        self._qualname.append(node.name)
        for statement in node.body:
            self.visit(statement)
        self._qualname.pop()

    def visit_If(self, node: ast.If) -> None:
        if not (isinstance(node.test, ast.Name | ast.Attribute) and "TYPE_CHECKING" in ast.unparse(node.test)):
            self.generic_visit(node)

    def _default(self, function: str, parameter: str, default: ast.expr) -> None:
        inner = _Reads(self.local, self.everywhere, self.module)
        inner.visit(default)
        if inner.found:
            self.defaults.append(Default(self.module, default.lineno, default.end_lineno or default.lineno,
                                         inner.variables, ".".join([*self._qualname, function]), parameter,
                                         ast.unparse(default)))

    # --- reads ------------------------------------------------------------------------------------------------
    def visit_Call(self, node: ast.Call) -> None:
        function = node.func
        if _is_os(function, GETTERS) or (isinstance(function, ast.Attribute) and _is_os(function.value, MAPPINGS)):
            self._variable(node.args[0] if node.args else None, node)
            for part in [*node.args[1:], *node.keywords]:
                self.visit(part)
            return
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if _is_os(node.value, MAPPINGS):
            self._variable(node.slice, node)
        else:
            self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        if len(node.ops) == 1 and isinstance(node.ops[0], ast.In | ast.NotIn) and _is_os(node.comparators[0], MAPPINGS):
            self._variable(node.left, node)
        else:
            self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if _is_os(node, GETTERS | MAPPINGS):
            self._variable(None, node)
        elif node.attr in self._settings_anywhere:  # `profiling.PROFILING_ENABLED` at import
            self.found.update(self._settings_anywhere[node.attr])
        else:
            self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in GETTERS | MAPPINGS:  # `from os import getenv, environ`
            self._variable(None, node)
        elif isinstance(node.ctx, ast.Load) and node.id in self.local:
            self.found.update(self.local[node.id])

    def visit_AugAssign(self, node: ast.AugAssign) -> None:  # `X += …` changes a setting at import
        if isinstance(node.target, ast.Name) and node.target.id in self.local:
            self.found.update(self.local[node.target.id])
        self.visit(node.value)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for name, _ in _copies(self.module, node, self.everywhere):
            self.found.update(self.everywhere[_absolute(self.module, node)][name])

    def _variable(self, key: ast.expr | None, node: ast.AST) -> None:
        if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
            raise UnsupportedRead(f"{self.module} line {node.lineno}: {ast.unparse(node)} reads the environment "
                                  f"at import, but which variable cannot be told from the source")
        self.found.add(key.value)


def _is_os(node: ast.AST, names: set[str]) -> bool:
    """`os.<one of names>` (or the bare name, imported from os)."""
    if isinstance(node, ast.Attribute):
        return node.attr in names and isinstance(node.value, ast.Name) and node.value.id == "os"
    return isinstance(node, ast.Name) and node.id in names


def _resolve(module: ModuleType, qualname: str):
    """The plain function behind `qualname` in `module` (a method's, a staticmethod's or a classmethod's)."""
    target: object = module
    for part in qualname.split("."):
        target = vars(target).get(part) if part in vars(target) else getattr(target, part)
    return getattr(target, "__func__", target)


def _set_default(function, parameter: str, value: object) -> None:
    positional = function.__code__.co_varnames[:function.__code__.co_argcount]
    if parameter in positional:
        defaults = list(function.__defaults__)
        defaults[positional.index(parameter) - (len(positional) - len(defaults))] = value
        function.__defaults__ = tuple(defaults)
    else:
        function.__kwdefaults__ = {**function.__kwdefaults__, parameter: value}
