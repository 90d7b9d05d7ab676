"""Prompts with a checkable answer and a required answer format, for the GRPO example (examples/grpo.yaml).

    python examples/make_grpo_data.py          # writes examples/grpo/train.jsonl and examples/grpo/test.jsonl

Each row is a prompt/completion pair: the prompt asks a small arithmetic or unit-conversion question and says
how to answer ("Reply with one short line that ends with the number."); the completion is the reference
answer (the number). GRPO never trains on the completion: the rewards compare a sampled reply with it (the number, and the
format). Seeded, so the files are the same on every run; test.jsonl's questions are not in train.jsonl.
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent / "grpo"
# The bundled 135M model never once wrote "Answer: <n>" when asked to (0 of 64 samples, two phrasings), so
# a reward for that format would be 0 for every sample and GRPO would get no signal; a short line that ends with
# the number is a format it sometimes keeps (greedy: "7 * 8 = 56\nThe answer is 56." - two lines, so no).
FORMAT = "Reply with one short line that ends with the number."

# (unit, unit, factor): how many of the second in one of the first
UNITS = [("kilometers", "meters", 1000), ("meters", "centimeters", 100), ("kilograms", "grams", 1000),
         ("hours", "minutes", 60), ("minutes", "seconds", 60), ("days", "hours", 24), ("liters", "milliliters", 1000),
         ("centimeters", "millimeters", 10), ("weeks", "days", 7), ("dozens", "items", 12)]


def question(rng: random.Random) -> tuple[str, int]:
    kind = rng.choice(["add", "sub", "mul", "unit"])
    if kind == "add":
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        return f"What is {a} + {b}?", a + b
    if kind == "sub":
        a, b = rng.randint(10, 90), rng.randint(1, 9)
        return f"What is {a} - {b}?", a - b
    if kind == "mul":
        a, b = rng.randint(2, 12), rng.randint(2, 9)
        return f"What is {a} times {b}?", a * b
    big, small, factor = rng.choice(UNITS)
    n = rng.randint(2, 9)
    return f"How many {small} are in {n} {big}?", n * factor


def main() -> None:
    rng = random.Random(0)
    seen, rows = set(), []
    while len(rows) < 340:
        q, a = question(rng)
        if q in seen:
            continue
        seen.add(q)
        rows.append({"prompt": f"{q} {FORMAT}", "completion": str(a)})
    HERE.mkdir(exist_ok=True)
    for name, part in (("train", rows[:300]), ("test", rows[300:])):  # 40 held-out questions
        (HERE / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
        print(f"{HERE / name}.jsonl: {len(part)} rows")


if __name__ == "__main__":
    main()
