"""The data stage: load, validate, clean, dedupe, scrub PII, measure, split; see prepare.py."""

from llmkit.data.prepare import PrepareResult, prepare

__all__ = ["PrepareResult", "prepare"]
