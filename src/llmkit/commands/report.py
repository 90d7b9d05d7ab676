"""`llmkit report RUN_DIR`: one self-contained HTML page for a whole run (web/run_report.py)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _report(args: argparse.Namespace) -> int:
    from llmkit.errors import ConfigError
    from llmkit.web import run_report

    run = Path(args.run_dir)
    if not run.is_dir():
        raise ConfigError([f"RUN_DIR {args.run_dir}: no such folder (a run is runs/<name>/ as `llmkit run` writes it)"])
    versions, note = ([], "Registry: not asked (--no-registry).") if args.no_registry else \
        run_report.registry_versions(run, args.registry_uri)
    out = run_report.write(run, args.out, request_log=args.request_log, bench=args.bench, registry=versions,
                           registry_note=note)
    print(out)
    if args.open:
        import webbrowser

        webbrowser.open(out.as_uri())
    return 0


def add_parser(sub) -> None:
    r = sub.add_parser("report", help="write one HTML page for a whole run (data, training, compress, eval, rag, "
                                      "serving, lineage)",
                       description="Write RUN_DIR/report.html: one self-contained page (no script, no network; charts "
                                   "as inline SVG) with the run's stages, the lineage graph from the raw files' hashes "
                                   "to the registered versions, the data card, loss curves, the compress quality "
                                   "table, the eval's gates, quality and suites, the RAG index and its metrics, and "
                                   "serving (a load benchmark and a request log's charts, found in RUN_DIR/serve/ or "
                                   "named below). Every number links to the manifest or file it came from; a stage "
                                   "not run yet is shown as such. Prints the page's path.")
    r.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (runs/<name>/, holding model/ data/ train/ ...)")
    r.add_argument("--out", metavar="FILE", help="where to write the page (default RUN_DIR/report.html)")
    r.add_argument("--open", action="store_true", help="open the page in the default browser")
    r.add_argument("--request-log", metavar="FILE",
                   help="a server's request log to chart (default: RUN_DIR/serve/requests.db or .jsonl if present)")
    r.add_argument("--bench", metavar="FILE", help="a bench/serve_load.py results JSON (default: "
                                                   "RUN_DIR/serve/serve_load.json if present)")
    r.add_argument("--registry-uri", metavar="URI", help="MLflow registry to find this run's registered versions "
                                                         "in (default: $MLFLOW_TRACKING_URI, else the embedded database)")
    r.add_argument("--no-registry", action="store_true", help="do not ask the registry")
    r.set_defaults(fn=_report)
