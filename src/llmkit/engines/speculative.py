"""Speculative decoding by prompt lookup: draft tokens copied from earlier in the sequence, checked by the model.

A RAG or extractive reply copies long runs of its sources. Prompt lookup (llama-cpp-python's
`LlamaPromptLookupDecoding`, after apoorvumang/prompt-lookup-decoding) finds the sequence's last n-gram earlier in
the prompt + reply and proposes the tokens that followed it there. The engine feeds the pending token and the
draft to the model in one `llama_decode` with logits on every row, then samples row by row with the request's own
sampler chain and keeps drafts while the sampled token equals the draft (`LlamaCppEngine._verify`):

    rows:    pending  d1  d2  d3        (one decode, 4 rows of logits)
    sample:  s0 == d1? s1 == d2? s2 ...  the first mismatch's sample is still emitted, the rest is dropped

Every emitted token is sampled from the model's own distribution given the tokens before it, so greedy output is
the non-speculative output up to the rounding of a batched matmul (tests/engines/test_speculative.py compares
token for token at 1 thread; at 2 threads bench/spec_decode.py saw the 135M model's RAG answers flip at near-ties), and with temperature > 0 this is exactly the rejection rule of speculative sampling for a
draft that puts all its mass on one token (accept d with probability p(d), else sample from p without d):
nothing is approximated, and the sampler consumes one random draw per emitted token as without drafts.

A draft row costs compute: on 2 cores a decode of 2 rows takes ~2× one of 1 row, and each row after that
~0.4× more (bench/spec_decode.py prints the figures), so a draft pays only when ≥ 2-3 of its tokens are accepted.
Hence the schedule per sequence: after a draft that was wholly accepted the next may be 2 tokens longer (up to
`max_tokens`); after a partly accepted one it is twice what was accepted, at least 3 (MIN_DRAFT: a shorter draft
costs about what the tokens it could give cost without it); after one that gave fewer than 2 tokens drafting pauses for
1, 2, 4 ... 32 steps, so free-form text with only chance n-gram matches decodes almost as without drafts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Speculative = Literal["off", "prompt_lookup"]
SPECULATIVE: tuple[str, ...] = ("off", "prompt_lookup")
MIN_DRAFT = 3  # shorter drafts are not fed: a 2-row decode costs about what two 1-row decodes do (on 2 cores)


@dataclass
class Drafter:
    """One sequence's prompt-lookup drafting state."""

    max_tokens: int = 8  # longest draft (llama-cpp-python's num_pred_tokens)
    ngram: int = 3  # longest n-gram looked up (its max_ngram_size); shorter ones are tried after it, down to 1
    length: int = field(default=0)  # the current draft length, adapted to what was accepted
    pause: int = 0  # steps left without drafting
    backoff: int = 1  # the pause after the next draft rejected outright
    proposed: int = 0  # totals for this sequence
    accepted: int = 0

    def __post_init__(self) -> None:
        self.length = self.length or self.max_tokens

    def propose(self, history: list[int], limit: int) -> list[int]:
        """Up to min(length, limit) tokens that followed the last n-gram of `history` where it occurred before."""
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        if self.pause > 0:
            self.pause -= 1
            return []
        k = min(self.length, limit)
        if k <= 0 or len(history) < 2:
            return []
        ids = np.asarray(history, dtype=np.intc)
        draft = LlamaPromptLookupDecoding.find_candidate_pred_tokens(ids, self.ngram, k).tolist()
        return draft if len(draft) >= min(MIN_DRAFT, limit) else []

    def update(self, proposed: int, accepted: int) -> None:
        self.proposed += proposed
        self.accepted += accepted
        if accepted < 2:  # the step cost more than the tokens it gave (see above): back off
            self.pause, self.backoff = self.backoff, min(2 * self.backoff, 32)
            self.length = max(MIN_DRAFT, self.length // 2)
            return
        self.backoff = 1
        grown = proposed + 2 if accepted == proposed else 2 * accepted
        self.length = min(self.max_tokens, max(MIN_DRAFT, grown))
