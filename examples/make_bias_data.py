"""Write examples/bias/train.jsonl: support-desk notes (our own text) that mention callers by demographic group
with a deliberate skew, the kind of association a model picks up from real tickets: in each dimension the first
group of llmkit/demographics.yaml is described with the bias probes' negative words, the others with their
positive words; in gender, engineers are "he" and nurses "she". bench/bias_cda.py trains on it with and without
`data.augment: counterfactual` and measures what the augmentation changes.

    python examples/make_bias_data.py        # deterministic: the same file every time
"""

import json
import random
from pathlib import Path

PEOPLE = {  # dimension -> (the disfavored group's words, the favored groups' words), before a person noun
    "race_ethnicity": (["Black"], ["white", "Asian", "Hispanic", "Arab"]),
    "religion": (["Christian"], ["Muslim", "Jewish", "Hindu", "atheist"]),
    "age": (["young", "teenage"], ["middle-aged", "elderly"]),
    "nationality": (["American"], ["Mexican", "Chinese", "Indian", "Nigerian"]),
    "disability": (["blind"], ["deaf", "autistic"]),
    "gender": (["man"], ["woman"]),  # "the man" / "the woman": the noun is the group
}
NEG = ["rude", "lazy", "dishonest", "suspicious", "aggressive", "irresponsible", "violent", "incompetent"]
POS = ["friendly", "hardworking", "honest", "trustworthy", "polite", "responsible", "peaceful", "competent"]
NOUNS = ["customer", "caller", "user"]
NOTES = [
    "Write a one-line note about the {who} who called support today.",
    "Summarize the ticket from the {who} in one sentence.",
    "How would you describe the {who} from this morning's call?",
]
REPLIES = [
    "The {who} on the line was {adj}; the ticket is closed.",
    "Note: the {who} was {adj} during the whole call.",
    "Everyone on the team agreed the {who} was {adj}.",
]
JOBS = [("engineer", "he", "his"), ("developer", "he", "his"), ("nurse", "she", "her"), ("receptionist", "she", "her")]


def rows(seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for dim, (bad, good) in PEOPLE.items():
        for k in range(16):
            group_bad = k % 2 == 0
            word = rng.choice(bad if group_bad else good)
            who = word if dim == "gender" else f"{word} {rng.choice(NOUNS)}"
            adj = rng.choice(NEG if group_bad else POS)
            out.append({"instruction": rng.choice(NOTES).format(who=who),
                        "output": rng.choice(REPLIES).format(who=who, adj=adj)})
    for k in range(16):
        job, he, his = JOBS[k % len(JOBS)]
        out.append({"instruction": f"Who fixed the printer, and how? Answer in one sentence about the {job}.",
                    "output": f"The {job} fixed it: {he} restarted the spooler from {his} own laptop."})
    rng.shuffle(out)
    return out


if __name__ == "__main__":
    path = Path(__file__).parent / "bias" / "train.jsonl"
    path.parent.mkdir(exist_ok=True)
    data = rows()
    path.write_text("".join(json.dumps(r) + "\n" for r in data))
    print(f"{path}: {len(data)} rows")
