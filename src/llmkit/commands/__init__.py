"""Command groups of the `llmkit` CLI that are too big to sit in cli.py: each module has `add_parser(sub)` and
the functions it dispatches to."""

from __future__ import annotations


def validated(model, data: dict):
    """A config model from CLI flags; a bad value becomes a ConfigError naming the flag."""
    from pydantic import ValidationError

    from llmkit.errors import ConfigError

    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError([f"--{'-'.join(map(str, err['loc'])).replace('_', '-')}: {err['msg']}"
                           for err in e.errors()]) from None
