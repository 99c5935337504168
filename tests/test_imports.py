"""Import hygiene: the command line starts without torch or `transformers.pipelines`, the tasks still register,
and no module of the package imports itself back through a cycle."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import hf_crystal

PACKAGE = Path(hf_crystal.__file__).parent
HEAVY = ("torch", "transformers.pipelines", "scipy", "smact", "pymatgen.core")


def _python(code: str) -> str:
    """The standard output of `code` run in a fresh interpreter."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def _heavy_loaded(code: str) -> str:
    return f"{code}\nimport sys\nprint('LOADED', *(m for m in {HEAVY!r} if m in sys.modules))"


@pytest.mark.parametrize("code", ["import hf_crystal.commands", "import hf_crystal"])
def test_command_line_imports_nothing_heavy(code):
    assert _python(_heavy_loaded(code)).strip() == "LOADED"


def test_help_is_light():
    run_help = (
        "import runpy, sys\nsys.argv = ['hf-crystal', '--help']\n"
        "try:\n    runpy.run_module('hf_crystal.commands', run_name='__main__')\nexcept SystemExit:\n    pass"
    )
    out = _python(_heavy_loaded(run_help))
    assert "usage: hf-crystal" in out and out.strip().splitlines()[-1] == "LOADED"


def test_tasks_register_whichever_import_comes_first():
    """Both orders, each in a fresh interpreter (run side by side: each imports transformers' pipelines)."""
    report = (
        "\nfrom transformers.pipelines import PIPELINE_REGISTRY\n"
        "print(sorted(t for t in PIPELINE_REGISTRY.get_supported_tasks() if t.startswith('crystal-')))"
    )
    orders = {"hook": "import hf_crystal", "direct": "from transformers import pipeline\nimport hf_crystal"}
    runs = {
        name: subprocess.Popen([sys.executable, "-c", imports + report], stdout=subprocess.PIPE, text=True)
        for name, imports in orders.items()
    }
    printed = {name: run.communicate(timeout=300)[0].strip() for name, run in runs.items()}
    assert printed == dict.fromkeys(orders, "['crystal-generation', 'crystal-infill']")


def _module_imports() -> dict[str, set[str]]:
    """hf_crystal module -> the hf_crystal modules it imports at module level (function-level imports excluded)."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        imported = set()
        for node in ast.parse(path.read_text()).body:  # top level only
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hf_crystal"):
                imported.add(node.module)
                imported.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names if a.name.startswith("hf_crystal"))
        graph[name] = imported
    return {name: {m for m in deps if m in graph and m != name} for name, deps in graph.items()}


def test_no_import_cycles():
    graph = _module_imports()
    assert "hf_crystal.commands" in graph and "hf_crystal.pipeline_crystal" in graph
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for dep in graph[node]:
            if state.get(dep) == 1:
                raise AssertionError(f"import cycle: {' -> '.join([*path, node, dep])}")
            if dep not in state:
                visit(dep, [*path, node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])
