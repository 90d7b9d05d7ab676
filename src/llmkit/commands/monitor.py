"""`llmkit monitor LOG`: a server's request log summed up over time windows (llmkit.monitor.report)."""

from __future__ import annotations

import argparse
import json


def _monitor(args: argparse.Namespace) -> int:
    import time

    from llmkit.monitor import report

    window = report.parse_duration(args.window) if args.window else None
    since = time.time() - report.parse_duration(args.since) if args.since else None
    s = report.summarize(args.log, window=window, since=since, reference=args.reference, method=args.method,
                         threshold=args.threshold, drift_sample=args.drift_sample)
    if args.json:
        print(json.dumps(s.to_dict(), indent=2, ensure_ascii=False))
    elif not s.windows:
        print(f"{args.log}: no requests{' in that time' if since else ''}")
    else:
        print(report.table(s))
    if s.windows and args.plot:
        print(f"plot: {report.plot(s, args.plot)}")
    if s.windows and args.html:
        print(f"html: {report.to_html(s, args.log, args.html)}")
    if args.fail_on_drift and s.total.drift is not None and s.total.drift["drifted"]:
        return 3
    return 0


def add_parser(sub) -> None:
    m = sub.add_parser("monitor", help="summarize a server's request log: latency, tokens/s, errors, guard, drift",
                       description="Sum up a request log (`llmkit serve --request-log FILE`, SQLite or JSON lines) "
                                   "over time windows: p50/p95 latency, time to first token, tokens/s, error and "
                                   "refusal rates, guard hits per rail, feedback, top RAG sources; with --reference, "
                                   "the drift of the prompts against the training data's.")
    m.add_argument("log", help="the request log: a .db/.sqlite file or a .jsonl file")
    m.add_argument("--window", help="window length: 30s, 5m, 1h, 1d (default: the log's span in ~12 windows)")
    m.add_argument("--since", help="only the last DURATION of the log (e.g. 24h)")
    m.add_argument("--reference", help="a dataset artifact folder (train.jsonl) or a .jsonl of training prompts: "
                                       "test each window's prompts for drift against its user turns")
    m.add_argument("--method", choices=("mmd", "classifier"), default="mmd",
                   help="drift test (default: mmd; see `llmkit serve --help`, --drift-method)")
    m.add_argument("--threshold", type=float, help="drift alert threshold (default: 0.05 for mmd, 0.95 for classifier)")
    m.add_argument("--drift-sample", type=int, default=500,
                   help="at most this many prompts per window are tested (a seeded sample; default 500)")
    m.add_argument("--plot", metavar="PNG", help="write the charts here")
    m.add_argument("--html", metavar="HTML", help="write a self-contained page (table and charts) here")
    m.add_argument("--json", action="store_true", help="print the summary as JSON instead of the table")
    m.add_argument("--fail-on-drift", action="store_true",
                   help="exit 3 when the most recent prompts drifted (for cron jobs and CI)")
    m.set_defaults(fn=_monitor)
