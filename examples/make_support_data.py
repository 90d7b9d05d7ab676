"""Generate the example support dataset (our own text) that the README pipeline trains on.

    python examples/make_support_data.py        # writes examples/support/{train,val,preference,eval}.jsonl

The taught style is easy to recognise in a model's answers: every reply opens with "Nimbus here!", gives
numbered steps, and signs off with "— Happy networking!". The set deliberately holds a few exact and near
duplicates and some rows with e-mail addresses and phone numbers, so the data card has something to show.

The last rows teach the same style with retrieved sources: the user turn is exactly what the server sends the
model for a chat that names a RAG collection (`llmkit.rag.answer.augment`: numbered sources, the question, the
instruction to cite), the sources the ones llmkit's own retriever finds for the question in examples/support/docs
(so the model sees what serving will show it, distractors included), and the reply answers from the right
source and cites its number. Questions here are worded apart from rag_questions.jsonl, which `rag eval` scores.
Deterministic (seeded); re-running rewrites the same files (the RAG rows need llmkit installed: they index
the docs with the bundled MiniLM embedder into a temporary folder).
"""

import json
import random
import re
from pathlib import Path

OUT = Path(__file__).resolve().parent / "support"

DEVICES = ["Nimbus R1 router", "Nimbus R2 router", "Nimbus Mesh node", "Nimbus range extender", "Nimbus Mini modem",
           "Nimbus Pro gateway"]
PROBLEMS = {
    "no internet": ["Check that the WAN light on the {d} is solid white.",
                    "Unplug the {d} for 30 seconds, then plug it back in.",
                    "Open the Nimbus app and run Network Check.",
                    "If the light stays amber, call your provider to confirm the line is active."],
    "slow Wi-Fi": ["Move the {d} to an open spot, off the floor and away from the microwave.",
                   "In the Nimbus app, switch the band to 5 GHz for devices close by.",
                   "Turn on Smart Channel so the {d} avoids busy channels.",
                   "Run Speed Test in the app and compare it with your plan."],
    "forgotten Wi-Fi password": ["Open the Nimbus app and sign in.",
                                 "Go to Wi-Fi > Networks and tap your network name.",
                                 "Tap Show password, or set a new one and save.",
                                 "Reconnect your devices with the new password."],
    "firmware update": ["Open the Nimbus app and go to Settings > Firmware.",
                        "Tap Check for updates while the {d} is online.",
                        "Keep the {d} plugged in; the update takes about five minutes.",
                        "The light blinks blue during the update and turns white when it is done."],
    "factory reset": ["Find the small Reset hole on the back of the {d}.",
                      "Press and hold it with a paperclip for 10 seconds, until the light blinks red.",
                      "Wait two minutes for the {d} to restart.",
                      "Set it up again in the Nimbus app as if it were new."],
    "guest network": ["Open the Nimbus app and go to Wi-Fi > Guest network.",
                      "Turn it on and choose a name and password for guests.",
                      "Set how long guest access should last.",
                      "Share the QR code the app shows with your guests."],
    "parental controls": ["Open the Nimbus app and go to Family.",
                          "Create a profile for each person and add their devices.",
                          "Set bedtime hours and pick content filters.",
                          "Tap Pause on a profile to stop its internet at once."],
    "port forwarding": ["Open the Nimbus app and go to Advanced > Port forwarding.",
                        "Tap Add rule and pick the device that needs the port.",
                        "Enter the external and internal port numbers and the protocol.",
                        "Save, then test the port from outside your network."],
}
ASKS = ["My {d} has {p}. What should I do?", "How do I fix {p} on the {d}?", "I need help with {p} on my {d}.",
        "{p} on the {d} again, any tips?", "Can you walk me through {p} for a {d}?",
        "What are the steps for {p} with the {d}?"]
OPENERS = ["Nimbus here!", "Nimbus here! Happy to help."]
PII_ASKS = ["My {d} has {p}. You can reach me at {email} if you need more details.",
            "I have {p} on my {d}; call me back on {phone} please."]
NAMES = ["alex", "sam", "jordan", "robin", "casey", "lee", "morgan", "taylor"]


def answer(device: str, problem: str, rng: random.Random) -> str:
    steps = [s.format(d=device) for s in PROBLEMS[problem]]
    body = "\n".join(f"{i}. {s}" for i, s in enumerate(steps, 1))
    return f"{rng.choice(OPENERS)} Let's sort out the {problem} on your {device}.\n\n{body}\n\n— Happy networking!"


# (question, the doc and heading that answer it, the answer in the taught style; {n} is that source's number).
# Where the doc has numbered steps the answer repeats them word for word: a 135M model copies more readily than it
# paraphrases (with paraphrased steps the tuned model cited [1] but garbled the step).
RAG_QA = [
    ("How do I factory reset my Nimbus R2?", "r2-router.md", "Factory reset",
     "Find the small Reset hole on the back of the R2, next to the power socket [{n}]. Press and hold it with a "
     "paperclip for 10 seconds, until the light blinks red [{n}]. Wait two minutes for the router to restart [{n}]. "
     "Set it up again in the Nimbus app as if it were new [{n}]."),
    ("My R2 light is blinking red, is something wrong?", "r2-router.md", "Lights",
     "A blinking red light means the router is resetting to factory settings [{n}]."),
    ("The light on my R2 is amber. Why?", "r2-router.md", "Lights",
     "Amber means there is no internet on the WAN port: check the cable to your modem [{n}]."),
    ("Where do I set up port forwarding on the R2?", "r2-router.md", "Port forwarding",
     "In the Nimbus app go to Advanced > Port forwarding and tap Add rule; the R2 holds up to 32 rules [{n}]."),
    ("How long does an R2 firmware update take?", "r2-router.md", "Firmware update",
     "About five minutes; the light blinks blue during the update and turns white when it is done [{n}]."),
    ("How big a home does the R2 cover?", "r2-router.md", "Nimbus R2 router",
     "The R2 is made for homes up to about 150 square metres [{n}]."),
    ("Where should I plug in a new mesh node?", "mesh-node.md", "Adding a node",
     "Plug the node in halfway between the router and the area with weak Wi-Fi [{n}]. In the Nimbus app, tap Add "
     "device > Mesh node and scan the QR code on its base [{n}]. Wait until the node's light turns solid white [{n}]."),
    ("Can I put a mesh node next to the microwave?", "mesh-node.md", "Placement",
     "Better not: keep nodes off the floor and away from microwaves, fish tanks and metal shelves [{n}]."),
    ("How much area does one mesh node cover?", "mesh-node.md", "Nimbus Mesh node",
     "Each node covers about 90 square metres, and up to six nodes join one router [{n}]."),
    ("Do my mesh nodes carry the guest Wi-Fi too?", "mesh-node.md", "Guest network",
     "Yes: the guest network is set on the router and every mesh node carries it [{n}]."),
    ("Is my Nimbus Mini modem also a Wi-Fi router?", "mini-modem.txt", None,
     "No: the Mini modem has no Wi-Fi of its own; it hands the connection to a router through its Ethernet port [{n}]."),
    ("The WAN light on my Mini modem stays amber, what do I do?", "mini-modem.txt", None,
     "Unplug the modem for 30 seconds, plug it back in and wait; if the light is still amber, call your provider "
     "to confirm the line is active [{n}]."),
    ("How do I pause the internet for my son's profile?", "parental-controls.html", "Pausing the internet",
     "Tap Pause on his profile to stop its internet at once, and Resume to give it back [{n}]."),
    ("Which content filters can I pick for a profile?", "parental-controls.html", "Bedtime and filters",
     "You can pick Kids, Teens or Adults for each profile [{n}]."),
    ("Where do I create family profiles?", "parental-controls.html", "Profiles",
     "Open the Nimbus app and go to Family, then create a profile for each person and add their devices [{n}]."),
    ("How do I see my Wi-Fi password on the Pro gateway?", "pro-gateway.md", "Forgotten Wi-Fi password",
     "In the Nimbus app go to Wi-Fi > Networks, tap your network name and tap Show password [{n}]."),
    ("Where is the serial number of my Pro gateway?", "pro-gateway.md", "Warranty",
     "It is on the label under the gateway; keep your receipt for the two-year warranty [{n}]."),
    ("My Pro gateway Wi-Fi is slow, what should I try first?", "pro-gateway.md", "Slow Wi-Fi",
     "Move the gateway to an open spot, off the floor and away from the microwave [{n}]. In the Nimbus app, switch "
     "devices close by to the 5 GHz or 6 GHz band [{n}]. Turn on Smart Channel so the gateway avoids busy "
     "channels [{n}]."),
]


def rag_rows(rng: random.Random) -> list[dict]:
    """RAG_QA as training rows in the served prompt format, the sources from llmkit's retriever (top 3)."""
    import tempfile

    from llmkit.config import RagConfig
    from llmkit.rag import index
    from llmkit.rag.answer import augment
    from llmkit.rag.retrieve import open_index

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        index(RagConfig(sources=[str(OUT / "docs")], collection="nimbus"), Path(tmp) / "rag", progress=False)
        idx = open_index(Path(tmp) / "rag")
        for question, doc, heading, reply in RAG_QA:
            hits = idx.search(question, top_k=3)
            right = [i for i, h in enumerate(hits) if h.source.endswith(doc) and (heading is None or h.heading == heading)]
            if not right:  # the retriever missed it: put the right chunk in, as a better retriever would
                gold = next(h for h in idx.search(f"{heading or ''} {question}", top_k=20)
                            if h.source.endswith(doc) and (heading is None or h.heading == heading))
                hits[rng.randrange(len(hits))] = gold
                right = [hits.index(gold)]
            # the taught shape (opener, numbered steps, sign-off), each step citing the source it comes from
            steps = [x.strip().rstrip(".") for x in re.split(r"(?<=[.;])\s+", reply.format(n=right[0] + 1)) if x.strip()]
            body = "\n".join(f"{i}. {x[0].upper()}{x[1:]}." for i, x in enumerate(steps, 1))
            text = f"{rng.choice(OPENERS)} Here is what the guide says.\n\n{body}\n\n— Happy networking!"
            for k in (3, 2):  # the same answer beside three and beside two sources
                user = augment([{"role": "user", "content": question}], hits[:k] if right[0] < k else hits)
                rows.append({"instruction": user[-1]["content"], "input": "", "output": text})
    return rows


def main() -> None:
    rng = random.Random(7)
    rows, seen = [], set()
    for device in DEVICES:
        for problem in PROBLEMS:
            for ask in ASKS:
                q = ask.format(d=device, p=problem)
                q = q[0].upper() + q[1:]
                if q in seen:
                    continue
                seen.add(q)
                rows.append({"instruction": q, "input": "", "output": answer(device, problem, rng)})
    for i in range(12):  # rows with personal data, for the PII scrubber
        device, problem = rng.choice(DEVICES), rng.choice(list(PROBLEMS))
        name = rng.choice(NAMES)
        q = rng.choice(PII_ASKS).format(d=device, p=problem, email=f"{name}{i}@example.com",
                                        phone=f"+1 415 555 01{i:02d}")
        rows.append({"instruction": q, "input": "", "output": answer(device, problem, rng)})
    rng.shuffle(rows)
    rows += rows[:8]  # exact duplicates
    rows += [{**r, "instruction": r["instruction"].replace("?", " please?")} for r in rows[8:14]]  # near duplicates
    rows += rag_rows(random.Random(11))  # the style with retrieved sources, citing them (its own seed)
    # held-out questions: phrasings the training rows never use, one per device and problem
    val_asks = ["Why does my {d} have {p}?", "Quick question about {p} on a {d}.", "Is there a fix for {p} on the {d}?"]
    held = [{"instruction": rng.choice(val_asks).format(d=d, p=p), "input": "", "output": answer(d, p, rng)}
            for d in DEVICES for p in PROBLEMS]
    pref = []
    for r in rows[:60]:
        plain = r["output"].split("\n\n")[1].replace("\n", " ")
        pref.append({"prompt": r["instruction"], "chosen": r["output"],
                     "rejected": f"Try this: {plain} Good luck."})
    # eval items: questions in phrasings neither train nor val uses, checked for the taught style (its own seed,
    # so the files above stay as they were)
    erng = random.Random(17)
    eval_asks = ["Help! {p} on my {d}.", "Could you help me with {p} on a {d}?", "What do I do about {p} on my {d}?"]
    evals = [{"type": "generate", "id": f"{p.replace(' ', '-').lower()}-{k}",
              "prompt": erng.choice(eval_asks).format(d=erng.choice(DEVICES), p=p),
              "checks": {"contains": "Nimbus here!", "regex": r"(?m)^1\. "}}
             for p in list(PROBLEMS)[:6] for k in range(2)]
    OUT.mkdir(exist_ok=True)
    for name, data in [("train", rows), ("val", held), ("preference", pref), ("eval", evals)]:
        with open(OUT / f"{name}.jsonl", "w") as f:
            for r in data:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(f"{OUT / name}.jsonl: {len(data)} rows")


if __name__ == "__main__":
    main()
