"""The house rules that keep the import graph simple, checked so they cannot drift.

* the layers contract of ``.importlinter`` (tools -> engine -> serving -> library -> foundations) holds, and
  ``lint-imports`` really fails on an upward import hidden inside a function;
* no module below the package root imports the root (``chexcam/__init__.py`` only gathers names);
* every test that reads ``../shared/data`` carries the ``shared_data`` marker.
"""

import ast
import os
import shutil
import subprocess
import sys

import pytest

from .conftest import ROOT

pytest.importorskip("importlinter", reason="the layers contract needs import-linter (the [test] extra)")
LINT = shutil.which("lint-imports", path=os.path.dirname(sys.executable)) or shutil.which("lint-imports")


def _lint(root):
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([LINT, "--config", os.path.join(str(root), ".importlinter"), "--no-cache"],
                          cwd=str(root), capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A copy of the package and its contract, so the test can break it without touching the checkout."""
    root = tmp_path_factory.mktemp("layers")
    shutil.copytree(os.path.join(ROOT, "chexcam"), root / "chexcam",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(ROOT, ".importlinter"), root / ".importlinter")
    return root


def test_layers_contract_holds(tree):
    assert LINT, "lint-imports not found"
    res = _lint(tree)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 kept, 0 broken" in res.stdout


def test_an_upward_import_inside_a_function_breaks_the_contract(tree):
    victim = tree / "chexcam" / "postprocess.py"
    original = victim.read_text()
    victim.write_text(original + "\n\ndef _sneaky():\n    from .engine import infer  # upward\n    return infer\n")
    try:
        res = _lint(tree)
    finally:
        victim.write_text(original)
    assert res.returncode != 0
    assert "BROKEN" in res.stdout and "chexcam.postprocess -> chexcam.engine.infer" in res.stdout


def _imports(path):
    tree = ast.parse(open(path, encoding="utf-8").read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            yield node.level, node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield 0, a.name, []


def test_no_module_imports_the_package_root():
    bad = []
    pkg = os.path.join(ROOT, "chexcam")
    for folder, _, files in os.walk(pkg):
        depth = os.path.relpath(folder, pkg).count(os.sep) + (0 if folder == pkg else 1)
        for f in files:
            if not f.endswith(".py") or (folder == pkg and f == "__init__.py"):
                continue
            for level, module, _names in _imports(os.path.join(folder, f)):
                # "from . import x" in chexcam/ (".." one level below) is fine when x is a submodule
                names = [] if level != depth + 1 or module is not None else \
                    [n for n in _names if not os.path.exists(os.path.join(pkg, n + ".py"))
                     and not os.path.isdir(os.path.join(pkg, n))]
                if module == "chexcam" and level == 0 or names:
                    bad.append(f"{os.path.relpath(os.path.join(folder, f), ROOT)}: {names or module}")
    assert not bad, f"modules importing the package root: {bad}"


def test_tests_reading_shared_data_are_marked():
    unmarked = []
    for f in sorted(os.listdir(os.path.join(ROOT, "tests"))):
        if not f.startswith("test_") or not f.endswith(".py"):
            continue
        tree = ast.parse(open(os.path.join(ROOT, "tests", f), encoding="utf-8").read())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                calls = {n.func.id for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
                marks = {ast.unparse(d) for d in node.decorator_list}
                if "shared_path" in calls and "pytest.mark.shared_data" not in marks:
                    unmarked.append(f"{f}::{node.name}")
    assert not unmarked, f"tests reading ../shared/data without @pytest.mark.shared_data: {unmarked}"
