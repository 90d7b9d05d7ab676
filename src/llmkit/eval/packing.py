"""Log-likelihoods of many sequences in few forward passes, each shared prefix computed once ("tree packing").

A multiple-choice item asks for log P(choice | question) for each of its choices: the question is the same for
all of them. lm-evaluation-harness runs each (question + choice) as its own padded row, so the question is
computed once per choice, and the vocabulary projection runs on every position. Here the sequences of a call are
grouped by their shared prefix (a question, or a chat template's system prompt), and several groups are packed
into one row:

    row:  [question 1][choice a][choice b][choice c][question 2][choice a][choice b] ...

with a 4D attention mask that lets each choice see its own question and itself (causally), nothing else, and
position ids that restart each choice right after its question. The model computes each question once, in large
matrix products, and the vocabulary projection (`logits_to_keep`) runs only on the rows that score a token.
The results equal one sequence at a time up to float rounding (tests/eval/test_batched_scores.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Tokens per packed row. Attention over a row costs rows² (the mask is dense), the rest grows linearly: at 512 the
# attention is ~15% of a SmolLM2-135M pass on CPU; longer rows buy no larger matrix products worth having.
ROW_TOKENS = 512


def common_prefix(seqs: list[list[int]]) -> int:
    n = min(map(len, seqs))
    i = 0
    while i < n and all(s[i] == seqs[0][i] for s in seqs):
        i += 1
    return i


@dataclass
class _Row:
    ids: list[int] = field(default_factory=list)
    pos: list[int] = field(default_factory=list)  # position ids: a branch restarts right after its prefix
    group: list[int] = field(default_factory=list)  # which group each token belongs to
    branch: list[int] = field(default_factory=list)  # -1: the group's shared prefix, else the sequence's index
    where: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # seq -> (prefix at, prefix len, branch at)


def _groups(encoded: list[tuple[list[int], int]], keys: list[str]) -> list[list[int]]:
    """Sequence indexes grouped by key (a choice item's question), in order. A call of distinct keys only (a batch
    of text rows) is one group: what they share (a system prompt) is then computed once."""
    by: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        by.setdefault(k, []).append(i)
    groups = list(by.values())
    return [list(range(len(encoded)))] if len(groups) > 1 and all(len(g) == 1 for g in groups) else groups


def _pack(encoded: list[tuple[list[int], int]], groups: list[list[int]]) -> list[_Row]:
    rows, row = [], _Row()
    for gi, members in enumerate(groups):
        seqs = [encoded[i][0] for i in members]
        p = min(common_prefix(seqs), min(encoded[i][1] for i in members))  # the prefix holds no scored token
        size = p + sum(len(s) - p for s in seqs)
        if row.ids and len(row.ids) + size > ROW_TOKENS:
            rows.append(row)
            row = _Row()
        at = len(row.ids)
        row.ids += seqs[0][:p]
        row.pos += range(p)
        row.group += [gi] * p
        row.branch += [-1] * p
        for i, s in zip(members, seqs):
            row.where[i] = (at, p, len(row.ids))
            row.ids += s[p:]
            row.pos += range(p, len(s))
            row.group += [gi] * (len(s) - p)
            row.branch += [i] * (len(s) - p)
    if row.ids:
        rows.append(row)
    return rows


def _mask(row: _Row, dtype):
    """(1, 1, L, L) additive mask: token i sees token j when both are in one group, j is not later, and j is in
    the shared prefix or in i's own branch."""
    import torch

    g, b, pos = (torch.tensor(x) for x in (row.group, row.branch, row.pos))
    idx = torch.arange(len(row.ids))
    seen = ((g[:, None] == g[None, :]) & (pos[None, :] <= pos[:, None])
            & ((b[None, :] == -1) | (b[None, :] == b[:, None])))
    seen |= idx[:, None] == idx[None, :]
    mask = torch.zeros(len(row.ids), len(row.ids), dtype=dtype)
    return mask.masked_fill(~seen, torch.finfo(dtype).min)[None, None]


def packed_loglikelihoods(lm, encoded: list[tuple[list[int], int]], keys: list[str]) -> list[tuple[float, int]]:
    """(sum of logprobs of tokens[start:], count) for each (tokens, start), on a transformers causal LM; `keys`
    (one per sequence, e.g. its context string) say which sequences share a prefix."""
    import torch

    results: dict[int, tuple[float, int]] = {}
    dtype = next(lm.parameters()).dtype
    if not dtype.is_floating_point:  # quantized weights: the activations are the compute dtype
        dtype = torch.float32
    with torch.no_grad():  # (inference_mode refuses quanto's int4 unpacking; no_grad costs nothing here)
        for row in _pack(encoded, _groups(encoded, keys)):
            need: list[int] = []  # the row positions whose logits score a token, in order
            targets: list[tuple[int, list[int]]] = []
            for i, (at, p, b) in row.where.items():
                tokens, start = encoded[i]
                # token t (t >= start >= p) is scored by the row of token t - 1: the prefix's last or its own branch's
                rows = [at + t - 1 if t - 1 < p else b + (t - 1 - p) for t in range(start, len(tokens))]
                targets.append((i, list(range(len(need), len(need) + len(rows)))))
                need += rows
            out = lm(input_ids=torch.tensor([row.ids]), position_ids=torch.tensor([row.pos]),
                     attention_mask=_mask(row, dtype), use_cache=False, logits_to_keep=torch.tensor(need))
            lps = torch.log_softmax(out.logits[0].float(), dim=-1)  # (len(need), V)
            for i, cols in targets:
                tokens, start = encoded[i]
                got = lps[cols].gather(1, torch.tensor(tokens[start:])[:, None])
                results[i] = (float(got.sum()), len(tokens) - start)
    return [results[i] for i in range(len(encoded))]
