"""The command groups of the `llmkit` CLI, one module each (models, chat, recipe: validate and run, data, train,
compress, serve, rag, guard, keys, lineage). Each has `add_parser(sub)` and the functions it dispatches to;
cli.py only builds the root parser from them, handles `--debug` and translates errors."""

from __future__ import annotations


def quiet_known_noise() -> None:
    """Silence library chatter we know to be harmless, so a normal run shows llmkit's progress and results
    (`--debug` keeps it all). Each entry names why it is harmless; errors are never silenced."""
    import logging
    import os
    import warnings

    # transformers 5 draws a "Loading weights" bar at every model load (under a second for our models) and only
    # huggingface_hub's switch turns it off; offline that switch can hide no download bar, so it is set then
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # bitsandbytes 0.50, imported by peft at every LoRA/chat start, tries on AVX512-BF16 CPUs to fetch an optional
    # CPU kernel from the hub through the `kernels` package, and logs a warning when it can't; its built-in CPU
    # ops are what runs then (and what our QLoRA tests use)
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    # peft 0.21 reads `model.is_gradient_checkpointing`, which transformers 5.24 deprecates in favour of
    # `is_activation_checkpointing`: peft's to change, nothing for a user to do
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    # MLflow's SQL store logs a database error with its whole traceback and then raises it again (as an
    # MlflowException): the raised error is what reaches the user, as llmkit's one-line message (a full disk:
    # DiskFull naming the path), so the logged copy is a duplicate
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def validated(model, data: dict):
    """A config model from CLI flags; a bad value becomes a ConfigError naming the flag."""
    from pydantic import ValidationError

    from llmkit.errors import ConfigError

    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError([f"--{'-'.join(map(str, err['loc'])).replace('_', '-')}: {err['msg']}"
                           for err in e.errors()]) from None
