"""track: MLflow mirroring of artifact manifests (mirror.py) and the model registry with aliases (registry.py).

Tracking is on by default wherever MLflow is installed (`pip install 'llmkit[track]'`): `llmkit run` mirrors
each finished stage into `sqlite:///$LLMKIT_HOME/mlflow.db` (or `track.mlflow_uri`, or `$MLFLOW_TRACKING_URI`),
from a child process while the next stage runs (background.py, worker.py).
Off with `track: {enabled: false}` or `LLMKIT_TRACK=0`. Without MLflow and without a `track:` section it stays off
quietly; a recipe that asks for tracking without MLflow installed is refused up front (MissingExtra).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from llmkit.config import Recipe
from llmkit.errors import MissingExtra
from llmkit.track.client import INSTALL, available, default_uri, tracking_uri
from llmkit.track.mirror import Echo, Tracker, stage_folders, sync

if TYPE_CHECKING:
    from llmkit.track.background import BackgroundTracker

__all__ = ["Tracker", "default_uri", "for_recipe", "off_by_env", "recipe_uri", "stage_folders", "sync", "tracking_uri"]


def off_by_env() -> bool:
    return os.environ.get("LLMKIT_TRACK", "").strip().lower() in ("0", "off", "false", "no")


def recipe_uri(recipe: Recipe) -> str:
    """The recipe's tracking URI; a relative sqlite path is relative to the recipe file, as its other paths are."""
    uri = recipe.track.mlflow_uri if recipe.track else None
    if uri and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{recipe.path(uri.removeprefix('sqlite:///')).resolve()}"
    return tracking_uri(uri)


def for_recipe(recipe: Recipe, echo: Echo = print) -> BackgroundTracker | None:
    """The tracker of one `llmkit run` of `recipe` (mirroring in a child process), or None when tracking is off."""
    cfg = recipe.track
    if off_by_env() or (cfg is not None and not cfg.enabled):
        return None
    if not available():
        if cfg is not None:
            raise MissingExtra(f"{recipe.source or 'the recipe'}: track: mirrors runs into MLflow, which is not "
                               f"installed: {INSTALL} (or track: {{enabled: false}})")
        return None
    from llmkit.track.background import BackgroundTracker

    return BackgroundTracker(recipe.name, recipe_uri(recipe), recipe.run_dir, echo, source=recipe.source)
