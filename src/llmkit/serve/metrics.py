"""Prometheus metrics of one server, in its own registry (two servers in one process, as in the tests, do not
mix their counts, and nothing else that registers globally leaks into /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# seconds; generation on CPU runs from tens of milliseconds (tiny models, errors) to minutes
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("llmkit_requests", "HTTP requests answered, by route template and status",
                                ["route", "status"], registry=r)
        self.request_seconds = Histogram("llmkit_request_seconds", "Time from request to the end of the response",
                                         ["route"], buckets=_LATENCY, registry=r)
        self.ttft = Histogram("llmkit_time_to_first_token_seconds", "Time from request to the first generated text",
                              ["route"], buckets=_LATENCY, registry=r)
        self.prompt_tokens = Counter("llmkit_prompt_tokens", "Prompt tokens of finished generations", registry=r)
        self.completion_tokens = Counter("llmkit_completion_tokens", "Generated tokens", registry=r)
        self.inflight = Gauge("llmkit_inflight_requests", "Requests being answered now", registry=r)
        self.relayed = Counter("llmkit_relayed_requests", "Generation requests relayed to an upstream as bytes (the "
                               "gateway's fast path, serve/relay.py)", ["route"], registry=r)
        self.rag_retrievals = Counter("llmkit_rag_retrievals", "Chat requests answered from a collection",
                                      ["collection"], registry=r)
        self.rate_limited = Counter("llmkit_rate_limited", "Requests refused by a rate limit", registry=r)
        self.cancelled = Counter("llmkit_cancelled_generations", "Generations cancelled (client gone or timeout)",
                                 ["reason"], registry=r)

        self.guard_hits = Counter("llmkit_guard_hits", "Guard rails that fired, by side (input|output), rail and action",
                                  ["side", "rail", "action"], registry=r)
        self.guard_seconds = Histogram("llmkit_guard_seconds", "Time of the guard rails on one text",
                                       ["side"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
                                       registry=r)
        # the drift monitor's last test (llmkit.monitor.live; set from its thread, never computed on a scrape)
        self.drift_score = Gauge("llmkit_drift_score", "Prompt drift against the training prompts: the drift test's "
                                 "score (mmd: MMD², classifier: ROC AUC)", registry=r)
        self.drift_p_value = Gauge("llmkit_drift_p_value", "p-value of the last drift test", registry=r)
        self.drift_alert = Gauge("llmkit_drift_alert", "1 when the drift score is over its threshold (p < 0.01)",
                                 registry=r)
        self.drift_samples = Gauge("llmkit_drift_samples", "Recent prompts in the last drift test", registry=r)
        self.drift_prompts = Gauge("llmkit_drift_prompts", "Prompts the drift monitor had seen in all at its last test",
                                   registry=r)
        # serving from the registry (serve/follow.py): the version served, switches to a new one, failed loads
        self.registry_version = Gauge("llmkit_registry_version", "Registry version served, by model id",
                                      ["model"], registry=r)
        self.registry_switches = Counter("llmkit_registry_switches", "Switches to a new registry version after its "
                                         "alias moved", ["model"], registry=r)
        self.registry_load_failures = Counter("llmkit_registry_load_failures", "New registry versions that failed "
                                              "to load (the old one kept serving)", ["model"], registry=r)
        self.feedback = Counter("llmkit_feedback", "Ratings sent to /v1/feedback", ["rating"], registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
