"""The command groups of the `llmkit` CLI, one module each (models, chat, recipe: validate and run, data, train,
compress, serve, rag, guard, keys, lineage). Each has `add_parser(sub)` and the functions it dispatches to;
cli.py only builds the root parser from them, handles `--debug` and translates errors."""

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
