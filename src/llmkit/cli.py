"""The `llmkit` command: the root parser, `--debug`, and the translation of library errors; nothing else.

Each command group lives in `llmkit/commands/`, one module each with `add_parser(sub)` and the functions it
dispatches to (models, chat, generate, validate and run, data, train, compress, eval, serve, rag, guard, keys, lineage,
track, register and promote, monitor, dashboard, report).
Library errors (LlmkitError) become one clear line on stderr and a non-zero exit; `--debug` shows the
traceback and the library chatter that a normal run leaves out (`commands.quiet_known_noise`). Heavy libraries are imported inside the commands that need them, so `llmkit --help` is instant.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from llmkit import __version__
from llmkit.commands import (
    chat,
    compress,
    dashboard,
    data,
    generate,
    guard,
    keys,
    lineage,
    models,
    monitor,
    quiet_known_noise,
    rag,
    recipe,
    registry,
    report,
    serve,
    track,
    train,
)
from llmkit.commands import eval as eval_
from llmkit.errors import LlmkitError

# in the order `llmkit --help` lists them
GROUPS = (models, chat, generate, recipe, data, train, compress, eval_, serve, rag, guard, keys, lineage, track, registry, monitor, dashboard, report)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmkit",
        description="The LLM engineer's toolkit: data → train → compress → eval → serve, with lineage.",
        epilog="Run `llmkit COMMAND --help` for a command's options. Docs: README.md.",
    )
    p.add_argument("--version", action="version", version=f"llmkit {__version__}")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.debug:
        quiet_known_noise()
    try:
        return args.fn(args)
    except LlmkitError as e:
        if args.debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
