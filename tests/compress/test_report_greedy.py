"""The quality report's greedy decoding stops where the context ends instead of failing (llama.cpp rounds a
small n_ctx up to 256, but llama-cpp-python's scores hold only the rows asked for)."""

from llmkit.compress.report import _greedy


def test_greedy_stops_at_the_end_of_the_context(tiny_gguf):
    from llama_cpp import Llama

    llm = Llama(str(tiny_gguf), n_ctx=64, n_threads=1, logits_all=True, verbose=False)
    try:
        assert llm.n_ctx() > 64 and len(llm.scores) == 64  # the mismatch the loop must respect
        for prompt_len, n, room in ((10, 5, 54), (60, 10, 4), (63, 10, 1), (64, 10, 0)):
            out, seconds = _greedy(llm, list(range(5, 5 + prompt_len)), n)
            assert len(out) <= min(n, room) and llm.n_tokens <= 64
        out, _ = _greedy(llm, list(range(5, 15)), 5)
        assert len(out) in range(6)  # a short prompt decodes as before (eos may end it early)
    finally:
        llm.close()
