"""The package's shape: every module imports on its own, no import cycles, no private names
crossing modules."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "smearlab"


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PACKAGE.rglob("*.py")):
        parts = list(p.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: Path, *, top_level_only: bool) -> list[tuple[str, str, int]]:
    """``(imported module, name, line)`` of the smearlab imports of a module."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            mod = _absolute(node, module, path.name == "__init__.py")
            if mod == "smearlab" or mod.startswith("smearlab."):
                out += [(mod, a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names if a.name.startswith("smearlab")]
    return out


#: Run in one fresh interpreter: the third-party libraries are imported once, then every smearlab
#: module is imported in a forked child that has no smearlab module loaded yet, so an import
#: that only works after another module (a cycle, a missing import) fails there.
_IMPORT_EACH = """
import os, sys, traceback
import numpy, scipy, skimage, sklearn, torch, torchvision, PIL, matplotlib, yaml, tqdm  # noqa: E401
failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            __import__(name)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if status:
        failed.append(name)
print("FAILED", " ".join(failed))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_every_module_imports_on_its_own_in_a_fresh_interpreter():
    env = dict(os.environ, PYTHONPATH=str(PACKAGE.parent), MPLBACKEND="Agg")
    r = subprocess.run([sys.executable, "-c", _IMPORT_EACH, *_modules()], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "FAILED", r.stderr[-4000:]


def test_no_import_cycles():
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        deps = set()
        for mod, imported, _ in _imports(name, path, top_level_only=True):
            target = f"{mod}.{imported}" if f"{mod}.{imported}" in modules else mod
            if target in modules and target != name:
                deps.add(target)
        graph[name] = deps
    # a package's __init__ importing its own modules is how it shows its face, not a cycle
    state, cycles = {}, []

    def visit(n, stack):
        state[n] = 1
        for d in graph[n]:
            if n.startswith(d + ".") or d.startswith(n + "."):
                continue
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack + [d])
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n, [n])
    assert not cycles, cycles


def test_no_private_name_is_imported_across_modules():
    found = []
    for name, path in _modules().items():
        for mod, imported, line in _imports(name, path, top_level_only=False):
            if imported.startswith("_") and not imported.startswith("__"):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {mod}.{imported}")
    assert not found, found


@pytest.mark.parametrize("folder", ["core", "data", "metrics", "detection", "segmentation", "classification",
                                    "explain", "experiments", "viz", "report"])
def test_the_tree_has_its_stages(folder):
    assert (PACKAGE / folder / "__init__.py").is_file()
