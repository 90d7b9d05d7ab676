"""Must-show of issue 19: MLflow tracking on PostgreSQL. scripts/postgres.sh starts a throwaway cluster of
Debian's `postgresql` on 127.0.0.1 (installing the package when it is missing and we are root); a tiny recipe
whose `track.mlflow_uri` is `postgresql://llmkit@127.0.0.1:PORT/mlflow` (the password from $PGPASSWORD, never in
the recipe) runs, and its runs are read back through MlflowClient and, to be sure they live in PostgreSQL, with
plain SQL; then the tracking server on that PostgreSQL with its own artifact root (scripts/mlflow_server.sh) takes
a recipe that names only its URL. Skipped only when PostgreSQL is absent and cannot be installed. ~80 s."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("mlflow")
# SQLAlchemy 2.1 opens `postgresql://` with psycopg 3 (`postgresql+psycopg2://` would need psycopg2)
psycopg = pytest.importorskip("psycopg", reason="PostgreSQL tracking needs psycopg: pip install 'llmkit[track]'")

from llmkit.artifacts import read_manifest  # noqa: E402
from llmkit.config import load_recipe  # noqa: E402
from llmkit.pipeline import run_recipe  # noqa: E402

SCRIPT = Path(__file__).parents[2] / "scripts" / "postgres.sh"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """(uri without password, password) of a fresh cluster, stopped and deleted afterwards."""
    inst = subprocess.run([str(SCRIPT), "install"], capture_output=True, text=True, timeout=600)
    if inst.returncode != 0:
        pytest.skip(f"PostgreSQL is not installed and could not be installed: {inst.stderr.strip()}")
    # as root the cluster runs as the `postgres` user, which must reach the folder: not below pytest's 700 tmp
    d = Path(tempfile.mkdtemp(prefix="llmkit-pg-"))
    d.chmod(0o711)
    try:
        up = subprocess.run([str(SCRIPT), "start", str(d), str(_free_port())], capture_output=True, text=True,
                            timeout=120)
        assert up.returncode == 0, up.stderr
        uri = subprocess.run([str(SCRIPT), "uri", str(d)], capture_output=True, text=True, check=True).stdout.strip()
        yield uri, (d / "password").read_text().strip()
    finally:
        subprocess.run([str(SCRIPT), "stop", str(d)], capture_output=True, timeout=120)
        shutil.rmtree(d, ignore_errors=True)


def test_a_recipe_tracked_in_postgresql(postgres, tiny_gguf, tmp_path, monkeypatch, llmkit_home):
    uri, password = postgres
    assert password not in uri
    monkeypatch.setenv("LLMKIT_TRACK", "1")
    monkeypatch.setenv("PGPASSWORD", password)
    monkeypatch.chdir(tmp_path)  # MLflow's fallback would be ./mlruns here: it must stay unused
    rows = [{"prompt": f"question {i} about thing {i * 5}", "completion": f"answer {i}"} for i in range(30)]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "pg.yaml").write_text(
        f"name: pg\nmodel: {tiny_gguf}\ndata: {{train: t.jsonl, val_fraction: 0.2}}\n"
        "train: {epochs: 1, batch_size: 8, max_length: 64, eval_every: 1, save_every: 100, precision: fp32}\n"
        f"track: {{mlflow_uri: '{uri}'}}\n")
    recipe = load_recipe(tmp_path / "pg.yaml")
    lines: list[str] = []
    run_recipe(recipe, echo=lines.append)
    assert not [x for x in lines if x.startswith("warning")], lines

    from mlflow import MlflowClient

    c = MlflowClient(uri, registry_uri=uri)
    exp = c.get_experiment_by_name("pg")
    runs = {r.info.run_name: r for r in c.search_runs([exp.experiment_id])}
    assert set(runs) == {"pg pipeline", "model", "data", "train"}
    train = runs["train"]
    assert train.data.tags["mlflow.parentRunId"] == runs["pg pipeline"].info.run_id
    assert train.data.params["train.max_length"] == "64"
    losses = read_manifest(recipe.run_dir / "train")["metrics"]["losses"]
    hist = c.get_metric_history(train.info.run_id, "train_loss")
    assert [(h.step, round(h.value, 6)) for h in hist] == [(s, round(v, 6)) for s, v in losses] and len(hist) >= 2
    # the files: under $LLMKIT_HOME/mlflow-artifacts, not ./mlruns of wherever the command ran
    assert exp.artifact_location == (llmkit_home / "mlflow-artifacts").resolve().as_uri()
    assert {a.path for a in c.list_artifacts(train.info.run_id)} >= {"loss.png", "manifest.json"}
    assert not (tmp_path / "mlruns").exists()

    # and they are rows of PostgreSQL's tables, as any other client sees them
    host, port = uri.split("@", 1)[1].split("/", 1)[0].split(":")
    with psycopg.connect(host=host, port=int(port), user="llmkit", password=password, dbname="mlflow") as db:
        cur = db.cursor()
        cur.execute("SELECT name, status FROM runs WHERE experiment_id = %s ORDER BY name", (int(exp.experiment_id),))
        assert cur.fetchall() == sorted((n, "FINISHED") for n in runs)
        cur.execute("SELECT count(*) FROM metrics WHERE run_uuid = %s AND key = 'train_loss'", (train.info.run_id,))
        assert cur.fetchone()[0] == len(losses)
    assert os.environ["PGPASSWORD"] == password  # the password came from the environment only


def test_the_tracking_server_on_postgresql_with_an_artifact_root(postgres, tiny_gguf, tmp_path, monkeypatch):
    """`mlflow server` (scripts/mlflow_server.sh, BACKEND_STORE_URI) on the same PostgreSQL: the recipe names only
    the server's URL; runs land in PostgreSQL and files in the server's artifact root (~40 s to start)."""
    pytest.importorskip("flask")
    uri, password = postgres
    srv = tmp_path / "server"
    port = _free_port()
    script = SCRIPT.parent / "mlflow_server.sh"
    env = {**os.environ, "PGPASSWORD": password, "BACKEND_STORE_URI": uri, "PYTHON": sys.executable}
    up = subprocess.run([str(script), "start", str(srv), str(port)], capture_output=True, text=True, timeout=300,
                        env=env)
    try:
        assert up.returncode == 0, up.stderr + (srv / "server.log").read_text()[-3000:]
        monkeypatch.setenv("LLMKIT_TRACK", "1")
        monkeypatch.delenv("PGPASSWORD", raising=False)  # the client needs no database access at all
        rows = [{"prompt": f"question {i}", "completion": f"answer {i}"} for i in range(20)]
        (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (tmp_path / "srv.yaml").write_text(f"name: pgsrv\nmodel: {tiny_gguf}\ndata: {{train: t.jsonl}}\n"
                                           f"track: {{mlflow_uri: 'http://127.0.0.1:{port}'}}\n")
        recipe = load_recipe(tmp_path / "srv.yaml")
        lines: list[str] = []
        run_recipe(recipe, echo=lines.append)
        assert not [x for x in lines if x.startswith("warning")], lines

        from mlflow import MlflowClient

        c = MlflowClient(f"http://127.0.0.1:{port}")
        exp = c.get_experiment_by_name("pgsrv")
        runs = {r.info.run_name: r for r in c.search_runs([exp.experiment_id])}
        assert set(runs) == {"pgsrv pipeline", "model", "data"}
        assert {a.path for a in c.list_artifacts(runs["data"].info.run_id)} >= {"data_card.md"}
        # files in the server's artifact root, rows in PostgreSQL
        assert list(srv.glob(f"artifacts/{exp.experiment_id}/*/artifacts/data_card.md"))
        host, port_ = uri.split("@", 1)[1].split("/", 1)[0].split(":")
        with psycopg.connect(host=host, port=int(port_), user="llmkit", password=password, dbname="mlflow") as db:
            names = {r[0] for r in db.execute("SELECT name FROM runs WHERE experiment_id = %s",
                                              (int(exp.experiment_id),)).fetchall()}
        assert names == set(runs)
    finally:
        subprocess.run([str(script), "stop", str(srv)], capture_output=True, timeout=120)
