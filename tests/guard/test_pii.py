from llmkit.guard.pii import PiiScrubber

TEXT = "I'm Maria Lopez from Madrid; mail maria.lopez@example.com or call +1 415 555 0100. IP 10.1.2.3."


def test_presidio_mode_finds_names_places_and_patterns():
    text, found = PiiScrubber("presidio").redact(TEXT)
    assert "maria.lopez@" not in text and "Maria Lopez" not in text
    assert {"EMAIL_ADDRESS", "PHONE_NUMBER", "IP_ADDRESS", "PERSON"} <= set(found)
    assert "<EMAIL_ADDRESS>" in text and "<PERSON>" in text


def test_regex_mode_only_patterns():
    text, found = PiiScrubber("regex").redact(TEXT)
    assert "Maria Lopez" in text and "PERSON" not in found
    assert found["EMAIL_ADDRESS"] == 1 and "<IP_ADDRESS>" in text
    assert PiiScrubber("regex").redact("nothing personal here") == ("nothing personal here", {})


def test_regex_prefilters_change_no_finding():
    """The digit/character checks that skip recognizers must never lose a finding: same scans with and without."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from guard import ANSWER, REQUEST, pii_set

    from llmkit.guard.pii import STRUCTURED

    fast, full = PiiScrubber("regex", STRUCTURED), PiiScrubber("regex", STRUCTURED)
    full.prefilter = False
    texts = [REQUEST, ANSWER, "no digits here", "ip ::1 and 10.0.0.1", "iban de89 3704 0044 0532 0130 00",
             "call me at 415.555.0132 ext. 12 or +44 20 7946 0958, fax (415) 555-0133", "tel:+1-415-555-0199;x=1"]
    texts += [t for t, _ in pii_set(200)]
    assert all(fast.scan(t) == full.scan(t) for t in texts)
