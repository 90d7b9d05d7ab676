"""The `--help` text of every command, sub-command and action, compared with the copies in tests/cli_help/.

The help is the CLI's documentation: moving a command between modules must not change a word of it. After an
intended change, regenerate the copies and review the diff:

    COLUMNS=120 python tests/test_cli_help.py --update
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pytest

from llmkit.cli import build_parser

GOLDEN = Path(__file__).parent / "cli_help"
WIDTH = "120"  # argparse wraps at $COLUMNS - 2


def helps() -> dict[str, str]:
    """{"llmkit rag index": its --help text, ...} for the root parser and every parser below it."""
    out: dict[str, str] = {}

    def walk(name: str, parser: argparse.ArgumentParser) -> None:
        out[name] = parser.format_help()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    walk(f"{name} {sub_name}", sub)

    walk("llmkit", build_parser())
    return out


def _file(name: str) -> Path:
    return GOLDEN / (name.replace(" ", "_") + ".txt")


@pytest.fixture(scope="module")
def current() -> dict[str, str]:
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        return helps()
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def test_every_command_has_a_golden_help(current):
    have = {p.stem for p in GOLDEN.glob("*.txt")}
    want = {_file(name).stem for name in current}
    assert want == have, f"missing copies: {sorted(want - have)}; stale copies: {sorted(have - want)}"


@pytest.mark.parametrize("name", sorted(p.stem.replace("_", " ") for p in GOLDEN.glob("*.txt")))
def test_help_text_unchanged(current, name):
    assert name in current, f"`{name} --help` no longer exists"
    assert current[name] == _file(name).read_text(), f"`{name} --help` changed (see the module docstring)"


if __name__ == "__main__" and sys.argv[1:] == ["--update"]:
    os.environ["COLUMNS"] = WIDTH
    GOLDEN.mkdir(exist_ok=True)
    for old in GOLDEN.glob("*.txt"):
        old.unlink()
    for name, text in helps().items():
        _file(name).write_text(text)
    print(f"wrote {len(list(GOLDEN.glob('*.txt')))} files to {GOLDEN}")
