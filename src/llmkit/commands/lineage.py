"""`llmkit lineage`: the chain of manifests behind an artifact."""

from __future__ import annotations

import argparse


def _lineage(args: argparse.Namespace) -> int:
    from llmkit.artifacts import lineage

    for depth, m in lineage(args.path):
        pad = "    " * depth + ("└─ " if depth else "")
        if m["kind"] == "input":
            print(f"{pad}{m['_name']}: {m['path']}  sha256 {m['sha256'][:12]}")
        else:
            print(f"{pad}{m['kind']}  {m['_path']}  fingerprint {m['fingerprint'][:12]}  "
                  f"finished {m.get('finished_at')}  ({m.get('seconds')} s)")
    return 0


def add_parser(sub) -> None:
    ln = sub.add_parser("lineage", help="print the chain of manifests behind an artifact",
                        description="Follow manifest.json inputs from an artifact folder back to the raw files.")
    ln.add_argument("path", help="an artifact folder (one holding manifest.json)")
    ln.set_defaults(fn=_lineage)
