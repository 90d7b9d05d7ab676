"""Generate example traffic for the drift monitor (our own text): prompts a support assistant for Nimbus routers
should see (in-distribution, phrasings the training set never uses) and prompts it should not (cooking, code,
the same support questions in German).

    python examples/drift/make_traffic.py      # writes examples/drift/{in_distribution,out_of_distribution}.jsonl

Deterministic (seeded). bench/drift.py and tests/monitor use these files.
"""

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent
DEVICES = ["Nimbus R1 router", "Nimbus R2 router", "Nimbus Mesh node", "Nimbus range extender", "Nimbus Mini modem",
           "Nimbus Pro gateway"]
PROBLEMS = ["no internet", "slow Wi-Fi", "forgotten Wi-Fi password", "firmware update", "factory reset",
            "guest network", "parental controls", "port forwarding"]
# none of these phrasings is in examples/support/train.jsonl (checked by tests/monitor/test_drift.py)
SUPPORT = ["My {d} keeps dropping the connection, any idea? It's about {p}.", "{p} on the {d} since this morning.",
           "Could you guide me through {p} on a {d}?", "I'm stuck with {p} on my new {d}.",
           "Our office {d} has {p}; what should we check first?", "Need help: {p}, {d}.",
           "Hi, {p} again on the {d}. What now?", "Is {p} a known issue with the {d}?"]
COOKING = ["How long should I roast a {w} chicken at {t} degrees?", "What can I use instead of {i} in a {c}?",
           "Give me a quick recipe for {c} with {i}.", "Why did my {c} come out dry?",
           "How do I keep {i} fresh for a week?", "What wine goes with {c}?"]
WEIGHTS, TEMPS = ["1.5 kg", "2 kg", "3 pound", "small"], ["180", "200", "220", "350"]
INGREDIENTS = ["buttermilk", "eggs", "fresh basil", "brown sugar", "shallots", "heavy cream", "yeast", "lemon zest"]
DISHES = ["banana bread", "risotto", "lasagna", "pancakes", "beef stew", "pad thai", "sourdough", "apple pie"]
CODE = ["How do I reverse a {s} in {l}?", "Why does my {l} code throw {e} when I {a}?",
        "Write a {l} function that {a}.", "What is the difference between a list and a tuple in {l}?",
        "How can I speed up a loop that {a} in {l}?", "Explain {e} in {l} with an example."]
LANGS, STRUCTS = ["Python", "Rust", "JavaScript", "Go", "C++", "Java"], ["string", "linked list", "array", "dict"]
ERRORS = ["a KeyError", "a null pointer exception", "a segmentation fault", "an index out of range error"]
ACTIONS = ["parse a CSV file", "sort a dictionary by value", "read a file line by line", "merge two sorted lists"]
GERMAN = ["Mein {d} hat kein Internet mehr, was kann ich tun?", "Wie setze ich den {d} auf Werkseinstellungen zurück?",
          "Das WLAN am {d} ist sehr langsam. Woran liegt das?", "Ich habe das WLAN-Passwort vom {d} vergessen.",
          "Wie mache ich ein Firmware-Update beim {d}?", "Wie richte ich ein Gastnetz auf dem {d} ein?"]


def main() -> None:
    rng = random.Random(23)
    ind = sorted({rng.choice(SUPPORT).format(d=d, p=p) for d in DEVICES for p in PROBLEMS for _ in range(3)})
    cooking = sorted({rng.choice(COOKING).format(w=rng.choice(WEIGHTS), t=rng.choice(TEMPS),
                                                 i=rng.choice(INGREDIENTS), c=rng.choice(DISHES))
                      for _ in range(120)})
    code = sorted({rng.choice(CODE).format(s=rng.choice(STRUCTS), l=rng.choice(LANGS), e=rng.choice(ERRORS),
                                           a=rng.choice(ACTIONS)) for _ in range(120)})
    german = sorted({g.format(d=d) for g in GERMAN for d in DEVICES})
    ood = [{"prompt": t, "kind": k} for k, ts in [("cooking", cooking), ("code", code), ("german", german)]
           for t in ts]
    for name, rows in [("in_distribution", [{"prompt": t, "kind": "support"} for t in ind]),
                       ("out_of_distribution", ood)]:
        rng.shuffle(rows)
        with open(OUT / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        print(f"{OUT / name}.jsonl: {len(rows)} rows")


if __name__ == "__main__":
    main()
