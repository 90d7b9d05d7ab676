import pytest
from transformers import AutoTokenizer

from llmkit.train.template import IGNORE, TemplateError, encode_chat, encode_text, pack

CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Reset?"},
        {"role": "assistant", "content": "Hold the button."}, {"role": "user", "content": "And then?"},
        {"role": "assistant", "content": "Wait 2 min."}]


@pytest.fixture(scope="module")
def tok(tiny_llama):
    return AutoTokenizer.from_pretrained(tiny_llama)


def targets(tok, ex):
    """The text of each run of consecutive target tokens."""
    runs, cur = [], []
    for i, lab in zip(ex["input_ids"], ex["labels"]):
        if lab == IGNORE:
            if cur:
                runs.append(tok.decode(cur))
                cur = []
        else:
            assert lab == i
            cur.append(i)
    if cur:
        runs.append(tok.decode(cur))
    return runs


def test_only_assistant_replies_are_targets(tok):
    ex = encode_chat(tok, CONV)
    assert targets(tok, ex) == ["Hold the button.<|im_end|>\n", "Wait 2 min.<|im_end|>\n"]
    assert tok.decode(ex["input_ids"]) == tok.apply_chat_template(CONV, tokenize=False)


def test_truncation_and_text_rows(tok):
    assert len(encode_chat(tok, CONV, max_len=5)["input_ids"]) == 5
    ex = encode_text(tok, "Once upon a time")
    assert ex["labels"] == ex["input_ids"] and ex["input_ids"][-1] == tok.eos_token_id


def test_pack_restarts_positions_and_blocks_cross_example_targets(tok):
    exs = [encode_chat(tok, CONV[1:3]), encode_chat(tok, CONV[3:5]), encode_text(tok, "x " * 10)]
    n = [len(e["input_ids"]) for e in exs]
    packs = list(pack(exs, seq_len=n[0] + n[1]))
    assert len(packs) == 2
    p = packs[0]
    assert p["input_ids"] == exs[0]["input_ids"] + exs[1]["input_ids"]
    assert p["position_ids"] == list(range(n[0])) + list(range(n[1]))
    assert p["labels"][n[0]] == IGNORE  # first token of the 2nd example is not predicted from the 1st
    assert p["labels"][n[0] + 1:] == exs[1]["labels"][1:]
    assert all(len(q["input_ids"]) <= n[0] + n[1] for q in packs)


def test_template_without_prefix_property_is_refused(tok):
    class Odd:
        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return "".join(m["content"] for m in reversed(messages))

    with pytest.raises(TemplateError, match="prefixes"):
        encode_chat(Odd(), CONV[1:3])


@pytest.mark.integration
def test_smollm2_template_masks():
    from llmkit.models import hf_folder, resolve_model

    tok = AutoTokenizer.from_pretrained(hf_folder(resolve_model("smollm2-135m-instruct"), progress=False))
    ex = encode_chat(tok, CONV[1:3])
    assert targets(tok, ex) == ["Hold the button.<|im_end|>\n"]
    # the template's default system prompt is present and masked
    assert "named SmolLM" in tok.decode(ex["input_ids"]) and "SmolLM" not in "".join(targets(tok, ex))
