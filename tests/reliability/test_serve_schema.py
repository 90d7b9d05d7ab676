"""schemathesis against the server's own OpenAPI schema: every operation, with schema-valid and schema-invalid
requests, with and without API keys, the guard on — no answer is a 5xx, and every answer (OpenAI's error
envelope included) is one the schema declares: its status, content type, headers and body.

The server is the tiny GGUF on llama.cpp with a guard policy, a rag collection, a request log and the MiniLM
embedder (serve_fixtures.py). Generated bodies name a model that does not exist most of the time; a quarter of
them are pointed at the served ones (the model, the embedder, the collection, a logged request id) so that the
cases reach generation, retrieval, embeddings and feedback, not only the 404.

Left out on purpose: schemathesis's `positive_data_acceptance` check (a schema-valid request must not be a 400).
The guard refuses schema-valid texts by design (a denied topic, a length), as do a few cross-field rules
OpenAI's API has too (`top_logprobs` needs `logprobs`; `stream_options` needs `stream`): no schema can say them.
"""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance
from serve_fixtures import serve_dir
from serve_helpers import MODEL, make_state, running

from llmkit.serve.auth import KeyStore, hash_key

KEY = "sk-reliability-test"
EMBEDDER = "all-minilm-l6-v2"
POSITIVE, NEGATIVE = 40, 25  # examples per operation and mode: ~400 cases per server, ~20 s each


@pytest.fixture(scope="module", params=["no-keys", "keys"])
def api(request, tiny_gguf, tmp_path_factory):
    opts = serve_dir(tmp_path_factory.mktemp("schema"))
    keys = KeyStore({hash_key(KEY)}) if request.param == "keys" else KeyStore()
    state = make_state(tiny_gguf, embedder=EMBEDDER, keys=keys, engine="llamacpp", guard=opts["guard"],
                       rag=[opts["rag"]], request_log=opts["request_log"])
    with running(state) as srv:
        headers = {"Authorization": f"Bearer {KEY}"} if keys else {}
        r = srv.openai(KEY).chat.completions.create(model=MODEL, max_tokens=2,
                                                    messages=[{"role": "user", "content": "hi"}])
        yield srv, headers, r.id


def realistic(case, pick: int, request_id: str) -> None:
    """Point the case at what the server serves (pick 1-3 of 0-3), leaving pick 0 as generated."""
    if pick == 0:
        return
    if case.path_parameters and "model" in case.path_parameters:
        case.path_parameters["model"] = EMBEDDER if pick == 3 else MODEL
    body = case.body
    if not isinstance(body, dict):
        return
    if case.path == "/v1/embeddings":
        body["model"] = EMBEDDER
    elif case.path == "/v1/feedback":
        body["request_id"] = request_id
    elif "model" in body or pick > 1:
        body["model"] = MODEL
    if pick == 3 and isinstance(body.get("rag"), dict):
        body["rag"]["collection"] = "help"


def test_every_answer_matches_the_schema_and_none_is_a_5xx(api):
    srv, headers, request_id = api
    schema = schemathesis.openapi.from_url(f"{srv.url}/openapi.json")
    assert {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/feedback", "/v1/models", "/health"} \
        <= set(schema.raw_schema["paths"])
    assert ("securitySchemes" in schema.raw_schema.get("components", {})) == bool(headers)
    tested = []
    for result in schema.get_all_operations():
        op = result.ok()
        modes = [(GenerationMode.POSITIVE, POSITIVE)]
        if op.body:  # only bodies can be made schema-invalid here (no query or header parameters)
            modes.append((GenerationMode.NEGATIVE, NEGATIVE))
        for mode, n in modes:

            # a schema-invalid case stays as generated: pointing it at the model could make it valid
            picks = st.integers(0, 3) if mode == GenerationMode.POSITIVE else st.just(0)

            @given(case=op.as_strategy(generation_mode=mode), pick=picks)
            @settings(max_examples=n, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            def check(case, pick):
                realistic(case, pick, request_id)
                # not_a_server_error, status_code/content_type/response_schema/response_headers conformance,
                # negative_data_rejection, ignored_auth (with keys: the same request without one must be a 401), ...
                case.call_and_validate(headers=headers, timeout=60, excluded_checks=[positive_data_acceptance])

            check()
            tested.append(f"{op.label} {mode.value}")
    assert len(tested) >= 11, tested
    # every generated request was answered, none by a bug
    assert srv.metric("llmkit_requests_total", route="/v1/chat/completions", status="200") > 0
    assert sum(srv.metric("llmkit_requests_total", route=r, status="500") for r in schema.raw_schema["paths"]) == 0
