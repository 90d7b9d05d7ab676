"""`llmkit eval`: score a model or an endpoint on tasks, beside a baseline, and check gates (exit 1 on a miss)."""

from __future__ import annotations

import argparse


def _eval(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from llmkit.config import EvalConfig, load_recipe
    from llmkit.errors import ConfigError, GateFailed
    from llmkit.eval import EndpointTarget, evaluate, recipe_inputs, summary

    recipe = load_recipe(args.recipe) if args.recipe else None
    cfg = (recipe.eval if recipe and recipe.eval else EvalConfig()).model_dump()
    if recipe and recipe.eval:
        cfg["judge_api_key"] = recipe.eval.judge_api_key  # not dumped (a secret)
    problems = []
    if args.tasks:
        cfg["tasks"] = args.tasks
    for k in ("engine", "generate_engine", "max_tokens", "concurrency", "limit", "prompts", "judge_endpoint", "judge_model",
              "judge_api_key", "rag_index", "rag_questions", "rag_top_k", "reward_model"):
        if getattr(args, k) is not None:
            cfg[k] = getattr(args, k)
    if args.baseline:
        cfg["baseline"] = args.baseline
    if args.interpret is not None:
        cfg["interpret"] = args.interpret
    for g in args.gate or []:
        metric, eq, expr = g.partition("=")
        if not eq:
            problems.append(f"--gate {g!r}: expected METRIC=EXPR, e.g. support.contains='>= 0.8'")
        cfg["gates"][metric] = expr
    if recipe is None and not (args.model or args.endpoint):
        problems.append("give --model M or --endpoint URL (or --recipe R: its trained model)")
    if recipe is None and not args.out:
        problems.append("give --out DIR (with --recipe it defaults to the run's eval folder)")
    if problems:
        raise ConfigError(problems)
    try:
        cfg = EvalConfig.model_validate(cfg)
    except ValueError as e:
        raise ConfigError([str(e)]) from None
    plan = recipe_inputs(recipe.model_copy(update={"eval": cfg})) if recipe else {}
    if cfg.baseline == "base" and not recipe:
        raise ConfigError(["--baseline base means a recipe's base model: give --recipe, or the model itself"])
    target = (EndpointTarget(args.endpoint, args.api_key, args.endpoint_model, cfg.concurrency) if args.endpoint
              else args.model or plan["target"])
    out = Path(args.out) if args.out else recipe.run_dir / "eval"
    if cfg.prompts:
        from llmkit.eval.prompts import compare_prompts
        from llmkit.eval.prompts import summary as prompts_summary

        r = compare_prompts(cfg, target, out, cfg.prompts, base_dir=plan.get("base_dir", Path(".")),
                            dataset=Path(args.data) if args.data else plan.get("dataset"), force=args.force)
        if r["status"] == "skipped":
            print(f"skipped: {out} already holds this prompt experiment (--force to redo)")
        print(prompts_summary(r["metrics"]))
        print(f"metrics: {out / 'metrics.json'}  items: {out / 'items.jsonl'}  (gates are not checked in a prompt "
              "experiment)")
        return 0
    try:
        r = evaluate(cfg, target, out, plan.get("baseline", cfg.baseline), base_dir=plan.get("base_dir", Path(".")),
                     dataset=Path(args.data) if args.data else plan.get("dataset"), force=args.force)
    except GateFailed:
        if (out / "metrics.json").is_file():
            print(summary(json.loads((out / "metrics.json").read_text())))
            print(f"report: {out / 'report.html'}")
        raise
    if r["status"] == "skipped":
        print(f"skipped: {out} already holds a finished eval for these inputs and config (--force to redo)")
    print(summary(r["metrics"]))
    print(f"metrics: {out / 'metrics.json'}  items: {out / 'items.jsonl'}")
    print(f"report: {out / 'report.html'}  model card: {out / 'model_card.md'}")
    return 0


def add_parser(sub) -> None:
    e = sub.add_parser("eval", help="score a model or an OpenAI-compatible endpoint on tasks, beside a baseline, "
                                    "and check gates",
                       description="Score a model in this process (registry name, HF folder, PEFT adapter, .gguf) "
                                   "or any OpenAI-compatible endpoint on tasks: generation with checks (exact, "
                                   "contains, regex, token F1, ROUGE-L, JSON-valid), multiple choice by "
                                   "log-likelihood (acc and acc_norm, as lm-evaluation-harness), perplexity (task "
                                   "files, or `perplexity`: the dataset's val replies), an LLM judge (rubric score; "
                                   "pairwise, both orders), `rag` (recall@k, MRR, faithfulness). --prompts compares "
                                   "prompt templates on the same items. A baseline is scored the same "
                                   "way. Writes OUT/metrics.json, OUT/items.jsonl, OUT/report.html (one "
                                   "self-contained page: gates, tuned vs base, suites, token heatmaps, loss curve), "
                                   "OUT/model_card.md and a manifest; a killed eval "
                                   "resumes without asking finished items again. Exits 1 when a gate fails, naming "
                                   "every failing gate. Task file format: `python -c \"import llmkit.eval.tasks as "
                                   "t; print(t.__doc__)\"` or README (Evaluate).")
    e.add_argument("--recipe", help="a recipe: its eval: section, and by default its trained model, `baseline: base` "
                                    "and its dataset")
    who = e.add_mutually_exclusive_group()
    who.add_argument("--model", help="the model to score: registry name, HF folder, PEFT adapter folder or .gguf")
    who.add_argument("--endpoint", metavar="URL", help="an OpenAI-compatible base URL to score instead, e.g. "
                                                      "http://127.0.0.1:8000/v1 (needs echo + logprobs for scores)")
    e.add_argument("--endpoint-model", metavar="ID", help="the endpoint's model id (default: the first it lists)")
    e.add_argument("--api-key", help="the endpoint's API key")
    e.add_argument("--tasks", nargs="+", metavar="TASK", help="task files (.jsonl, task .yaml, NAME=path) or "
                   "built-ins: `perplexity`, `safety`, `bias`, `rag` (default: the recipe's, else perplexity)")
    e.add_argument("--baseline", help="also score this model: registry name, folder, adapter, .gguf, or `base` (the "
                                      "recipe's base model)")
    e.add_argument("--gate", action="append", metavar="METRIC=EXPR",
                   help="a gate, e.g. --gate 'support.contains=>= baseline + 0.2' (repeatable; adds to the recipe's)")
    e.add_argument("--interpret", nargs="*", metavar="PROMPT",
                   help="prompts to explain in the report (token logprobs with top-5 alternatives, attributions, "
                        "logit lens; in-process models); default: the first 2 generation prompts of the tasks; "
                        "--interpret alone: none")
    e.add_argument("--data", help="dataset artifact folder whose val split the perplexity task scores")
    e.add_argument("--out", help="output artifact folder (default with --recipe: the run's eval folder)")
    e.add_argument("--engine", choices=["auto", "transformers", "llamacpp"],
                   help="in-process engine (default auto: llamacpp for .gguf, else transformers)")
    e.add_argument("--generate-engine", choices=["auto", "transformers", "llamacpp"],
                   help="in-process engine for replies only (default auto: the same as --engine); llamacpp "
                        "batches 8 replies, also for an adapter (as a llama.cpp LoRA on its base's GGUF)")
    e.add_argument("--max-tokens", type=int, help="tokens per generated reply (default 128)")
    e.add_argument("--concurrency", type=int, help="endpoint requests in flight at once (default 8)")
    e.add_argument("--limit", type=int, help="score at most this many items per task (the safety suite: per group)")
    e.add_argument("--prompts", nargs="+", metavar="YAML", help="prompt template files (name, version, system, "
                   "template with {prompt}): run the tasks once per template on the same items and report each "
                   "metric's difference with its paired bootstrap CI; a winner only when the CI excludes 0")
    e.add_argument("--judge-endpoint", metavar="URL", help="OpenAI-compatible base URL of the LLM judge for judge "
                   "and pairwise rows (and the rag task's faithfulness)")
    e.add_argument("--judge-model", metavar="ID", help="the judge's model id (default: the first it lists)")
    e.add_argument("--judge-api-key", metavar="KEY", help="the judge endpoint's API key (never written to a manifest)")
    e.add_argument("--rag-index", metavar="DIR", help="the built-in `rag` task's index folder (llmkit rag index)")
    e.add_argument("--rag-questions", metavar="JSONL", help="the `rag` task's questions: {question, source, heading?}")
    e.add_argument("--rag-top-k", type=int, help="chunks the `rag` task retrieves per question (default 4)")
    e.add_argument("--reward-model", metavar="DIR", help="a `method: reward` artifact that scores every generate "
                   "item's reply (metric TASK.reward, higher is better)")
    e.add_argument("--force", action="store_true", help="score again even when a finished eval matches")
    e.set_defaults(fn=_eval)
