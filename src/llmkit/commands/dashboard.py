"""`llmkit dashboard`: the dashboard page for runs alone (no models loaded): runs, lineage, registry, eval reports,
and a request log's charts when given one."""

from __future__ import annotations

import argparse
from pathlib import Path


def _dashboard(args: argparse.Namespace) -> int:
    import uvicorn

    from llmkit.errors import ConfigError
    from llmkit.serve.auth import KeyStore, check_bind
    from llmkit.web import dashboard_app

    if not Path(args.runs).is_dir():
        raise ConfigError([f"--runs {args.runs}: no such folder (the folder `llmkit run` writes runs into)"])
    keys = KeyStore.load(args.api_keys)
    check_bind(args.host, keys, False)
    app = dashboard_app(args.runs, args.request_log, args.registry_uri, keys)
    print(f"llmkit dashboard: http://{args.host}:{args.port}/ui  (runs: {Path(args.runs).resolve()})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def add_parser(sub) -> None:
    d = sub.add_parser("dashboard", help="serve the dashboard page for a runs folder (no models)",
                       description="The web page of `llmkit serve` at /ui without a server's models: the runs in a "
                                   "folder and their lineage graphs, eval reports, registry versions and aliases "
                                   "(MLflow), and with --request-log the charts of a server's request log.")
    d.add_argument("--runs", default="runs", metavar="DIR", help="the runs folder (default: runs)")
    d.add_argument("--request-log", metavar="FILE", help="a server's request log (.db or .jsonl) to chart")
    d.add_argument("--registry-uri", metavar="URI",
                   help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI, else the embedded database)")
    d.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; any other "
                                                       "needs API keys)")
    d.add_argument("--port", type=int, default=8800, help="port (default 8800)")
    d.add_argument("--api-keys", metavar="FILE", help="API keys file, as `llmkit serve --api-keys`")
    d.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                   help="uvicorn's log level (default warning)")
    d.set_defaults(fn=_dashboard)
