"""Guardrails: one policy for data scrubbing, training data and runtime I/O.

    from llmkit.guard import Guard, load_policy
    guard = Guard(load_policy("policy.yaml"))
    guard.check("input", text)    # Verdict(blocked, text after redaction, hits)

Modules: policy (the YAML), rails (Guard, OutputStream for streamed replies), pii (Presidio), secrets
(detect-secrets), classify (the injection cascade and toxicity classifiers, alt-profanity-check), corpora
(their training data, with the hard cases in data/), encoder (MiniLM int8 for the cascade's second stage).
"""

from llmkit.guard.policy import Policy, data_guard, from_config, load_policy
from llmkit.guard.rails import Guard, Hit, OutputStream, Verdict

__all__ = ["Guard", "Hit", "OutputStream", "Policy", "Verdict", "data_guard", "from_config", "load_policy"]
