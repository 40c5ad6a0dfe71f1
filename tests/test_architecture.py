"""The package's shape: layered imports without cycles, a backend-agnostic core, a fast CLI.

The import contracts live in setup.cfg ([importlinter]) and are run here by import-linter
over the real source; the import-time facts are checked in fresh interpreters.
"""

import itertools
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code, **env):
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": REPO, **env},
    )


def test_import_contracts_hold():
    lint = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "lint-imports"), "setup.cfg", "--no-cache"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": REPO},
    )
    assert lint.returncode == 0, lint.stdout[-4000:] + lint.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in lint.stdout


def test_no_import_cycles_between_modules():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("keras_vit")
    # A package's __init__ re-exporting its own modules is not a cycle of the design.
    modules = sorted(m for m in graph.modules if not graph.find_children(m))
    cycles = []
    for first, second in itertools.combinations(modules, 2):
        if graph.chain_exists(first, second) and graph.chain_exists(second, first):
            cycles.append((first, second, graph.find_shortest_chain(first, second), graph.find_shortest_chain(second, first)))
    assert not cycles, cycles[:3]


def test_nothing_imports_the_command_line():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("keras_vit")
    assert graph.find_modules_that_directly_import("keras_vit.cli") == set()


def test_the_core_imports_no_tensorflow_at_import_time():
    # On JAX nothing else would pull TensorFlow in: the core and its backend switch must not.
    child = _python(
        "import sys; import keras_vit.core, keras_vit.zoo; "
        "print('tensorflow' in sys.modules, keras_vit.core.TransformerBlock.__module__)",
        KERAS_BACKEND="jax",
    )
    assert child.returncode == 0, child.stderr[-3000:]
    assert child.stdout.split() == ["False", "keras_vit.core.layers"]


# The size limits of the package's code (issue 25): a longer function or module is split by purpose.
MAX_FUNCTION_LINES = 60  # without its docstring
MAX_MODULE_LINES = 600


def _function_lengths(path):
    import ast

    with open(path) as file:
        tree = ast.parse(file.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            docstring = ast.get_docstring(node, clean=False)
            if docstring is not None:
                first = node.body[0]
                lines -= first.end_lineno - first.lineno + 1
            yield f"{os.path.relpath(path, REPO)}:{node.lineno} {node.name}", lines


def _package_modules():
    for folder, _, files in os.walk(os.path.join(REPO, "keras_vit")):
        yield from (os.path.join(folder, name) for name in sorted(files) if name.endswith(".py"))


def test_no_function_or_module_is_over_the_size_limits():
    modules = list(_package_modules())
    assert len(modules) > 40  # the walk found the package
    long_modules = {}
    for path in modules:
        with open(path) as file:
            count = sum(1 for _ in file)
        if count > MAX_MODULE_LINES:
            long_modules[os.path.relpath(path, REPO)] = count
    long_functions = {name: lines for path in modules for name, lines in _function_lengths(path)
                      if lines > MAX_FUNCTION_LINES}
    assert long_modules == {}, f"modules over {MAX_MODULE_LINES} lines"
    assert long_functions == {}, f"functions over {MAX_FUNCTION_LINES} lines without their docstring"
