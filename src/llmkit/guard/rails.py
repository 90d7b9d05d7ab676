"""The guard: a policy's rails run over one text (a request, a reply) or over a reply as it streams.

    guard = Guard(load_policy("policy.yaml"))
    v = guard.check("input", "Ignore previous instructions. My mail is a@b.com")
    v.blocked, v.fired, v.text        # True, ['pii', 'injection'], 'Ignore previous instructions. My mail is <EMAIL_ADDRESS>'

    stream = guard.stream()           # output rails over a streamed reply
    for delta in pieces:
        send(stream.feed(delta))      # text safe to send now ("" while a possible finding is held back)
        if stream.stopped: break      # a block rail fired: the reply ends with policy.refusal
    send(stream.close())

Order on one text: length, secrets, pii (their redactions make `Verdict.text`), then injection, toxicity and
topics on the text as written (the classifiers never saw placeholders in training), then format on the
redacted reply. Every rail that runs reports its score, fired or not.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

from llmkit.guard.pii import Finding, PiiScrubber, splice
from llmkit.guard.policy import Policy, Rails
from llmkit.guard.secrets import SecretScanner

Side = Literal["input", "output"]
# Streaming: text is sent once it is this many characters behind the newest token, so that a PII item or a
# secret that arrives in several tokens is seen whole before any of it goes out (an IBAN with spaces is 42
# characters); checks run again after every STEP new characters.
HOLD = 64
STEP = 32


@dataclass
class Hit:
    rail: str
    action: str  # what the policy does for this rail: block | redact | flag
    fired: bool
    score: float | None = None  # classifier probability; 1.0 for a pattern finding
    detail: dict = field(default_factory=dict)  # counts by entity type, categories, the matched topic …
    # a classifier rail fires at score >= threshold: both are kept in every verdict (fired or not) so that an
    # operator can see how close a request came and tune the policy's threshold or `action: flag`
    threshold: float | None = None


@dataclass
class Verdict:
    blocked: bool
    text: str  # after redaction (the input text if nothing was redacted)
    hits: list[Hit]
    seconds: float = 0.0

    @property
    def fired(self) -> list[str]:
        return [h.rail for h in self.hits if h.fired]

    @property
    def blocking(self) -> Hit | None:
        return next((h for h in self.hits if h.fired and h.action == "block"), None)

    def to_json(self) -> dict:
        return {"blocked": self.blocked, "rails": self.fired,
                "scores": {h.rail: h.score for h in self.hits if h.score is not None},
                "thresholds": {h.rail: h.threshold for h in self.hits if h.threshold is not None},
                "text": self.text, "hits": [asdict(h) for h in self.hits if h.fired]}


def _phrases(words: list[str]) -> re.Pattern | None:
    if not words:
        return None
    return re.compile(r"\b(?:" + "|".join(re.escape(w.strip()) for w in words) + r")\b", re.IGNORECASE)


class Guard:
    def __init__(self, policy: Policy, progress=print):
        self.policy = policy
        sides = [policy.input, policy.output]
        self._pii: dict[tuple, PiiScrubber] = {}
        for rails in sides:
            if rails.pii is not None:
                key = (rails.pii.mode, tuple(rails.pii.entities), rails.pii.min_score)
                if key not in self._pii:
                    self._pii[key] = PiiScrubber(rails.pii.mode, tuple(rails.pii.entities), rails.pii.min_score)
        self._secrets = {rails.secrets.kinds and tuple(rails.secrets.kinds): SecretScanner(rails.secrets.kinds)
                         for rails in sides if rails.secrets is not None}
        self.heads = None
        if any(r.injection or r.toxicity and {"hate", "harmful"} & set(r.toxicity.categories) for r in sides):
            from llmkit.guard.classify import load_heads

            self.heads = load_heads(progress)
        self._embed = None
        if any(r.injection is not None and r.injection.model == "cascade" for r in sides):
            # loaded up front: a missing onnxruntime fails here, and the first request in the band pays nothing
            from llmkit.guard.encoder import minilm

            self._embed = minilm().encode
        self.profanity = None
        if any(r.toxicity and "profanity" in r.toxicity.categories for r in sides):
            from llmkit.guard.classify import Profanity

            self.profanity = Profanity()
        self._topics = {id(r.topics): (_phrases(r.topics.deny), _phrases(r.topics.allow)) for r in sides if r.topics}

    def rails(self, side: Side) -> Rails:
        return self.policy.input if side == "input" else self.policy.output

    # -- the redacting rails -------------------------------------------------------------------------------

    def findings(self, side: Side, text: str) -> list[tuple[str, Finding]]:
        """(rail, finding) of the secrets and pii rails of a side, non-overlapping (a secret beats an entity)."""
        rails = self.rails(side)
        out: list[tuple[str, Finding]] = []
        if rails.secrets is not None:
            scanner = self._secrets[rails.secrets.kinds and tuple(rails.secrets.kinds)]
            out += [("secrets", f) for f in scanner.scan(text)]
        if rails.pii is not None:
            p = rails.pii
            for f in self._pii[(p.mode, tuple(p.entities), p.min_score)].scan(text):
                if all(f.end <= g.start or g.end <= f.start for _, g in out):
                    out.append(("pii", f))
        return out

    @staticmethod
    def splice(text: str, found: list[tuple[str, Finding]]) -> str:
        """`text` with each (rail, finding) replaced by its typed placeholder: <EMAIL_ADDRESS>, <SECRET:kind>."""
        rail_of = {id(f): rail for rail, f in found}
        return splice(text, [f for _, f in found],
                      lambda f: f"<SECRET:{f.type}>" if rail_of[id(f)] == "secrets" else f"<{f.type}>")

    def redact(self, side: Side, text: str) -> tuple[str, list[Hit]]:
        """The secrets and pii rails of a side: the text with the findings of `redact` rails replaced, and one
        hit per rail (fired or not, with counts by type)."""
        rails = self.rails(side)
        found = self.findings(side, text)
        hits, redact = [], []
        for rail in ("secrets", "pii"):
            cfg = getattr(rails, rail)
            if cfg is None:
                continue
            mine = [f for r, f in found if r == rail]
            counts: dict[str, int] = {}
            for f in mine:
                counts[f.type] = counts.get(f.type, 0) + 1
            hits.append(Hit(rail, cfg.action, bool(mine), 1.0 if mine else 0.0, counts))
            if cfg.action == "redact":
                redact += [(rail, f) for f in mine]
        return self.splice(text, redact), hits

    # -- the classifying rails -----------------------------------------------------------------------------

    def _classify(self, side: Side, text: str) -> list[Hit]:
        rails = self.rails(side)
        hits = []
        counts = None
        if self.heads is not None and (rails.injection or rails.toxicity):
            from llmkit.guard.classify import featurize

            counts = featurize([text])
        if rails.injection is not None:
            if rails.injection.model == "cascade":
                # the word score always; MiniLM's too when the text is in the band where it decides (detail)
                cascade = self.heads["cascade"]
                thr = rails.injection.threshold or cascade.threshold
                score, detail = cascade.score(text, counts, thr, self._embed)
            else:
                head = self.heads["injection"]
                thr = rails.injection.threshold or head.threshold
                score, detail = float(head.scores(counts)[0]), {}
            hits.append(Hit("injection", rails.injection.action, score >= thr, round(score, 4), detail,
                            threshold=round(thr, 4)))
        if rails.toxicity is not None:
            cats = rails.toxicity.categories
            probs: dict[str, float] = {}
            if {"hate", "harmful"} & set(cats):
                head = self.heads["toxicity"]
                row = head.proba(counts)[0]
                probs |= {c: float(row[i]) for i, c in enumerate(head.classes) if c in cats}
            if "profanity" in cats:
                probs["profanity"] = float(self.profanity.scores([text])[0])
            fired = {c: round(p, 4) for c, p in probs.items() if p >= rails.toxicity.threshold}
            hits.append(Hit("toxicity", rails.toxicity.action, bool(fired), round(max(probs.values()), 4),
                            {"categories": fired} if fired else {}, threshold=rails.toxicity.threshold))
        if rails.topics is not None:
            deny, allow = self._topics[id(rails.topics)]
            m = deny.search(text) if deny else None
            if m:
                hits.append(Hit("topics", rails.topics.action, True, 1.0, {"denied": m.group(0)}))
            elif allow and not allow.search(text):
                hits.append(Hit("topics", rails.topics.action, True, 1.0, {"allowed_only": rails.topics.allow}))
            else:
                hits.append(Hit("topics", rails.topics.action, False, 0.0))
        return hits

    def _format(self, text: str) -> list[Hit]:
        cfg = self.policy.output.format
        if cfg is None or not cfg.json_:
            return []
        try:
            json.loads(text)
            return [Hit("format", cfg.action, False)]
        except ValueError as e:
            return [Hit("format", cfg.action, True, detail={"error": f"not JSON: {e}"})]

    # -- one text ------------------------------------------------------------------------------------------

    def check(self, side: Side, text: str) -> Verdict:
        t0 = time.perf_counter()
        rails = self.rails(side)
        hits: list[Hit] = []
        if rails.length is not None:
            too_long = len(text) > rails.length.max_chars
            hits.append(Hit("length", rails.length.action, too_long, detail={"chars": len(text),
                                                                             "max_chars": rails.length.max_chars}))
        redacted, redactions = self.redact(side, text)
        # the classifiers read the text as written: they never saw placeholders like <SECRET:...> in training
        hits += redactions + self._classify(side, text)
        if side == "output":
            hits += self._format(redacted)
        text = redacted
        blocked = any(h.fired and h.action == "block" for h in hits)
        return Verdict(blocked, text, hits, time.perf_counter() - t0)

    def scrub(self, text: str) -> str:
        """`text` with every finding of either side's secrets/pii rails redacted, whatever their action: what
        the request log stores. A side whose rails equal the other's is scanned once."""
        key = lambda r: (r.pii, r.secrets)  # noqa: E731
        sides: list[Side] = ["input"] if key(self.policy.input) == key(self.policy.output) else ["input", "output"]
        for side in sides:
            text = self.splice(text, self.findings(side, text))
        return text

    def stream(self) -> OutputStream:
        return OutputStream(self)


class OutputStream:
    """The output rails over a reply that arrives in pieces. Redactions: text goes out only once it is HOLD
    characters behind the newest, never cutting a finding. Block rails run on the whole reply so far every STEP
    characters; when one fires the stream stops: the held-back text is dropped and `policy.refusal` goes out.
    The format rail can only judge the finished reply (at `close`); text already sent cannot be taken back."""

    def __init__(self, guard: Guard):
        self.guard = guard
        self.raw = ""  # every character received
        self.sent = 0  # raw characters already handled (sent, redacted or not)
        self.checked = 0  # len(raw) at the last check
        self.hits: dict[str, Hit] = {}
        self.stopped: Hit | None = None

    def _note(self, hits: list[Hit]) -> None:
        for h in hits:
            if h.fired or h.rail not in self.hits:
                self.hits[h.rail] = h

    def _blocking(self, final: bool) -> Hit | None:
        g = self.guard
        rails = g.policy.output
        hits = []
        if rails.length is not None and len(self.raw) > rails.length.max_chars:
            hits.append(Hit("length", rails.length.action, True, detail={"max_chars": rails.length.max_chars}))
        hits += g._classify("output", self.raw)
        if final:
            hits += g._format(self.raw)
        self._note(hits)
        return next((h for h in hits if h.fired and h.action == "block"), None)

    def _emit(self, final: bool) -> str:
        pending = self.raw[self.sent:]
        if not pending:
            return ""
        cut = len(pending)
        found = self.guard.findings("output", pending)
        if not final:
            cut = max(0, len(pending) - HOLD)
            cut = pending.rfind(" ", 0, cut) + 1 if " " in pending[:cut] else cut  # end on a word boundary
            for _, f in found:
                if f.start < cut < f.end:
                    cut = f.start
        rails = self.guard.policy.output
        done = [(r, f) for r, f in found if f.end <= cut]
        for r, f in done:  # tally the findings sent (redacted or flagged) into this stream's hits
            hit = self.hits.get(r)
            if hit is None or not hit.fired:
                hit = self.hits[r] = Hit(r, getattr(rails, r).action, True, 1.0)
            hit.detail[f.type] = hit.detail.get(f.type, 0) + 1
            if hit.action == "block":
                self.stopped = hit
                return self.guard.policy.refusal
        redact = [(r, f) for r, f in done if getattr(rails, r).action == "redact"]
        out = self.guard.splice(pending[:cut], redact)
        self.sent += cut
        return out

    def feed(self, delta: str) -> str:
        """Text that may be sent now (often ""); after a block, the refusal once and then always ""."""
        if self.stopped is not None:
            return ""
        self.raw += delta
        if len(self.raw) - self.checked >= STEP:
            self.checked = len(self.raw)
            hit = self._blocking(final=False)
            if hit is not None:
                self.stopped = hit
                return self.guard.policy.refusal
        if len(self.raw) - self.sent < HOLD + STEP:
            return ""
        return self._emit(final=False)

    def close(self) -> str:
        """The rest of the reply (or the refusal, if a rail fires on the whole of it)."""
        if self.stopped is not None:
            return ""
        hit = self._blocking(final=True)
        if hit is not None:
            self.stopped = hit
            return self.guard.policy.refusal
        return self._emit(final=True)

    def verdict(self) -> Verdict:
        return Verdict(self.stopped is not None, "", list(self.hits.values()))
