"""Talking to any OpenAI-compatible endpoint (our server, llama-cpp-python's, vLLM's, a hosted API): the client
and one greedy chat call. Shared by rag's answer-faithfulness judge and eval's LLM judge, which sit on floors
that may not import each other's code for this.

    c = client("http://127.0.0.1:8000/v1")
    reply = chat(c, first_model(c), "Is the sky blue? One word.", max_tokens=4)
"""

from __future__ import annotations

from llmkit.errors import LlmkitError, MissingExtra


def client(endpoint: str, api_key: str | None = None, *, max_retries: int = 1, timeout: float = 300):
    """An `openai.OpenAI` client for `endpoint` (a base URL ending in /v1); no key means the literal "none"."""
    try:
        import openai
    except ImportError:
        raise MissingExtra("talking to an OpenAI-compatible endpoint needs the openai client: pip install openai") from None
    return openai.OpenAI(base_url=endpoint, api_key=api_key or "none", max_retries=max_retries, timeout=timeout)


def first_model(c) -> str:
    """The first model id the endpoint lists (GET /v1/models)."""
    import openai

    try:
        return c.models.list().data[0].id
    except (openai.APIError, IndexError) as e:
        raise LlmkitError(f"{c.base_url}: cannot list its models (name the model): {e}") from None


def chat(c, model: str, content: str | list[dict], max_tokens: int) -> str:
    """The greedy (temperature 0) reply to one user message, or to a list of {role, content} messages."""
    import openai

    messages = [{"role": "user", "content": content}] if isinstance(content, str) else content
    try:
        r = c.chat.completions.create(model=model, temperature=0, max_tokens=max_tokens, messages=messages)
    except openai.APIError as e:
        raise LlmkitError(f"{c.base_url}: {e}") from None
    return r.choices[0].message.content or ""
