"""The house keeps its shape: the floors of DESIGN.md ("Who may import whom") and the linter, run by `make test`.

- import-linter checks the contracts in pyproject.toml ([tool.importlinter]): arrows only point down the floors,
  no stage imports a sibling stage, no circles between the modules of a package, nothing imports bench/. Lazy
  imports inside functions count: they are arrows between files all the same.
- ruff checks src, tests, bench and examples with the rules in pyproject.toml ([tool.ruff.lint]): pyflakes
  (unused imports, shadowed and undefined names), pycodestyle, import sorting.
- no import circle at all, but one known one (KNOWN_CIRCLES), which may only shrink.
- cli.py holds no command: each one runs a function of a `llmkit/commands/` module.

import-linter (and grimp under it) and ruff are tools of the `test` extra (`pip install -e '.[test]'`); a missing
one fails here rather than skipping.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(tool: str, args: list[str]) -> subprocess.CompletedProcess:
    if importlib.util.find_spec(tool) is None:
        pytest.fail(f"{tool} is not installed: pip install -e '.[test]'")
    # this tree's package, whatever llmkit is installed (grimp reads the files of the llmkit that imports first)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept():
    r = _run("importlinter", ["-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
                              "--no-cache", "--no-logo"])
    report = r.stdout + r.stderr
    assert r.returncode == 0 and " 0 broken" in report, report


# A package's __init__ and its own modules, which acyclic_siblings does not look at. None is left (the last,
# engines/__init__ <-> the engines it loads, went when the Protocol's types moved to engines/base.py).
KNOWN_CIRCLES: list[set[str]] = []


def test_no_circles_but_the_known_one():
    """Every import circle between llmkit's modules (strongly connected components of the import graph, lazy
    imports included): none, but the one named above, and that one may only shrink."""
    import grimp

    graph = grimp.build_graph("llmkit", cache_dir=None)
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(m: str) -> None:  # Tarjan's algorithm
        index[m] = low[m] = len(index)
        stack.append(m)
        for n in edges[m]:
            if n not in index:
                visit(n)
                low[m] = min(low[m], low[n])
            elif n in stack:
                low[m] = min(low[m], index[n])
        if low[m] == index[m]:
            circle = set()
            while True:
                n = stack.pop()
                circle.add(n)
                if n == m:
                    break
            if len(circle) > 1:
                circles.append(circle)

    for m in sorted(graph.modules):
        if m not in index:
            visit(m)
    unknown = [sorted(c) for c in circles if not any(c <= known for known in KNOWN_CIRCLES)]
    assert not unknown, f"import circles: {unknown}"


def test_ruff_finds_nothing():
    r = _run("ruff", ["-m", "ruff", "check", "--no-cache", "src", "tests", "bench", "examples"])
    assert r.returncode == 0, r.stdout + r.stderr


def test_cli_holds_no_command():
    """cli.py is the root parser, --debug and error translation; every command runs a function of commands/."""
    import argparse

    from llmkit.cli import build_parser

    homes = {}

    def walk(name: str, parser: argparse.ArgumentParser) -> None:
        if parser.get_default("fn") is not None:
            homes[name] = parser.get_default("fn").__module__
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    walk(f"{name} {sub_name}", sub)

    walk("llmkit", build_parser())
    assert len(homes) >= 11 and all(m.startswith("llmkit.commands.") for m in homes.values()), homes
