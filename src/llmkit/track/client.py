"""One place that decides where MLflow lives and opens a client to it, quietly.

The tracking URI, first match wins: the recipe's `track.mlflow_uri`, `$MLFLOW_TRACKING_URI`, then the embedded
default `sqlite:///$LLMKIT_HOME/mlflow.db` with run artifacts in `$LLMKIT_HOME/mlflow-artifacts` (no server).
MLflow is imported only here and only when tracking is used: `import mlflow` costs ~1.2 s, and creating a new
sqlite database (alembic's migrations) ~1.5 s more, once.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from llmkit.errors import MissingExtra
from llmkit.models import home

INSTALL = "pip install 'llmkit[track]'"


def default_uri() -> str:
    return f"sqlite:///{home() / 'mlflow.db'}"


def tracking_uri(configured: str | None = None) -> str:
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or default_uri()


def local_db(uri: str) -> Path | None:
    """The database file of a sqlite URI (None for servers and other stores)."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


# Database servers MLflow writes to directly through SQLAlchemy (`postgresql://user@host:port/db`, drivers too:
# `postgresql+psycopg2://`); unlike an `mlflow server`, they hold no files, so the client names where files go.
DATABASES = ("postgresql", "mysql", "mssql")


def artifact_root(uri: str) -> str | None:
    """Where new experiments keep their files: beside a sqlite database; for a database server,
    `$LLMKIT_MLFLOW_ARTIFACTS` (a folder or a URI such as s3://bucket/path) else $LLMKIT_HOME/mlflow-artifacts;
    an `mlflow server` decides for itself (its --artifacts-destination).

    Without this MLflow would put them in `./mlruns` below whatever folder the command ran in."""
    db = local_db(uri)
    if db is not None:
        return (db.parent / "mlflow-artifacts").resolve().as_uri()
    if uri.split(":", 1)[0].split("+", 1)[0] in DATABASES:
        root = os.environ.get("LLMKIT_MLFLOW_ARTIFACTS") or str(home() / "mlflow-artifacts")
        return root if "://" in root else Path(root).expanduser().resolve().as_uri()
    return None


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("mlflow") is not None


def _quiet() -> None:
    """Telemetry off and MLflow's chatter down before it is imported: a normal run prints only llmkit's lines.

    Each is a default only; a user who sets the variable keeps their value."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # MLflow 3 sends usage telemetry unless told not to
    if "MLFLOW_LOGGING_LEVEL" not in os.environ:  # "Creating initial MLflow database tables..." and the like
        os.environ["MLFLOW_LOGGING_LEVEL"] = "WARNING"
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # in case mlflow was imported before us
    # A tracking server that does not answer must not hold a stage for minutes: MLflow's default is 7 retries
    # with a backoff factor of 2 (~4 minutes) and a 120 s timeout per request.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # one INFO line per migration on a new database


def client(uri: str) -> Any:
    """An `mlflow.MlflowClient` for `uri` (tracking and registry alike)."""
    if not available():
        raise MissingExtra(f"tracking and the model registry need MLflow: {INSTALL}")
    _quiet()
    import warnings

    with warnings.catch_warnings():
        # mlflow 3.17 imports pydantic v1-style validators and pkg_resources-era modules on first use
        warnings.simplefilter("ignore")
        from mlflow import MlflowClient

        db = local_db(uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(c: Any, name: str, uri: str) -> str:
    """The id of experiment `name`, created (with its artifacts beside a sqlite database) when new."""
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return c.create_experiment(name, artifact_location=artifact_root(uri))
