"""Interpretability for a few chosen prompts: what the model replied, how sure it was of each token, which input
tokens pushed it there, and how the prediction forms across layers. The report draws all three as heatmaps.

    out = interpret(ModelTarget("runs/x/train"), [[{"role": "user", "content": "My router is slow."}]])

For each prompt (a chat, formatted by the model's own template):
- `tokens`: the greedy reply, one entry per token: its text, logprob (nats) and the TOP_K most likely tokens at
  that step. Both engines (transformers and llama.cpp) give these through GenParams.logprobs.
- `attribution`: Captum (LLMGradientAttribution) for the first ATTR_TOKENS reply tokens: one score per prompt
  token per reply token, on the input embeddings, summed over the embedding dimensions. Default gradient x input
  (LayerGradientXActivation: one forward and backward pass per reply token, ~0.6 s on the 135M model on 2 cores);
  `method="integrated_gradients"` (LayerIntegratedGradients, IG_STEPS steps from a baseline of token id 0 at each
  content position) is IG_STEPS times the work. The chat template's special tokens are kept as they are and get no
  score. transformers engine only: llama.cpp computes no gradients.
- `logit_lens`: the final norm and the LM head applied to every layer's hidden state at the last LENS_POSITIONS
  positions of prompt + reply: the token each layer would predict next there, and its probability
  (nostalgebraist's logit lens). transformers engine only: llama.cpp does not hand out per-layer hidden states.
Whatever cannot be computed for a target is recorded as {"skipped": why}, never left out silently.
"""

from __future__ import annotations

import math
import time
from typing import Any

from llmkit.engines import GenParams

TOP_K = 5  # alternatives kept per reply token
REPLY_TOKENS = 32  # reply tokens shown in the token heatmap
ATTR_TOKENS = 3  # reply tokens explained by attributions (one integrated-gradients run each)
IG_STEPS = 16  # Riemann steps of integrated gradients (method="integrated_gradients")
METHODS = ("gradient_x_input", "integrated_gradients")
LENS_POSITIONS = 8  # positions (from the end of prompt + reply) shown in the logit lens


def prompts_from_tasks(tasks: list, n: int = 2) -> list[list[dict]]:
    """The first `n` generation prompts of the tasks, as chats: the default when eval.interpret is not set."""
    out: list[list[dict]] = []
    for task in tasks:
        for item in task.items:
            if len(out) >= n:
                return out
            row = item.row
            if row.get("type") == "generate" and item.score is None:
                out.append(row.get("messages") or [{"role": "user", "content": row["prompt"]}])
    return out


def interpret(target: Any, chats: list[list[dict]], max_tokens: int = REPLY_TOKENS,
              method: str = "gradient_x_input", progress: bool = False, desc: str = "interpret") -> dict:
    """interpret.json's entry for one in-process target (a ModelTarget): {"target", "engine", "prompts": [...]}."""
    from tqdm import tqdm

    engine = target.engine
    prompts = []
    for messages in tqdm(chats, desc=desc, unit="prompt", disable=not progress):
        t0 = time.perf_counter()
        prompt = engine.format_chat(messages)
        gen = engine.submit(prompt, GenParams(max_tokens=max_tokens, temperature=0.0, logprobs=TOP_K))
        pieces = list(gen)
        tokens = [{"id": p.token, "text": p.token_text if p.token_text is not None else p.text,
                   "logprob": p.logprob, "top": [[t, lp] for t, lp in (p.top_logprobs or [])]} for p in pieces]
        entry: dict = {"messages": messages, "prompt": prompt, "reply": "".join(p.text for p in pieces),
                       "tokens": tokens}
        reply_ids = [p.token for p in pieces if p.token is not None]
        t1 = time.perf_counter()
        if engine.name != "transformers":
            why = (f"the {engine.name} engine computes no gradients and hands out no per-layer hidden states; "
                   "interpret the HF folder or adapter (engine: transformers) for these")
            entry["attribution"] = entry["logit_lens"] = {"skipped": why}
        elif target.model.kind == "quantized":
            why = "an int8/int4 export's integer weights have no gradients; interpret its float model instead"
            entry["attribution"] = {"skipped": why}
            entry["logit_lens"] = logit_lens(engine, prompt, reply_ids)
        else:
            entry["attribution"] = attribution(engine, prompt, reply_ids[:ATTR_TOKENS], method)
            t2 = time.perf_counter()
            entry["logit_lens"] = logit_lens(engine, prompt, reply_ids)
            entry["seconds_parts"] = {"reply": round(t1 - t0, 3), "attribution": round(t2 - t1, 3),
                                      "logit_lens": round(time.perf_counter() - t2, 3)}
        entry["seconds"] = round(time.perf_counter() - t0, 3)
        prompts.append(entry)
    return {"target": target.name, "engine": engine.name, "top_k": TOP_K, "prompts": prompts}


def _special_ids(tok) -> list[int]:
    return sorted(set(tok.all_special_ids) | {i for t, i in tok.get_added_vocab().items() if t.startswith("<|")})


def attribution(engine, prompt: str, reply_ids: list[int], method: str = "gradient_x_input") -> dict:
    """Each of `reply_ids`' log-probability attributed onto the prompt's tokens (Captum; see the module doc)."""
    import torch

    if method not in METHODS:
        raise ValueError(f"attribution method {method!r}: expected one of {', '.join(METHODS)}")
    try:
        from captum.attr import (
            LayerGradientXActivation,
            LayerIntegratedGradients,
            LLMGradientAttribution,
            TextTokenInput,
        )
    except ImportError:  # said in the report where the heatmap would be, rather than failing the whole eval
        return {"skipped": "attributions need Captum: pip install 'llmkit[eval]'"}
    lm, tok = engine.lm, engine.tokenizer
    # a character cut in two at the end (byte-level tokens, the reply cut at ATTR_TOKENS) makes Captum's token
    # pretty-printer index past the end (captum 0.9 llm_attr); its last byte tokens explain nothing on their own
    while reply_ids and tok.decode(reply_ids).endswith("\ufffd"):
        reply_ids = reply_ids[:-1]
    if not reply_ids:
        return {"skipped": "the reply is empty: no token to explain"}
    inp = TextTokenInput(prompt, tok, baselines=0, skip_tokens=_special_ids(tok))
    emb = lm.get_input_embeddings()
    if method == "integrated_gradients":
        algo, kw = LayerIntegratedGradients(lm, emb), {"n_steps": IG_STEPS, "internal_batch_size": IG_STEPS}
        what = f"integrated gradients ({IG_STEPS} steps from token id 0 at each content token)"
    else:
        algo, kw, what = LayerGradientXActivation(lm, emb), {}, "gradient x input"
    with torch.enable_grad():
        res = LLMGradientAttribution(algo, tok).attribute(inp, target=torch.tensor(reply_ids), **kw)
    ids = inp.itp_tensor[0].tolist()
    scores = res.token_attr.float()  # (reply tokens, prompt tokens): d log p(reply token), summed over embedding dims
    return {"method": f"Captum {type(algo).__name__}: {what} on the input embeddings, of each reply token's "
                      "log-probability; template tokens kept and not scored",
            "input_tokens": [tok.decode([i]) for i in ids],
            "output_tokens": [tok.decode([i]) for i in reply_ids],
            "scores": [[round(float(v), 5) for v in row] for row in scores],
            "total": [round(float(v), 5) for v in scores.sum(0)]}


def _final_norm(lm):
    """The model's final norm and LM head (PEFT wrappers looked through), or (None, None) for an unknown layout."""
    inner = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    decoder = inner.get_decoder() if hasattr(inner, "get_decoder") else getattr(inner, "model", None)
    norm = next((getattr(decoder, n) for n in ("norm", "final_layernorm", "ln_f") if hasattr(decoder, n)), None)
    return norm, inner.get_output_embeddings()


def logit_lens(engine, prompt: str, reply_ids: list[int]) -> dict:
    """The top next token (and its probability) that each layer's hidden state decodes to, at the last positions."""
    import torch

    lm, tok = engine.lm, engine.tokenizer
    norm, head = _final_norm(lm)
    if norm is None or head is None:
        return {"skipped": f"{type(lm).__name__}: no final norm (norm, final_layernorm or ln_f) found to apply"}
    ids = engine.tokenize(prompt) + reply_ids[:-1]  # the last position predicts the last reply token
    n = min(LENS_POSITIONS, len(ids))
    with torch.inference_mode():
        out = lm(input_ids=torch.tensor([ids]), output_hidden_states=True)
        hs = out.hidden_states  # embeddings, then each layer's output; the last one already through the norm
        rows = []
        for i, h in enumerate(hs):
            # the model's own logits for the last row: whether hs[-1] is pre- or post-norm differs between models
            logits = out.logits[0, -n:] if i == len(hs) - 1 else head(norm(h[0, -n:]))
            p, top = torch.softmax(logits.float(), dim=-1).max(dim=-1)
            rows.append([[tok.decode([int(t)]), round(float(q), 4)] for t, q in zip(top, p)])
    return {"layers": ["embed", *[str(i) for i in range(1, len(hs) - 1)], f"{len(hs) - 1} (out)"],
            "positions": [tok.decode([i]) for i in ids[-n:]],
            "next": [tok.decode([i]) if i is not None else "" for i in (ids[1:] + (reply_ids[-1:] or [None]))[-n:]],
            "top": rows}


def mean_confidence(entry: dict) -> float | None:
    """The mean probability of the reply's tokens (the report's one-line summary of a token heatmap)."""
    lps = [t["logprob"] for t in entry.get("tokens", []) if t.get("logprob") is not None]
    return sum(math.exp(v) for v in lps) / len(lps) if lps else None
