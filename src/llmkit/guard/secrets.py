"""Secret detection: API keys, tokens and private keys, with Yelp's detect-secrets patterns.

detect-secrets scans files line by line and reports the secret's value but not where it is; a guard needs the
span to redact it, so this runs the same plugins' compiled `denylist` regexes with `finditer`. The default
plugin set is every regex-based detector (AWS, GitHub, GitLab, Slack, Stripe, JWT, private keys, …) except
"Public IP" (an IP address is the PII rail's business) and "Basic Auth" (it flags ordinary URLs). The entropy
and keyword detectors are left out: on prose and code answers they fire on hashes, hex colours and variable
names (measured: `Hex High Entropy String` on "BE" and "7E" in ordinary text).
"""

from __future__ import annotations

import re

from llmkit.errors import MissingExtra
from llmkit.guard.pii import Finding, outermost

_SKIP = {"Public IP (ipv4)", "Basic Auth Credentials"}
# A PEM block: detect-secrets matches its BEGIN line; the key is everything up to the END line.
_PEM_END = re.compile(r"-----END[ A-Z0-9]*PRIVATE KEY[- ]*")


class SecretScanner:
    def __init__(self, kinds: list[str] | None = None):
        try:
            from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
            from detect_secrets.plugins.base import RegexBasedDetector
        except ImportError:
            raise MissingExtra("secret detection needs detect-secrets: pip install detect-secrets==1.5.0") from None
        mapping = get_mapping_from_secret_type_to_class()
        regex_based = {k: v for k, v in mapping.items() if issubclass(v, RegexBasedDetector)}
        if kinds is not None:
            unknown = sorted(set(kinds) - set(regex_based))
            if unknown:
                raise ValueError(f"unknown secret kinds {unknown}; known: {sorted(regex_based)}")
        chosen = kinds if kinds is not None else [k for k in regex_based if k not in _SKIP]
        self.patterns = [(kind, rx) for kind in chosen for rx in regex_based[kind]().denylist]

    def scan(self, text: str) -> list[Finding]:
        found = []
        for kind, rx in self.patterns:
            for m in rx.finditer(text):
                start, end = m.span()
                if kind == "Private Key":
                    tail = _PEM_END.search(text, end)
                    end = tail.end() if tail else len(text)  # no END line: everything after BEGIN is key
                found.append(Finding(kind, start, end))
        return outermost(found)
