"""`llmkit chat`: a model in the terminal, one-shot (--prompt) or interactive, streaming."""

from __future__ import annotations

import argparse


def _chat(args: argparse.Namespace) -> int:
    from llmkit.engines import GenParams, load_engine
    from llmkit.models import resolve_model

    ref = resolve_model(args.model)
    opts = {"n_threads": args.threads} if args.threads else {}
    engine = load_engine(args.engine, ref, **opts)
    params = GenParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)
    messages = [{"role": "system", "content": args.system}] if args.system else []

    def reply() -> None:
        text = ""
        for piece in engine.chat(messages, params):
            text += piece
            print(piece, end="", flush=True)
        print()
        messages.append({"role": "assistant", "content": text})

    if args.prompt is not None:
        messages.append({"role": "user", "content": args.prompt})
        reply()
        return 0
    print(f"Chatting with {ref.name} on {engine.name}. Empty line or Ctrl-D to quit, /reset to start over.")
    while True:
        try:
            line = input("> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if not line:
            return 0
        if line == "/reset":
            del messages[(1 if args.system else 0):]
            continue
        messages.append({"role": "user", "content": line})
        reply()


def add_parser(sub) -> None:
    c = sub.add_parser("chat", help="chat with a model in the terminal (streaming)",
                       description="Chat with MODEL. With --prompt, answer once and exit; otherwise an interactive "
                                   "session. Greedy decoding by default (--temperature 0).")
    c.add_argument("model", nargs="?", default="smollm2-135m-instruct", help="registry name, path or hub id "
                   "(default: smollm2-135m-instruct)")
    c.add_argument("--prompt", "-p", help="one-shot: answer this and exit")
    c.add_argument("--system", help="system prompt (default: the model's chat template's own)")
    c.add_argument("--engine", choices=["llamacpp", "transformers"], default="llamacpp",
                   help="llamacpp runs GGUF files (fast on CPU); transformers runs HF folders and converts a GGUF "
                        "to float weights once (cached)")
    c.add_argument("--max-tokens", type=int, default=256, help="reply length limit in tokens (default 256)")
    c.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    c.add_argument("--seed", type=int, default=None, help="sampling seed")
    c.add_argument("--threads", type=int, default=None, help="CPU threads (default: $LLMKIT_THREADS or cores)")
    c.set_defaults(fn=_chat)
