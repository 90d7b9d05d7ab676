"""`llmkit rag index | query | eval`: the rag stage from the command line."""

from __future__ import annotations

import argparse
import json
import os
import sys

from llmkit.commands import validated


def _rag_dir(args: argparse.Namespace):
    """The index folder of a collection: STORE/NAME (STORE default $LLMKIT_HOME/rag)."""
    from pathlib import Path

    from llmkit.config import RagConfig
    from llmkit.models import home

    validated(RagConfig, {"sources": [], "collection": args.collection})  # a plain name, never a path
    return (Path(args.store).expanduser() if args.store else home() / "rag") / args.collection


def _rag(args: argparse.Namespace) -> int:
    from llmkit.config import RagConfig

    out = _rag_dir(args)
    if args.action == "index":
        from llmkit.rag import index

        given = {k: v for k in ("include", "exclude", "chunk_tokens", "chunk_overlap", "embedder", "batch_size",
                                "on_error", "backend", "ray_address", "workers") if (v := getattr(args, k)) is not None}
        cfg = validated(RagConfig, {"sources": args.sources, "collection": args.collection, **given})
        r = index(cfg, out, force=args.force, progress=not args.quiet)
        for f in r["failed"]:
            print(f"not indexed: {f['path']}: {f['reason']}", file=sys.stderr)
        m = r["metrics"]
        if r["status"] == "skipped":
            print(f"skipped: {out} already indexes these files with this config (--force to redo)")
        else:
            print(f"indexed {m['files']} files into {m['chunks']} chunks: {m['embedded_files']} embedded, "
                  f"{m['unchanged_files']} unchanged, {m['removed_files']} removed, {m['failed_files']} failed "
                  f"({m['seconds']:.1f} s)")
        print(f"collection {args.collection!r}: {out}  (query it: llmkit rag query TEXT --collection {args.collection}"
              f"{f' --store {args.store}' if args.store else ''})")
        return 0
    if args.action == "query":
        from llmkit.rag import retrieve

        where = {"source": args.source} if args.source else None
        hits = retrieve(out, args.text, top_k=args.top_k, where=where, mode=args.mode)
        if args.json:
            print(json.dumps([h.to_dict() for h in hits], indent=2))
            return 0
        for h in hits:
            page = f" p.{h.page}" if h.page else ""
            head = f" — {h.heading}" if h.heading else ""
            print(f"[{h.rank}] {h.source}{page}{head}  (chars {h.start}-{h.end}, score {h.score:.4f})")
            print("    " + h.text.replace("\n", "\n    "))
        if not hits:
            print("no matching chunks")
        return 0
    from llmkit.rag import evaluate

    r = evaluate(out, args.questions, top_k=args.top_k)
    if args.endpoint:
        from llmkit.rag.judge import faithfulness

        if not args.model:
            from llmkit.errors import ConfigError

            raise ConfigError(["--endpoint needs --model: the model id the endpoint serves (GET /v1/models)"])
        r["faithfulness"] = faithfulness(out, args.questions, args.endpoint, args.model,
                                         judge_endpoint=args.judge_endpoint, judge_model=args.judge_model,
                                         api_key=args.api_key or os.environ.get("OPENAI_API_KEY"), top_k=args.top_k,
                                         max_tokens=args.max_tokens, progress=sys.stderr.isatty())
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    f = r.pop("faithfulness", None)
    print(f"{'MODE':<8} {f'RECALL@{args.top_k}':>9} {'MRR':>7}  QUESTIONS")
    for mode, v in r.items():
        print(f"{mode:<8} {v[f'recall@{args.top_k}']:>9.3f} {v['mrr']:>7.3f}  {v['questions']}")
    for q in r["hybrid"]["misses"]:
        print(f"  missed (hybrid): {q}")
    if f is None:
        print("answer faithfulness: not measured (give --endpoint URL --model ID, e.g. a running `llmkit serve`)")
    else:
        share = "n/a" if f["faithfulness"] is None else f"{f['faithfulness']:.3f}"
        print(f"answer faithfulness ({args.judge_model or args.model} judging {args.model}): {share} "
              f"({f['judged']} judged, {f['unparsed']} replies neither yes nor no)")
    return 0


def add_parser(sub) -> None:
    rg = sub.add_parser("rag", help="index documents and retrieve from them (LanceDB + BM25, fused)",
                        description="Retrieval over your documents. `index` reads .md, .txt, .html and .pdf files "
                                    "under DIR..., cuts them into chunks by the embedder's tokens (never across a "
                                    "heading), embeds them (the bundled all-MiniLM-L6-v2 by default) into LanceDB and "
                                    "builds a BM25 index beside it. Re-indexing is incremental: unchanged files keep "
                                    "their vectors, changed ones are re-embedded, deleted ones removed; a killed run "
                                    "leaves the previous index intact. `query` fuses dense and BM25 results by "
                                    "reciprocal rank. A collection lives in STORE/NAME (STORE: --store, default "
                                    "$LLMKIT_HOME/rag); `llmkit serve --rag STORE/NAME` answers chats from it.")
    rsub = rg.add_subparsers(dest="action", required=True, metavar="ACTION")
    from llmkit.config import RagConfig

    def doc(field: str) -> str:
        info = RagConfig.model_fields[field]
        return f"{info.description} (default: {info.get_default(call_default_factory=True)})"

    ri = rsub.add_parser("index", help="index files and folders into a collection",
                         description="Index DIR... (folders are walked; files are taken as they are) into the "
                                     "collection. Files that cannot be read are listed on stderr with why, and the "
                                     "rest are indexed (--on-error fail stops instead). A file that resolves outside "
                                     "the given folders (a symlink out) is refused.")
    ri.add_argument("sources", nargs="+", metavar="DIR", help="folders or files to index")
    rq = rsub.add_parser("query", help="print the chunks that best answer TEXT, with their sources",
                         description="Retrieve the top-k chunks for TEXT: dense (cosine) and BM25 candidates fused by "
                                     "reciprocal rank. Prints rank, source file, page, heading, character span and "
                                     "text.")
    rq.add_argument("text", help="the question or search text")
    rq.add_argument("--source", action="append", metavar="GLOB", help="only chunks of files matching this glob, "
                    "e.g. 'docs/*.md' (index names are FOLDER/PATH); repeat for several")
    rq.add_argument("--mode", choices=["hybrid", "dense", "bm25"], default="hybrid",
                    help="hybrid fuses both lists (default); dense or bm25 alone, for comparison")
    rq.add_argument("--json", action="store_true", help="print the hits as JSON")
    re_ = rsub.add_parser("eval", help="recall@k and MRR of a question set against a collection",
                          description="Score retrieval on QUESTIONS, a JSONL file of {question, source, heading?}: "
                                      "a hit is relevant when its source matches (a glob) and, if given, its heading. "
                                      "Prints recall@k and MRR for hybrid, dense-only and BM25-only retrieval; with "
                                      "--endpoint also answer faithfulness (an LLM judge: is the answer supported "
                                      "by the sources?).")
    re_.add_argument("questions", help="JSONL file: {\"question\": ..., \"source\": ..., \"heading\": ...}")
    re_.add_argument("--json", action="store_true", help="print the scores (and missed questions) as JSON")
    re_.add_argument("--endpoint", metavar="URL", help="answer faithfulness: an OpenAI-compatible base URL (e.g. "
                     "http://127.0.0.1:8000/v1 of `llmkit serve`) whose --model answers each question from its top-k "
                     "chunks; a judge then says whether the answer is supported by them")
    re_.add_argument("--model", help="the model id the endpoint answers with")
    re_.add_argument("--judge-endpoint", metavar="URL", help="the judge's endpoint (default: --endpoint)")
    re_.add_argument("--judge-model", help="the judge's model id (default: --model)")
    re_.add_argument("--api-key", help="key for the endpoints (default: $OPENAI_API_KEY, else none)")
    re_.add_argument("--max-tokens", type=int, default=128, help="answer length limit (default 128)")
    for sp in (ri, rq, re_):
        sp.add_argument("--collection", required=True, metavar="NAME",
                        help="the collection: a folder STORE/NAME; clients ask for it by NAME")
        sp.add_argument("--store", metavar="PATH", help="folder that holds the collections (default: $LLMKIT_HOME/rag)")
    for sp in (rq, re_):
        sp.add_argument("--top-k", type=int, default=4, help="chunks to return (default 4)")
    ri.add_argument("--include", action="append", metavar="GLOB", help=doc("include"))
    ri.add_argument("--exclude", action="append", metavar="GLOB", help=doc("exclude"))
    ri.add_argument("--chunk-tokens", type=int, help=doc("chunk_tokens"))
    ri.add_argument("--chunk-overlap", type=int, help=doc("chunk_overlap"))
    ri.add_argument("--embedder", help=doc("embedder"))
    ri.add_argument("--batch-size", type=int, help=doc("batch_size"))
    ri.add_argument("--on-error", choices=["skip", "fail"], help=doc("on_error"))
    ri.add_argument("--backend", choices=["local", "ray"], help=doc("backend"))
    ri.add_argument("--ray-address", help=doc("ray_address"))
    ri.add_argument("--workers", type=int, help=doc("workers"))
    ri.add_argument("--force", action="store_true", help="rebuild even when the index matches the files and config")
    ri.add_argument("--quiet", action="store_true", help="no progress bar")
    rg.set_defaults(fn=_rag)
