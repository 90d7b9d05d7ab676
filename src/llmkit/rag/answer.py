"""The prompt that answers a question from retrieved chunks: shared by the server (a chat request naming a
collection) and `llmkit rag eval` (answer faithfulness), so both measure and serve the same thing."""

from __future__ import annotations

from llmkit.rag.retrieve import Hit

# Short on purpose: it is in every rag prompt, and the sources need the context.
INSTRUCTION = "Answer the question from the sources above and cite the source number like [1]."


def augment(messages: list[dict], hits: list[Hit]) -> list[dict]:
    """The messages with the numbered sources, the question and the instruction in the last user message.

    Why there and in that order: SmolLM2-135M, given the sources in the system message, answered "How long do I
    hold the reset button?" with an invented "1.5mm"; given "Sources … Question … instruction" as the user turn
    it quoted the right step ("hold it with a paperclip for 10 seconds") — but only with bare "[n] text" sources:
    with a "source: path — heading" line above each it answered from the wrong one. The file, page and heading
    go to the client in `citations` instead. It still rarely writes [n] itself."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "user")
    sources = "\n\n".join(f"[{i}] {h.text}" for i, h in enumerate(hits, 1))
    if hits:
        content = f"Sources:\n\n{sources}\n\nQuestion: {messages[last]['content']}\n\n{INSTRUCTION}"
    else:
        content = f"{messages[last]['content']}\n\n(No source holds the answer: say that you do not know.)"
    return [*messages[:last], {"role": "user", "content": content}, *messages[last + 1:]]
