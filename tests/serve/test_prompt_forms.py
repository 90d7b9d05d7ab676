"""/v1/completions with every prompt form OpenAI takes (text, texts, token ids, lists of token ids) and with echo:
the prompt's own tokens scored (logprobs, `max_tokens: 0`), on both engines, checked against a plain transformers
forward pass over the same tokens."""

import httpx
import pytest
from serve_helpers import MODEL

PROMPTS = ["The quick brown fox", "Paris is the capital of"]


@pytest.fixture(scope="module", params=["transformers", "llamacpp"])
def srv(request, tiny_llama, tiny_gguf):
    from serve_helpers import make_state, running

    model = tiny_gguf if request.param == "llamacpp" else tiny_llama
    with running(make_state(model, engine=request.param, max_inflight=4)) as r:
        yield r


@pytest.fixture(scope="module")
def tok(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


def ids_of(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_token_id_prompts_complete_like_their_text(srv, tok):
    client = srv.openai()
    ask = {"model": MODEL, "max_tokens": 6, "temperature": 0}
    by_text = [c.text for c in client.completions.create(prompt=PROMPTS, **ask).choices]
    single = client.completions.create(prompt=ids_of(tok, PROMPTS[0]), **ask)
    batch = client.completions.create(prompt=[ids_of(tok, t) for t in PROMPTS], **ask)
    assert single.choices[0].text == by_text[0]
    assert [c.text for c in sorted(batch.choices, key=lambda c: c.index)] == by_text
    assert single.usage.prompt_tokens == len(ids_of(tok, PROMPTS[0]))


def test_token_ids_outside_the_vocabulary_are_a_400(srv, tok):
    for prompt, param in (([1, 10**6], "prompt"), ([[1, 2], [3, 10**6]], "prompt[1]"), ([1, -2], None)):
        r = httpx.post(f"{srv.url}/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 1},
                       timeout=60)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and err["param"].startswith("prompt")
        if param:
            assert err["param"] == param and "vocabulary" in err["message"]


def test_max_tokens_0_needs_echo(srv):
    r = httpx.post(f"{srv.url}/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 0}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"


def test_echo_scores_the_prompt_like_a_forward_pass(srv, tok, tiny_llama):
    import torch
    from transformers import AutoModelForCausalLM

    text = PROMPTS[1]
    ids = ids_of(tok, text)
    r = srv.openai().completions.create(model=MODEL, prompt=text, echo=True, logprobs=2, max_tokens=0)
    c = r.choices[0]
    assert c.text == text and r.usage.completion_tokens == 0
    lp = c.logprobs
    assert len(lp.tokens) == len(ids) and "".join(lp.tokens) == text
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing precedes the first token
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(len(ids))]
    lm = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    with torch.no_grad():
        want = torch.log_softmax(lm(torch.tensor([ids])).logits[0].float(), -1)  # (T, V): row t scores token t+1
    expected = [float(want[t - 1, ids[t]]) for t in range(1, len(ids))]
    assert lp.token_logprobs[1:] == pytest.approx(expected, abs=2e-3)
    for t in range(1, len(ids)):
        top = lp.top_logprobs[t]
        assert len(top) == 2 and max(top.values()) == pytest.approx(float(want[t - 1].max()), abs=2e-3)


def test_echo_with_new_tokens_and_token_id_batches(srv, tok):
    client = srv.openai()
    plain = client.completions.create(model=MODEL, prompt=PROMPTS, max_tokens=3, temperature=0)
    r = client.completions.create(model=MODEL, prompt=[ids_of(tok, t) for t in PROMPTS], max_tokens=3, temperature=0,
                                  echo=True, logprobs=1)
    for c, p, text in zip(sorted(r.choices, key=lambda c: c.index), sorted(plain.choices, key=lambda c: c.index),
                          PROMPTS):
        n = len(ids_of(tok, text))
        assert c.text == text + p.text
        lp = c.logprobs
        assert len(lp.tokens) > n  # the prompt's tokens, then the new ones (3, fewer if the end token came)
        assert lp.token_logprobs[0] is None and all(x is not None for x in lp.token_logprobs[1:])
        assert all(o >= len(text) for o in lp.text_offset[n:])  # the completion's offsets follow the echo
    # echo without logprobs: just the text, no scoring
    r = client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=2, temperature=0, echo=True)
    assert r.choices[0].text.startswith(PROMPTS[0]) and r.choices[0].logprobs is None
