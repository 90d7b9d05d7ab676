"""Guardrails: one policy for data scrubbing, training data and runtime I/O."""
