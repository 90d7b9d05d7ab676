"""Chat templating with completion-only labels, and packing without cross-contamination.

    ex = encode_chat(tok, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}])
    ex["labels"]     # -100 on the system/user/template tokens, the token id on the assistant's reply + end token

    packs = list(pack([ex1, ex2, ...], seq_len=512))
    packs[0]["position_ids"]   # restarts at 0 for every example packed into the sequence

The model's own chat template is the only source of the prompt format. SmolLM2's template has no
`{% generation %}` markers, so the assistant spans are found by rendering each conversation prefix: the text
the template adds for assistant turn i is `render(messages[:i+1])` minus `render(messages[:i] + generation
prompt)`. That works for every template where a rendered prefix is a prefix of the rendered whole (ChatML,
Llama, Mistral, Gemma…); a template for which it does not hold is refused with a clear error.

Packing: position_ids restart per example, which transformers uses to keep packed examples from attending to
each other (flash/sdpa varlen). Pitfall seen with transformers 5.24: this detection is skipped when
`config.use_cache=True`, so the train stage sets `use_cache=False`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

IGNORE = -100  # label value the loss skips (PyTorch cross_entropy's ignore_index)


class TemplateError(ValueError):
    pass


def _render(tok, messages: list[dict], add_generation_prompt: bool) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(tok, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of each assistant reply (with its end-of-turn)."""
    full = _render(tok, messages, False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _render(tok, messages[:i], True)
        upto = _render(tok, messages[: i + 1], False)
        if not (full.startswith(upto) and upto.startswith(before)):
            raise TemplateError("the chat template does not render conversation prefixes as prefixes of the whole; "
                                "completion-only labels cannot be derived from it")
        spans.append((len(before), len(upto)))
    return full, spans


def encode_chat(tok, messages: list[dict], max_len: int | None = None) -> dict:
    """input_ids and labels (IGNORE outside assistant replies) for one conversation."""
    full, spans = assistant_spans(tok, messages)
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE] * len(ids)
    for start, end in spans:
        for t, (a, _) in enumerate(offsets):
            # a token belongs to the reply if it starts inside the span (end-of-turn tokens have a == b-len)
            if start <= a < end:
                labels[t] = ids[t]
    if max_len is not None:
        ids, labels = ids[:max_len], labels[:max_len]
    return {"input_ids": ids, "labels": labels}


def encode_text(tok, text: str, max_len: int | None = None) -> dict:
    """Continued pretraining: every token is a target; EOS closes the document."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if tok.eos_token_id is not None:
        ids = ids + [tok.eos_token_id]
    if max_len is not None:
        ids = ids[:max_len]
    return {"input_ids": ids, "labels": list(ids)}


def pack(examples: Iterable[dict], seq_len: int) -> Iterator[dict]:
    """Greedily concatenate examples into sequences of at most `seq_len` tokens, in order.

    Each output has input_ids, labels and position_ids (restarting at 0 per example). An example longer than
    `seq_len` is truncated to it (the data stage's max_tokens filter normally removes those first). At the
    boundary between two examples the first token of the next one is never a target of the previous one:
    labels are per example and shifting happens inside each.
    """
    cur: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
    for ex in examples:
        ids, labels = ex["input_ids"][:seq_len], ex["labels"][:seq_len]
        if cur["input_ids"] and len(cur["input_ids"]) + len(ids) > seq_len:
            yield cur
            cur = {"input_ids": [], "labels": [], "position_ids": []}
        cur["input_ids"] += ids
        # the first label of every example is ignored: the model predicts it from the previous example's end
        cur["labels"] += [IGNORE] + labels[1:] if labels else []
        cur["position_ids"] += list(range(len(ids)))
    if cur["input_ids"]:
        yield cur
