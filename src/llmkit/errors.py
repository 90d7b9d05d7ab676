"""Typed errors. The library raises these; the edges (CLI, server) translate them.

The CLI prints `error: <message>` and exits with `exit_code`; the server maps `http_status` and `type` onto
OpenAI's error envelope. Messages name the file, line and field where there is one, and what was expected.
"""

from __future__ import annotations


class LlmkitError(Exception):
    """Base class: anything a user can fix by changing their input or setup."""

    exit_code = 1
    http_status = 400
    type = "invalid_request_error"


class ConfigError(LlmkitError):
    """A recipe or config is invalid. Carries every problem found, not just the first."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        head = f"{where}{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(head + "\n" + "\n".join(f"  - {p}" for p in problems))


class ModelNotFound(LlmkitError):
    http_status = 404
    type = "not_found_error"


class UnsupportedModel(LlmkitError):
    """The model exists but is of an architecture or format this path cannot handle."""


class MissingExtra(LlmkitError):
    """An optional dependency is absent. The message says which `pip install` fixes it."""

    exit_code = 2
    http_status = 503
    type = "server_error"


class StageNotAvailable(LlmkitError):
    """A recipe asks for a stage that this version of llmkit does not implement yet."""


class ArtifactError(LlmkitError):
    """An artifact folder is missing, incomplete or was produced by something else."""


class DiskFull(ArtifactError):
    """A write failed for lack of space (ENOSPC, EDQUOT). Names the path; what was written before is intact."""

    exit_code = 1
    http_status = 507
    type = "server_error"


class DataError(LlmkitError):
    """Bad input data. The message names the file and line (where there is one) and what was expected."""


class GateFailed(LlmkitError):
    """Eval gates failed: the model missed a threshold. Carries every failing gate, not just the first."""

    def __init__(self, failures: list[str], where: str | None = None):
        self.failures = failures
        head = f"{len(failures)} eval gate{'s' if len(failures) != 1 else ''} failed{f' ({where})' if where else ''}"
        super().__init__(head + "\n" + "\n".join(f"  - {f}" for f in failures))
