"""A reward the tiny random model can learn in a few GRPO steps, loaded by path as `module:function` rewards are."""


def digits(prompts, completions, **row_fields):
    """Share of a completion's characters that are digits (dense: every sample gets a graded score)."""
    assert len(row_fields["completion"]) == len(completions)  # the rows' fields arrive, one per completion
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]
